"""Property: whatever jobs are submitted, suspended, resumed and removed, and however nodes
re-register with devices coming and going, no exclusive device of a node is ever held by two
plugins of the goals that node holds, and every plugin's claims got distinct devices that
serve them."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.devices import app_claims, by_name_or_type, job_claims
from hivebus.handlers.ecr import EcrHandler
from hivebus.handlers.health import HealthHandler
from hivebus.handlers.ses import SesHandler
from hivebus.handlers.testing import Log, app_spec, job_spec, manifest
from hivebus.schemas.ecr import BundleApproved
from hivebus.schemas.envelope import Event
from hivebus.schemas.ses import JobRemoved, JobResumed, JobSuspended

APPS = {
    "lab/any-camera:1.0.0": [{"type": "RGB_image_producer"}],
    "lab/top-camera:1.0.0": [{"type": "RGB_image_producer", "view": "top"}],
    "lab/two-cameras:1.0.0": [{"type": "RGB_image_producer"}, {"type": "RGB_image_producer"}],
    "lab/audio:1.0.0": [{"type": "microphone"}],
    "lab/plain:1.0.0": [],
}
DEVICES = {
    "top": {"name": "top", "type": "RGB_image_producer", "view": "top"},
    "bottom": {"name": "bottom", "type": "RGB_image_producer", "view": "bottom"},
    "mic": {"name": "mic", "type": "microphone", "exclusive": False},
    "serial": {"name": "serial", "type": "serial"},
}
NODES = ["N1", "N2"]
job_ids = st.sampled_from(["j1", "j2", "j3", "j4", "j5"])
submits = st.tuples(
    st.just("submit"),
    job_ids,
    st.lists(st.sampled_from(sorted(APPS)), min_size=1, max_size=3, unique=True),
    st.one_of(st.lists(st.sampled_from(NODES), min_size=1, max_size=2, unique=True), st.just([])),
    st.sampled_from([{}, {"device.serial": "1"}, {"device.top": "1"}, {"device.microphone": "1"}]),
)
ops = st.one_of(
    submits,
    submits,
    st.tuples(st.sampled_from(["suspend", "resume", "remove"]), job_ids),
    st.tuples(
        st.just("node"),
        st.sampled_from(NODES),
        st.lists(st.sampled_from(sorted(DEVICES)), max_size=4, unique=True),
    ),
)


def apply(log: Log, op: tuple[Any, ...]) -> list[Event]:
    kind = op[0]
    if kind == "submit":
        _, job_id, bundles, targets, resource = op
        plugins = [(f"p{i}", b) for i, b in enumerate(bundles)]
        spec = job_spec(plugins, nodes=targets, tags=[] if targets else ["t"], resource=resource)
        return log.submit(spec, job_id=job_id)
    if kind == "node":
        _, node, names = op
        return log.register_node(manifest(node, tags=["t"], devices=[DEVICES[n] for n in names]))
    payload = {"suspend": JobSuspended, "resume": JobResumed, "remove": JobRemoved}[kind]
    return log.by("alice", payload(job_id=op[1], by="alice"), op[1])


def world() -> Log:
    config = HandlerConfig()
    log = Log([EcrHandler(config), SesHandler(config), HealthHandler(config)])
    for bundle, resource_list in APPS.items():
        log.push(app_spec(bundle, resource_list=resource_list), "alice")
        log.by("admin", BundleApproved(bundle_id=bundle, by="admin"), bundle)
    for node in NODES:
        log.register_node(manifest(node, tags=["t"], devices=list(DEVICES.values())))
        log.heartbeat(node)
    return log


def check(log: Log, caused: list[Event]) -> None:
    state = log.state("ses")
    for node_id in NODES:
        listed = state.nodes[node_id].manifest.devices
        exclusive = {d.name for d in listed if d.exclusive}
        holders = Counter(
            device.name
            for job in state.jobs.values()
            if (goal := job.goals.get(node_id)) is not None
            for plugin in goal.plugins
            for device in plugin.devices or []
            if device.name in exclusive
        )
        assert all(n == 1 for n in holders.values()), (node_id, holders)
    for event in caused:
        if event.type != "ses.goal.assigned":
            continue
        job = state.jobs[event.data.job_id]
        for plugin in event.data.plugins:
            spec = next(p.plugin_spec for p in job.spec.plugins if p.name == plugin.name)
            claims = app_claims(APPS[plugin.bundle_id])[0] + job_claims(spec.resource)[0]
            on_node = by_name_or_type(claims, state.nodes[event.data.node].manifest.devices)
            names = [d.name for d in plugin.devices or []]
            assert len(names) == len(on_node) >= len(claims) - len(job_claims(spec.resource)[0])
            assert len(set(names)) == len(names), plugin


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, min_size=1, max_size=40))
def test_an_exclusive_device_is_never_held_twice_on_a_node(sequence: list[tuple[Any, ...]]) -> None:
    log = world()
    for op in sequence:
        check(log, apply(log, op))


def test_the_generator_reaches_placements_and_refusals_over_devices() -> None:
    """Guard against a property that passes because nothing is ever placed or refused."""
    log = world()
    first = apply(log, ("submit", "j1", ["lab/top-camera:1.0.0"], ["N1"], {}))
    check(log, first)
    assert [e.type for e in first] == ["ses.job.scheduled", "ses.goal.assigned"]
    second = apply(log, ("submit", "j2", ["lab/top-camera:1.0.0"], ["N1"], {}))
    assert [e.type for e in second] == ["ses.command.rejected"]
    assert "claimed by job j1's plugin p0" in second[0].data.reasons[0]
