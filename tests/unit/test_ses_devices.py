"""Devices as resources through the scheduler's decider: a plugin goes only where each of its
claims gets its own device, never onto an exclusive device another goal holds, and the
refusal (and the dry run) names the device and its holder. Pure: a simulated log."""

from __future__ import annotations

from typing import Any

from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.ecr import EcrHandler
from hivebus.handlers.health import HealthHandler
from hivebus.handlers.ses import SesHandler, plan_job
from hivebus.handlers.testing import Log, app_spec, job_spec, manifest
from hivebus.schemas.ecr import BundleApproved
from hivebus.schemas.envelope import Event
from hivebus.schemas.ses import JobRemoved, JobResumed, JobSubmitted, JobSuspended

SAMPLER = "waggle/plugin-image-sampler:0.3.0"
COUNTER = "waggle/plugin-object-counter:0.5.1"
AUDIO = "waggle/plugin-audio-sampler:0.2.0"
BME = "waggle/plugin-bme680:0.2.1"
TOP_CAMERA = {"type": "RGB_image_producer", "view": "top", "min_resolution": "600x800"}
DEVICES = [
    {
        "name": "top_camera",
        "type": "RGB_image_producer",
        "view": "top",
        "resolution": "1920x1080",
        "path": "/dev/video0",
    },
    {
        "name": "bottom_camera",
        "type": "RGB_image_producer",
        "view": "bottom",
        "resolution": "640x480",
    },
    {"name": "mic", "type": "microphone", "exclusive": False, "path": "/dev/snd/pcmC0D0c"},
]
HELD = "W012's top_camera (RGB_image_producer) is claimed by job heat-1's plugin imagesampler"


def world(*nodes: tuple[str, list[dict[str, Any]], list[str]]) -> Log:
    cfg = HandlerConfig()
    log = Log([EcrHandler(cfg), SesHandler(cfg), HealthHandler(cfg)])
    apps = [
        app_spec(SAMPLER, resource_list=[TOP_CAMERA]),
        app_spec(COUNTER, resource_list=[TOP_CAMERA]),
        app_spec(AUDIO, resource_list=[{"type": "microphone"}]),
        app_spec(BME),
    ]
    for app in apps:
        log.push(app, "alice")
        log.by("admin", BundleApproved(bundle_id=app.bundle_id, by="admin"), app.bundle_id)
    for node, devices, tags in nodes or (("W012", DEVICES, []),):
        log.register_node(manifest(node, tags=tags, devices=devices))
        log.heartbeat(node)
    return log


def rejected(events: list[Event]) -> list[str]:
    assert [e.type for e in events] == ["ses.command.rejected"], [e.type for e in events]
    return list(events[0].data.reasons)


def has(reasons: list[str], *words: str) -> None:
    for word in words:
        assert any(word in r for r in reasons), (word, reasons)


def submit(log: Log, job_id: str, *plugins: tuple[str, str], **kw: Any) -> list[Event]:
    kw.setdefault("nodes", ["W012"])
    return log.submit(job_spec(list(plugins), **kw), job_id=job_id)


def test_the_goal_and_the_placement_carry_the_device_the_plugin_got() -> None:
    log = world()
    out = submit(log, "heat-1", ("imagesampler", SAMPLER))
    scheduled, goal = out
    assert scheduled.data.placements[0].devices == ["top_camera"]
    (plugin,) = goal.data.plugins
    assert [(d.name, d.type, d.path, d.exclusive) for d in plugin.devices or []] == [
        ("top_camera", "RGB_image_producer", "/dev/video0", True)
    ]
    # A plugin that claims nothing carries no devices (an older agent reads its goal as before).
    out = submit(log, "env", ("bme680", BME))
    assert out[1].data.plugins[0].devices is None


def test_a_second_job_on_the_held_exclusive_camera_is_refused_naming_the_holder() -> None:
    log = world()
    submit(log, "heat-1", ("imagesampler", SAMPLER))
    spec = job_spec([("counter", COUNTER)], nodes=["W012"])
    reasons = rejected(log.submit(spec, job_id="count-1"))
    has(reasons, "node W012: plugin counter: claim sage.yaml resources[0]", HELD)
    # The dry run says the same, on the same state.
    state = log.state("ses")
    plan = plan_job(state, JobSubmitted(job_id="count-2", user="alice", spec=spec))
    assert not plan.accepted
    has(plan.reasons, HELD)


def test_removing_the_holder_frees_the_device() -> None:
    log = world()
    submit(log, "heat-1", ("imagesampler", SAMPLER))
    rejected(submit(log, "count-1", ("counter", COUNTER)))
    log.by("alice", JobRemoved(job_id="heat-1", by="alice"), "heat-1")
    out = submit(log, "count-2", ("counter", COUNTER))
    assert out[0].type == "ses.job.scheduled"
    assert out[0].data.placements[0].devices == ["top_camera"]


def test_a_shared_device_serves_plugins_of_several_jobs() -> None:
    log = world()
    for job in ("audio-1", "audio-2"):
        out = submit(log, job, ("audio", AUDIO))
        assert out[0].type == "ses.job.scheduled" and out[0].data.placements[0].devices == ["mic"]


