"""Property: whatever ECR and SES events happen, in whatever order, the scheduler never places a
bundle for a user who cannot READ it, nor puts a node over its resources."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.ecr import EcrHandler
from hivebus.handlers.fit import demand
from hivebus.handlers.health import HealthHandler
from hivebus.handlers.nodes import Usage
from hivebus.handlers.ses import SesHandler, committed
from hivebus.handlers.testing import GiB, Log, app_spec, job_spec, manifest, resources
from hivebus.schemas.ecr import (
    BundleApproved,
    BundleDeleted,
    HardwareProfile,
    PermissionGranted,
    PermissionRevoked,
    ProfileRecorded,
)
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import NodeConfigUpdated
from hivebus.schemas.ses import JobRemoved, JobResumed, JobSuspended

USERS = ["alice", "bob", "carol", "admin"]
BUNDLES = ["lab/temp:1.0.0", "lab/rain:1.0.0", "geo/cam:2.0.0"]
NODES = ["N1", "N2", "N3"]
VERBS = ["READ", "WRITE", "WRITE_ACP", "FULL_CONTROL"]

users = st.sampled_from(USERS)
bundles = st.sampled_from(BUNDLES)
nodes = st.sampled_from(NODES)
job_ids = st.sampled_from(["j1", "j2", "j3", "j4", "j5", "j6"])

submits = st.tuples(
    st.just("submit"),
    st.sampled_from(["alice", "alice", "bob", "carol", "admin"]),
    job_ids,
    st.lists(bundles, min_size=1, max_size=2, unique=True),
    st.one_of(st.lists(nodes, min_size=1, max_size=3, unique=True), st.just([])),
    st.sampled_from([None, 1, 2]),
    st.sampled_from(["fit", "score", "roundrobin"]),
    st.sampled_from([{}, {"request.cpu": "1"}, {"request.memory": "2Gi"}]),
)

ops = st.one_of(
    st.tuples(st.just("push"), users, bundles, st.sampled_from([None, 0.5, 2.0]), st.booleans()),
    st.tuples(
        st.just("grant"),
        users,
        st.sampled_from(["lab", "geo", *BUNDLES]),
        st.sampled_from([*USERS, "AllUsers"]),
        st.sampled_from(VERBS),
    ),
    st.tuples(
        st.just("revoke"),
        users,
        st.sampled_from(["lab", "geo", *BUNDLES]),
        users,
        st.sampled_from(VERBS),
    ),
    st.tuples(st.just("approve"), users, bundles),
    st.tuples(st.just("delete"), users, bundles),
    st.tuples(st.just("node"), nodes, st.integers(1, 4), st.sampled_from([1, 2, 4]), st.booleans()),
    st.tuples(st.just("beat"), nodes, st.integers(1, 4), st.sampled_from([1, 2, 4])),
    st.tuples(st.just("allow"), nodes, st.sampled_from(["", "alice", "bob,carol"])),
    st.tuples(
        st.just("profile"), bundles, st.floats(0.1, 3.0), st.sampled_from([2**20, GiB, 3 * GiB])
    ),
    submits,
    submits,
    submits,
    st.tuples(st.just("suspend"), users, job_ids),
    st.tuples(st.just("resume"), users, job_ids),
    st.tuples(st.just("remove"), users, job_ids),
)


def apply(log: Log, op: tuple[Any, ...]) -> list[Event]:
    kind = op[0]
    if kind == "push":
        _, user, bundle, cpu, frozen = op
        return log.push(app_spec(bundle, cpu=cpu, frozen=frozen), user)
    if kind in ("grant", "revoke"):
        _, by, resource, grantee, verb = op
        cls = PermissionGranted if kind == "grant" else PermissionRevoked
        group = grantee == "AllUsers"
        return log.by(
            by,
            cls(
                resource=resource,
                grantee_type="group" if group else "user",
                grantee=grantee,
                permission=verb,
                by=by,
            ),
            resource,
        )
    if kind == "approve":
        return log.by(op[1], BundleApproved(bundle_id=op[2], by=op[1]), op[2])
    if kind == "delete":
        return log.by(op[1], BundleDeleted(bundle_id=op[2], by=op[1]), op[2])
    if kind == "node":
        _, node, cpus, mem, virtual = op
        out = log.register_node(
            manifest(node, tags=["t", "virtual"] if virtual else ["t"], cpus=cpus, memory=mem * GiB)
        )
        return out + log.heartbeat(node, resources(cpus=cpus, memory=mem * GiB))
    if kind == "beat":
        return log.heartbeat(op[1], resources(cpus=op[2], memory=op[3] * GiB))
    if kind == "allow":
        return log.by(
            "operator", NodeConfigUpdated(node=op[1], settings={"allow_users": op[2]}), op[1]
        )
    if kind == "profile":
        _, bundle, cores, rss = op
        return log.by(
            "handler/ecr",
            ProfileRecorded(
                bundle_id=bundle,
                hardware=HardwareProfile(arch="linux/arm64"),
                node="N1",
                run_id="r",
                exit_state="completed",
                cpu_seconds=cores * 10,
                max_rss_bytes=rss,
                wall_seconds=10.0,
            ),
            bundle,
        )
    if kind == "submit":
        _, user, job_id, plugin_bundles, targets, max_nodes, policy, resource = op
        plugins = [(f"p{i}", b) for i, b in enumerate(plugin_bundles)]
        spec = job_spec(plugins, nodes=targets, tags=[] if targets else ["t"], resource=resource)
        return log.submit(spec, job_id=job_id, user=user, max_nodes=max_nodes, policy=policy)
    payload = {"suspend": JobSuspended, "resume": JobResumed, "remove": JobRemoved}[kind]
    return log.by(op[1], payload(job_id=op[2], by=op[1]), op[2])


PRELUDE: list[tuple[Any, ...]] = [
    ("push", "alice", "lab/temp:1.0.0", 0.5, False),
    ("push", "alice", "lab/rain:1.0.0", None, False),
    ("push", "carol", "geo/cam:2.0.0", 2.0, False),
    ("approve", "admin", "lab/temp:1.0.0"),
    ("approve", "admin", "geo/cam:2.0.0"),
    ("node", "N1", 2, 2, False),
    ("node", "N2", 4, 4, False),
    ("node", "N3", 1, 1, True),
]
"""A world where placements happen: random sequences alone almost never reach one."""


def world() -> Log:
    config = HandlerConfig(reviewers=frozenset({"admin"}))
    log = Log([EcrHandler(config), SesHandler(config), HealthHandler(config)])
    for op in PRELUDE:
        apply(log, op)
    return log


def check(log: Log, caused: list[Event]) -> None:
    state = log.state("ses")
    catalog = state.catalog
    for event in caused:
        if event.type == "ses.job.scheduled":
            user = state.jobs[event.data.job_id].user
            for placement in event.data.placements:
                assert catalog.can(user, "READ", placement.bundle_id), (user, placement)
                node = state.nodes[placement.node]
                assert catalog.bundles[placement.bundle_id].approved or node.virtual
        if event.type == "ses.goal.assigned":
            job = state.jobs[event.data.job_id]
            for plugin in event.data.plugins:
                assert catalog.can(job.user, "READ", plugin.bundle_id), (job.user, plugin.bundle_id)
            node = state.nodes[event.data.node]
            load, capacity = held(state, node), node.capacity
            index = committed(state, node)  # the scheduler's own index must agree
            assert abs(index.cpu - load.cpu) < 1e-9 and index.memory == load.memory
            assert _within(load, capacity), (node.id, load, capacity)


def held(state: Any, node: Any) -> Usage:
    """What the goals on ``node`` need, summed from the jobs (not from the scheduler's index)."""
    total = Usage()
    for job in state.jobs.values():
        goal = job.goals.get(node.id)
        for plugin in goal.plugins if goal else []:
            total = total + demand(state.catalog, plugin.bundle_id, plugin.resources, node).usage
    return total


def _within(load: Usage, capacity: Usage) -> bool:
    return (
        load.cpu <= capacity.cpu + 1e-9
        and load.memory <= capacity.memory
        and load.gpu <= capacity.gpu + 1e-9
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(ops, min_size=1, max_size=60))
def test_no_placement_without_read_and_no_node_over_its_resources(
    sequence: list[tuple[Any, ...]],
) -> None:
    log = world()
    for op in sequence:
        check(log, apply(log, op))


def test_the_generator_reaches_placements() -> None:
    """Guard against a property that passes because nothing is ever scheduled."""
    config = HandlerConfig()
    log = Log([EcrHandler(config), SesHandler(config), HealthHandler(config)])
    for op in [
        ("push", "alice", "lab/temp:1.0.0", 0.5, False),
        ("approve", "admin", "lab/temp:1.0.0"),
        ("node", "N1", 2, 2, False),
        ("grant", "alice", "lab", "bob", "READ"),
        ("submit", "bob", "j1", ["lab/temp:1.0.0"], ["N1"], None, "fit", {}),
    ]:
        caused = apply(log, op)
        check(log, caused)
    assert [e.type for e in caused] == ["ses.job.scheduled", "ses.goal.assigned"]