def test_two_plugins_of_one_job_cannot_share_one_exclusive_camera() -> None:
    log = world()
    reasons = rejected(submit(log, "both", ("imagesampler", SAMPLER), ("counter", COUNTER)))
    has(
        reasons,
        "node W012: plugin counter: claim sage.yaml resources[0]",
        "W012's top_camera (RGB_image_producer) is claimed by job both's plugin imagesampler",
    )


def test_tagged_nodes_the_camera_is_free_on_take_the_job_the_others_are_noted() -> None:
    log = world(("W012", DEVICES, ["cam"]), ("W013", DEVICES, ["cam"]), ("W014", [], ["cam"]))
    submit(log, "heat-1", ("imagesampler", SAMPLER))  # W012's top camera is now held
    spec = job_spec([("counter", COUNTER)], tags=["cam"])
    plan = plan_job(log.state("ses"), JobSubmitted(job_id="count-1", user="alice", spec=spec))
    assert plan.accepted
    has(plan.notes, HELD, "W014 lists no devices")
    scheduled = log.submit(spec, job_id="count-1")[0]
    assert scheduled.type == "ses.job.scheduled"
    assert [(p.node, p.devices) for p in scheduled.data.placements] == [("W013", ["top_camera"])]
    # Now no camera with a top view is free anywhere: the refusal gives each node's reason.
    reasons = rejected(log.submit(spec, job_id="count-2"))
    has(reasons, HELD, "W013's top_camera (RGB_image_producer) is claimed by job count-1's")


def test_a_job_claims_a_device_by_name_in_plugin_spec_resource() -> None:
    log = world()
    out = submit(log, "env", ("bme680", BME), resource={"device.bottom_camera": "1"})
    assert out[0].data.placements[0].devices == ["bottom_camera"]
    reasons = rejected(
        submit(log, "env-2", ("bme680", BME), resource={"device.bottom_camera": "1"})
    )
    has(
        reasons,
        "pluginSpec.resource device.bottom_camera (name bottom_camera): W012's bottom_camera "
        "(RGB_image_producer) is claimed by job env's plugin bme680",
    )
    has(
        rejected(submit(log, "env-3", ("bme680", BME), resource={"device.top_camera": "many"})),
        "plugin bme680: resource device.top_camera: 'many' is not a count of devices",
    )


def test_resume_is_refused_while_another_job_holds_the_device() -> None:
    log = world()
    submit(log, "heat-1", ("imagesampler", SAMPLER))
    log.by("alice", JobSuspended(job_id="heat-1", by="alice"), "heat-1")
    assert submit(log, "count-1", ("counter", COUNTER))[0].type == "ses.job.scheduled"
    reasons = rejected(log.by("alice", JobResumed(job_id="heat-1", by="alice"), "heat-1"))
    has(
        reasons,
        "cannot resume job heat-1: node W012: plugin imagesampler: W012's top_camera "
        "(RGB_image_producer) is claimed by job count-1's plugin counter",
    )
    log.by("alice", JobRemoved(job_id="count-1", by="alice"), "count-1")
    out = log.by("alice", JobResumed(job_id="heat-1", by="alice"), "heat-1")
    assert [e.type for e in out] == ["ses.goal.assigned", "ses.job.resumed"]


def test_a_node_that_drops_the_device_frees_nothing_and_refuses_a_resume() -> None:
    log = world()
    submit(log, "heat-1", ("imagesampler", SAMPLER))
    log.by("alice", JobSuspended(job_id="heat-1", by="alice"), "heat-1")
    log.register_node(manifest("W012", devices=DEVICES[1:]))
    has(
        rejected(log.by("alice", JobResumed(job_id="heat-1", by="alice"), "heat-1")),
        "plugin imagesampler: device top_camera is no longer listed by W012",
    )


def test_a_resource_selector_filters_on_a_device_name_or_type_without_claiming_it() -> None:
    log = world(("W012", DEVICES, ["cam"]), ("W013", [], ["cam"]))
    spec = job_spec([("bme680", BME)], tags=["cam"], selector={"resource.top_camera": "true"})
    out = log.submit(spec, job_id="env")
    assert [(p.node, p.devices) for p in out[0].data.placements] == [("W012", [])]
    spec = job_spec([("bme680", BME)], tags=["cam"], selector={"resource.microphone": "false"})
    out = log.submit(spec, job_id="env-2")
    assert [p.node for p in out[0].data.placements] == ["W013"]


def test_an_app_resources_item_that_is_no_claim_refuses_the_job_with_the_reason() -> None:
    log = world()
    broken = "waggle/plugin-broken:1.0.0"
    log.push(app_spec(broken, resource_list=[{"view": "top"}]), "alice")
    log.by("admin", BundleApproved(bundle_id=broken, by="admin"), broken)
    has(
        rejected(submit(log, "b", ("broken", broken))),
        f"plugin broken: bundle {broken}'s sage.yaml resources[0]: needs a type",
    )
