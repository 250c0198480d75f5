"""The payload catalogue: every event round-trips, bad bytes fail only with DecodeError,
the reading rules hold (with the offending field named), upcasters lift old payloads."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample
from pydantic import ValidationError

import hivebus.schemas  # noqa: F401 - registers the catalogue
from hivebus.errors import DecodeError, SchemaError
from hivebus.schemas import codec
from hivebus.schemas.auth import (
    GroupMemberAdded,
    GroupMemberRemoved,
    RoleGranted,
    RoleRevoked,
    UserAdded,
    UserRevoked,
)
from hivebus.schemas.data import MIN_TIMESTAMP_NS, Reading
from hivebus.schemas.ecr import (
    AppInput,
    AppResources,
    AppSource,
    AppSpec,
    AppTesting,
    ArtifactRef,
    BundleApproved,
    BundleDeleted,
    BundleFrozen,
    BundlePushed,
    BundleRegistered,
    BundleRejected,
    EcrCommandRejected,
    HardwareProfile,
    PermissionGranted,
    PermissionRevoked,
    ProfileRecorded,
    Provenance,
    bundle_id,
    parse_bundle_id,
    version_problems,
)
from hivebus.schemas.envelope import Event, Payload
from hivebus.schemas.fields import ARCHITECTURES, STRICT, architecture_problem
from hivebus.schemas.node import (
    Hardware,
    HubRefusal,
    NodeConfigUpdated,
    NodeHeartbeat,
    NodeManifest,
    NodeOffline,
    NodeOnline,
    NodeRegistered,
    NodeResources,
    OutboxBacklog,
    Perf,
    PluginStatus,
    SensorLost,
    SensorRestored,
    SensorSpec,
    ToEdgeApplied,
    TriggerFired,
)
from hivebus.schemas.offload import OffloadDecided, OffloadRanLocally, OffloadRequested
from hivebus.schemas.registry import Registry, registry
from hivebus.schemas.ses import (
    GoalAssigned,
    GoalPlugin,
    GoalRemoved,
    JobCompleted,
    JobPlugin,
    JobRejected,
    JobRemoved,
    JobResumed,
    JobScheduled,
    JobSpec,
    JobSubmitted,
    JobSuspended,
    Placement,
    PluginSpec,
    PluginState,
    ResourceRequest,
    SesCommandRejected,
    bundle_from_image,
    image_for_bundle,
)
from hivebus.schemas.storage import (
    AclChanged,
    BucketCreated,
    BucketDeleted,
    Grant,
    ObjectDeleted,
    ObjectPut,
    StorageCommandRejected,
)

# --- building blocks ------------------------------------------------------------------------


def rx(pattern: str) -> st.SearchStrategy[str]:
    return st.from_regex(pattern, fullmatch=True)


text = st.text(max_size=20)
nonempty = st.text(min_size=1, max_size=20)
texts = st.lists(text, max_size=3)
str_maps = st.dictionaries(text, text, max_size=3)
node_ids = rx(r"[A-Za-z0-9][A-Za-z0-9_-]{0,11}")
keys = rx(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,15}")
users = keys.filter(lambda u: u != "AllUsers")
labels = rx(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,15}")
reading_names = rx(r"[a-z0-9_]{1,8}(\.[a-z0-9_]{1,8}){0,3}")
namespaces = rx(r"[a-z0-9]{1,6}([_-][a-z0-9]{1,4}){0,2}")
app_names = rx(r"[a-z0-9]{1,6}([._-][a-z0-9]{1,4}){0,2}")
versions = rx(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}")
bundle_ids = st.builds(bundle_id, namespaces, app_names, versions)
digests = rx(r"sha256:[0-9a-f]{64}")
finite = st.floats(allow_nan=False, allow_infinity=False)
nonneg = st.floats(min_value=0, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=0, exclude_min=True, allow_nan=False, allow_infinity=False)
percent = st.floats(min_value=0, max_value=100)
nonneg_ints = st.integers(0, 2**63 - 1)
archs = st.sampled_from(ARCHITECTURES)
offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
aware = st.datetimes(timezones=st.just(UTC) | offsets)
reading_values = st.integers() | finite | st.text()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
grantees = st.just(("group", "AllUsers")) | st.tuples(st.sampled_from(["user", "group"]), users)


def opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


# --- nested parts ---------------------------------------------------------------------------

_DEFAULTS: dict[str, st.SearchStrategy[Any]] = {
    "boolean": st.booleans(),
    "int": st.integers(),
    "long": st.integers(),
    "float": st.integers() | finite,
    "double": finite,
    "string": text,
    "File": text,
}
app_inputs = st.sampled_from(sorted(_DEFAULTS)).flatmap(
    lambda kind: st.builds(
        AppInput,
        id=rx(r"[A-Za-z_][A-Za-z0-9_-]{0,10}"),
        type=st.just(kind),
        description=text,
        default=opt(_DEFAULTS[kind]),
    )
)
app_sources = st.builds(
    lambda url, ref, commit, directory, dockerfile, platforms, build_args: AppSource(
        url=url,
        branch=ref[1] if ref[0] == "branch" else None,
        tag=ref[1] if ref[0] == "tag" else None,
        git_commit=commit,
        directory=directory,
        dockerfile=dockerfile,
        architectures=platforms,
        build_args=build_args,
    ),
    nonempty,
    st.tuples(st.sampled_from(["branch", "tag", "none"]), nonempty),
    opt(rx(r"[0-9a-f]{7,40}")),
    text,
    text,
    st.lists(archs, min_size=1, max_size=3, unique=True),
    str_maps,
)
comma_lists = st.lists(nonempty, max_size=3)
app_specs = st.builds(
    AppSpec,
    namespace=namespaces,
    name=app_names,
    version=versions,
    description=nonempty,
    keywords=comma_lists,
    authors=comma_lists,
    collaborators=comma_lists,
    funding=opt(text),
    license=opt(text),
    homepage=opt(text),
    source=app_sources,
    inputs=st.lists(app_inputs, max_size=3, unique_by=lambda i: i.id),
    resources=st.builds(
        AppResources, cpu=opt(nonneg), memory=opt(nonneg_ints), gpu=opt(st.integers(0, 8))
    ),
    metadata=st.dictionaries(text, json_values, max_size=3),
    frozen=st.booleans(),
    arguments=texts,
    resource_list=st.lists(st.dictionaries(text, json_values, max_size=2), max_size=2),
    testing=opt(
        st.builds(
            AppTesting,
            command=st.lists(rx(r"[a-zA-Z0-9_.-]{1,8}"), min_size=1, max_size=3),
            mask_entrypoint=st.booleans(),
        )
    ),
)
artifacts = st.builds(
    ArtifactRef,
    name=nonempty,
    kind=st.sampled_from(["code", "model", "config", "data", "other"]),
    digest=digests,
    size=nonneg_ints,
    url=opt(text),
)
provenances = st.builds(Provenance, training_data=texts, model=opt(text), notes=text)
hardware_profiles = st.builds(HardwareProfile, arch=archs, gpu=opt(text), node_class=opt(labels))
images = st.builds(
    lambda host, bundle, pin: f"{host}{bundle}{pin}",
    st.sampled_from(["", "registry.sagecontinuum.org/", "localhost:5000/"]),
    bundle_ids,
    st.just("") | digests.map(lambda d: "@" + d),
)
plugin_specs = st.builds(
    PluginSpec,
    image=images,
    args=texts,
    entrypoint=opt(text),
    env=str_maps,
    selector=str_maps,
    resource=str_maps,
    volume=str_maps,
    privileged=st.booleans(),
)
job_specs = st.builds(
    lambda name, user, plugins, targets, rules, criteria: JobSpec(
        name=name,
        user=user,
        plugins=plugins,
        nodes=targets[0],
        node_tags=targets[1],
        science_rules=rules,
        success_criteria=criteria,
    ),
    rx(r"[a-z][a-z0-9 ._-]{0,15}[a-z0-9]"),
    opt(users),
    st.lists(
        st.builds(JobPlugin, name=labels, plugin_spec=plugin_specs),
        min_size=1,
        max_size=3,
        unique_by=lambda p: p.name,
    ),
    st.tuples(st.lists(node_ids, max_size=3, unique=True), st.lists(labels, max_size=3)).filter(
        lambda t: t[0] or t[1]
    ),
    texts,
    texts,
)
resource_requests = st.builds(
    ResourceRequest, cpu=opt(nonneg), memory=opt(nonneg_ints), gpu=st.integers(0, 8)
)
goal_plugins = st.builds(
    GoalPlugin,
    name=labels,
    bundle_id=bundle_ids,
    image=images,
    args=texts,
    entrypoint=opt(text),
    env=str_maps,
    resources=resource_requests,
)
sensor_specs = st.builds(
    SensorSpec,
    name=labels,
    kind=labels,
    device=opt(text),
    expects=st.lists(reading_names, max_size=3),
    max_silence=positive,
)
manifests = st.builds(
    NodeManifest,
    node_id=node_ids,
    vsn=nonempty,
    tags=st.lists(labels, max_size=3),
    hardware=st.builds(
        Hardware,
        arch=archs,
        cpus=st.integers(1, 4096),
        memory=nonneg_ints,
        disk=nonneg_ints,
        gpu=opt(text),
    ),
    executors=st.lists(st.sampled_from(["process", "docker", "wasm"]), min_size=1, max_size=3),
    sensors=st.lists(sensor_specs, max_size=3),
    node_class=opt(labels),
)
grants = grantees.flatmap(
    lambda g: st.builds(
        Grant,
        grantee_type=st.just(g[0]),
        grantee=st.just(g[1]),
        permission=st.sampled_from(["FULL_CONTROL", "WRITE", "READ", "WRITE_ACP", "READ_ACP"]),
    )
)


def permission_change(model: type[PermissionGranted | PermissionRevoked]) -> st.SearchStrategy[Any]:
    return grantees.flatmap(
        lambda g: st.builds(
            model,
            resource=namespaces | bundle_ids,
            grantee_type=st.just(g[0]),
            grantee=st.just(g[1]),
            permission=st.sampled_from(["READ", "WRITE", "READ_ACP", "WRITE_ACP", "FULL_CONTROL"]),
            by=users,
        )
    )


# --- one strategy per registered event type -------------------------------------------------

STRATEGIES: dict[str, st.SearchStrategy[Payload]] = {
    "data.reading": st.builds(
        Reading,
        name=reading_names,
        value=reading_values,
        timestamp=st.integers(MIN_TIMESTAMP_NS, 2**63 - 1),
        meta=str_maps,
        scope=st.sampled_from(["node", "beehive", "all"]),
    )
    | st.builds(
        lambda name, raw, ts, meta: Reading.from_bytes(name, raw, timestamp=ts, meta=meta),
        reading_names,
        st.binary(max_size=32),
        st.integers(MIN_TIMESTAMP_NS, 2**63 - 1),
        str_maps,
    ),
    "ecr.bundle.pushed": st.builds(
        BundlePushed,
        app=app_specs,
        pusher=users,
        artifacts=st.lists(artifacts, max_size=3),
        provenance=opt(provenances),
    ),
    "ecr.bundle.registered": st.builds(BundleRegistered, bundle_id=bundle_ids, owner=users)
    | st.builds(
        BundleRegistered,
        bundle_id=bundle_ids,
        owner=users,
        pusher=users,
        app=app_specs,
        artifacts=st.lists(artifacts, max_size=2),
        provenance=opt(provenances),
    ),
    "ecr.command.rejected": st.builds(
        EcrCommandRejected,
        command=st.sampled_from(["ecr.push", "ecr.grant", "ecr.approve"]),
        by=users,
        target=bundle_ids,
        reasons=st.lists(nonempty, min_size=1, max_size=3),
        data=st.dictionaries(nonempty, st.integers() | nonempty, max_size=3),
    ),
    "ses.command.rejected": st.builds(
        SesCommandRejected,
        command=st.sampled_from(["ses.submit", "ses.suspend"]),
        by=users,
        job_id=keys,
        reasons=st.lists(nonempty, min_size=1, max_size=3),
        data=st.dictionaries(nonempty, st.integers() | nonempty, max_size=3),
    ),
    "ecr.bundle.rejected": st.builds(
        BundleRejected,
        bundle_id=bundle_ids,
        pusher=users,
        reasons=st.lists(nonempty, min_size=1, max_size=3),
    ),
    "ecr.bundle.approved": st.builds(BundleApproved, bundle_id=bundle_ids, by=users, comment=text),
    "ecr.bundle.frozen": st.builds(BundleFrozen, bundle_id=bundle_ids, by=users),
    "ecr.bundle.deleted": st.builds(BundleDeleted, bundle_id=bundle_ids, by=users, reason=text),
    "ecr.permission.granted": permission_change(PermissionGranted),
    "ecr.permission.revoked": permission_change(PermissionRevoked),
    "ecr.profile.recorded": st.builds(
        ProfileRecorded,
        bundle_id=bundle_ids,
        hardware=hardware_profiles,
        node=node_ids,
        run_id=keys,
        job_id=opt(keys),
        exit_state=st.sampled_from(["completed", "failed"]),
        exit_code=opt(st.integers(-255, 255)),
        cpu_seconds=nonneg,
        max_rss_bytes=nonneg_ints,
        gpu_percent=opt(percent),
        wall_seconds=nonneg,
    ),
    "ses.job.submitted": st.builds(
        JobSubmitted,
        job_id=keys,
        user=users,
        spec=job_specs,
        policy=opt(st.sampled_from(["fit", "score", "roundrobin"])),
        max_nodes=opt(st.integers(1, 1000)),
    ),
    "ses.job.scheduled": st.builds(
        JobScheduled,
        job_id=keys,
        placements=st.lists(
            st.builds(
                Placement, node=node_ids, plugin=labels, bundle_id=bundle_ids, score=opt(finite)
            ),
            min_size=1,
            max_size=3,
        ),
        policy=labels,
        user=opt(users),
        spec=opt(job_specs),
        max_nodes=opt(st.integers(1, 1000)),
    ),
    "ses.job.rejected": st.builds(
        JobRejected, job_id=keys, reasons=st.lists(nonempty, min_size=1, max_size=3)
    ),
    "ses.job.suspended": st.builds(JobSuspended, job_id=keys, by=users, reason=text),
    "ses.job.resumed": st.builds(JobResumed, job_id=keys, by=users),
    "ses.job.removed": st.builds(JobRemoved, job_id=keys, by=users, reason=text),
    "ses.job.completed": st.builds(JobCompleted, job_id=keys, criterion=text),
    "ses.goal.assigned": st.builds(
        GoalAssigned,
        node=node_ids,
        job_id=keys,
        plugins=st.lists(goal_plugins, min_size=1, max_size=3),
        science_rules=texts,
        success_criteria=texts,
    ),
    "ses.goal.removed": st.builds(GoalRemoved, node=node_ids, job_id=keys, reason=text),
    "ses.offload.requested": st.builds(
        OffloadRequested, node=node_ids, request_id=keys, bundle=bundle_ids, resources=str_maps,
        entrypoint=opt(nonempty), args=texts, env=str_maps,
    ),
    "ses.offload.decided": st.builds(
        OffloadDecided,
        node=node_ids,
        request_id=keys,
        bundle=bundle_ids,
        run_on=st.none() | node_ids,
        scores=st.dictionaries(node_ids, st.floats(min_value=0, max_value=100), max_size=3),
        reasons=st.lists(text, max_size=2),
    ),
    "ses.offload.ran_locally": st.builds(
        OffloadRanLocally, node=node_ids, request_id=keys, bundle=bundle_ids, reason=text
    ),
    "node.registered": st.builds(NodeRegistered, manifest=manifests, agent_version=opt(text)),
    "node.heartbeat": st.builds(
        NodeHeartbeat,
        node=node_ids,
        resources=st.builds(
            NodeResources,
            cpus=st.integers(1, 4096),
            mem_total=nonneg_ints,
            mem_avail=nonneg_ints,
            disk_total=nonneg_ints,
            disk_avail=nonneg_ints,
            load1=nonneg,
            gpu=st.booleans(),
        ),
        backlog=st.builds(
            OutboxBacklog, messages=nonneg_ints, bytes=nonneg_ints, oldest_age_seconds=opt(nonneg)
        ),
        dropped=st.dictionaries(text, nonneg_ints, max_size=3),
        uptime_seconds=nonneg,
        refusal=opt(
            st.builds(
                HubRefusal,
                kind=st.sampled_from(["credential", "events"]),
                reason=nonempty,
                since=aware,
                until=opt(aware),
            )
        ),
    ),
    "node.online": st.builds(NodeOnline, node=node_ids),
    "node.offline": st.builds(NodeOffline, node=node_ids, last_seen=opt(aware), reason=text),
    "node.sensor.lost": st.builds(SensorLost, node=node_ids, sensor=labels, reason=text),
    "node.sensor.restored": st.builds(SensorRestored, node=node_ids, sensor=labels, reason=text),
    "node.config.updated": st.builds(
        NodeConfigUpdated,
        node=node_ids,
        heartbeat_seconds=opt(positive),
        tags=opt(st.lists(labels, max_size=3)),
        sensors=opt(st.lists(sensor_specs, max_size=2)),
        settings=str_maps,
    ),
    "node.toedge.applied": st.builds(
        ToEdgeApplied,
        node=node_ids,
        applied_id=rx(r"[0-9A-Z]{26}"),
        applied_type=st.sampled_from(["ses.goal.assigned", "ses.goal.removed", "node.config.updated"]),
        job_id=opt(keys),
        outcome=st.sampled_from(["applied", "refused"]),
        reason=text,
        goals=st.lists(keys, max_size=3),
    ),
    "plugin.status": st.builds(
        PluginStatus,
        node=node_ids,
        job_id=keys,
        plugin=labels,
        bundle_id=bundle_ids,
        run_id=keys,
        state=st.sampled_from(list(PluginState)) | st.sampled_from([s.value for s in PluginState]),
        reason=text,
        exit_code=opt(st.integers(-255, 255)),
        log_tail=texts,
        perf=opt(
            st.builds(
                Perf,
                cpu_seconds=nonneg,
                max_rss_bytes=nonneg_ints,
                wall_seconds=nonneg,
                gpu_percent=opt(percent),
            )
        ),
        hardware=opt(hardware_profiles),
    ),
    "trigger.fired": st.builds(
        TriggerFired,
        node=node_ids,
        job_id=keys,
        rule=nonempty,
        name=reading_names,
        value=reading_values,
        time=aware,
    ),
    "storage.bucket.created": st.builds(
        BucketCreated,
        bucket_id=keys,
        name=nonempty,
        owner=users,
        type=st.sampled_from(["training-data", "model", "profile", "upload"]),
        acl=st.lists(grants, max_size=3),
    ),
    "storage.object.put": st.builds(
        ObjectPut,
        bucket_id=keys,
        key=nonempty,
        size=nonneg_ints,
        digest=digests,
        content_type=opt(text),
        by=users,
    ),
    "storage.acl.changed": st.builds(
        AclChanged, bucket_id=keys, acl=st.lists(grants, max_size=3), by=users
    ),
    "storage.object.deleted": st.builds(ObjectDeleted, bucket_id=keys, key=nonempty, by=users),
    "storage.bucket.deleted": st.builds(BucketDeleted, bucket_id=keys, by=users),
    "storage.command.rejected": st.builds(
        StorageCommandRejected,
        command=st.sampled_from(["storage.create", "storage.put", "storage.grant"]),
        by=users,
        bucket_id=keys,
        reasons=st.lists(nonempty, min_size=1, max_size=3),
    ),
    "auth.user.added": st.builds(
        UserAdded, user=users, token_sha256=st.text("0123456789abcdef", min_size=64, max_size=64), by=users
    ),
    "auth.user.revoked": st.builds(UserRevoked, user=users, by=users),
    "auth.role.granted": st.builds(RoleGranted, user=users, role=st.sampled_from(["reviewer", "admin"]), by=users),
    "auth.role.revoked": st.builds(RoleRevoked, user=users, role=st.sampled_from(["reviewer", "admin"]), by=users),
    "auth.group.member.added": st.builds(GroupMemberAdded, group=users, user=users, by=users),
    "auth.group.member.removed": st.builds(GroupMemberRemoved, group=users, user=users, by=users),
}

any_payload = st.sampled_from(sorted(STRATEGIES)).flatmap(lambda t: STRATEGIES[t])


def envelope(payload: Payload) -> st.SearchStrategy[Event]:
    return st.builds(
        lambda source, subject, when, seq: Event.new(
            payload, source=source, subject=subject, time=when, nodeseq=seq
        ),
        text,
        text,
        aware,
        opt(st.integers(0, 2**63 - 1)),
    )


events = any_payload.flatmap(envelope)


# --- the catalogue --------------------------------------------------------------------------


def catalogue_types() -> list[str]:
    """Types registered by hivebus itself (other tests may register test-only types)."""
    return [t for t in registry.types() if registry.spec(t).model.__module__.startswith("hivebus.")]


CATALOGUE = catalogue_types()


def test_every_registered_type_has_a_strategy() -> None:
    assert sorted(STRATEGIES) == catalogue_types()


def test_catalogue_covers_the_design() -> None:
    required = {
        "data.reading",
        *(f"ecr.bundle.{v}" for v in ("pushed", "registered", "rejected", "approved", "frozen", "deleted")),
        "ecr.permission.granted", "ecr.permission.revoked", "ecr.profile.recorded",
        *(f"ses.job.{v}" for v in ("submitted", "scheduled", "rejected", "suspended", "resumed", "removed", "completed")),
        "ses.goal.assigned", "ses.goal.removed",
        "node.registered", "node.heartbeat", "node.online", "node.offline", "node.sensor.lost",
        "node.sensor.restored", "node.config.updated", "plugin.status", "trigger.fired",
        "storage.bucket.created", "storage.object.put", "storage.acl.changed",
    }  # fmt: skip
    assert required <= set(registry.types())


@pytest.mark.parametrize("type_", CATALOGUE)
def test_routes_and_to_edge_payloads_name_their_node(type_: str) -> None:
    model = registry.spec(type_).model
    expected = {
        "data.reading": "data",
        "ses.goal.assigned": "toedge",
        "ses.goal.removed": "toedge",
        "node.config.updated": "toedge",
        "ses.offload.decided": "toedge",
    }
    assert model.route == expected.get(type_, "evt")
    if model.route == "toedge":
        field = model.model_fields["node"]
        assert field.is_required() and field.annotation is str


@pytest.mark.parametrize("type_", CATALOGUE)
def test_strategy_sets_every_field(type_: str) -> None:
    """A strategy that never fills an optional field would leave it out of the round trip."""
    model = registry.spec(type_).model
    for name, info in model.model_fields.items():
        if info.is_required():
            continue
        default = info.get_default(call_default_factory=True)
        try:
            find(
                STRATEGIES[type_],
                lambda p, n=name, d=default: getattr(p, n) != d,
                settings=settings(max_examples=300, phases=[Phase.generate], database=None),
            )
        except NoSuchExample:
            pytest.fail(f"the {type_} strategy never sets {name!r} to anything but its default")


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(events)
def test_every_event_round_trips(event: Event) -> None:
    raw = codec.encode(event)
    decoded = codec.decode(raw)
    assert type(decoded.data) is type(event.data)
    assert decoded == event
    assert codec.encode(decoded) == raw  # byte-identical: replays produce identical logs


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_payload)
def test_payloads_validate_from_their_json(payload: Payload) -> None:
    again = codec.validate_payload(type(payload), json.loads(payload.model_dump_json()))
    assert again == payload


# --- hostile input --------------------------------------------------------------------------


def decode_or_decode_error(raw: bytes | str) -> Event | None:
    try:
        return codec.decode(raw)
    except DecodeError as exc:
        assert exc.field, f"DecodeError without a field: {exc}"
        return None


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_decode_error(raw: bytes) -> None:
    assert decode_or_decode_error(raw) is None


@given(json_values)
def test_arbitrary_json_raises_only_decode_error(value: Any) -> None:
    assert decode_or_decode_error(json.dumps(value).encode()) is None


@given(
    st.fixed_dictionaries(
        {"type": st.sampled_from(CATALOGUE) | text, "data": json_values},
        optional={
            "specversion": st.just("1.0") | json_values,
            "id": json_values,
            "dataversion": json_values,
            "source": json_values,
            "subject": json_values,
            "time": st.just("2024-05-01T12:00:00Z") | json_values,
        },
    )
)
def test_envelope_shaped_junk_raises_only_decode_error(obj: dict[str, Any]) -> None:
    decode_or_decode_error(json.dumps(obj))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[head] = _replace(node[head], rest, value)
    return copy


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(events, st.data())
def test_mutated_payloads_raise_only_decode_error(event: Event, data: st.DataObject) -> None:
    obj = json.loads(codec.encode(event))
    path = data.draw(st.sampled_from(_paths(obj["data"])))
    junk = data.draw(json_values | st.sampled_from([True, 1.5, -1, "", "x" * 200, [], {}]))
    mutated = {**obj, "data": _replace(obj["data"], path, junk)}
    decode_or_decode_error(json.dumps(mutated))


def test_non_finite_json_numbers_are_refused() -> None:
    obj = json.loads(codec.encode(Event.new(_reading(), source="node/W012", subject="W012")))
    for literal in ("NaN", "Infinity", "-Infinity"):
        raw = json.dumps(obj).replace('"value": 21.5', f'"value": {literal}')
        assert literal in raw
        with pytest.raises(DecodeError) as err:
            codec.decode(raw)
        assert err.value.field == "data.value"


# --- the reading rules ----------------------------------------------------------------------

_OK: dict[str, Any] = {
    "name": "env.temperature",
    "value": 21.5,
    "timestamp": 1_700_000_000_000_000_000,
    "meta": {"node": "W012", "sensor": "bme680"},
}


def _reading(**changes: Any) -> Reading:
    return Reading(**{**_OK, **changes})


def _reading_event_json(**changes: Any) -> str:
    obj = json.loads(codec.encode(Event.new(_reading(), source="node/W012", subject="W012")))
    obj["data"] = {**obj["data"], **changes}
    return json.dumps(obj)


BAD_READINGS: list[tuple[str, dict[str, Any], str]] = [
    ("upper case part", {"name": "env.Temperature"}, "name"),
    ("hyphen", {"name": "env.temp-c"}, "name"),
    ("empty part", {"name": "env..temperature"}, "name"),
    ("leading dot", {"name": ".env"}, "name"),
    ("trailing dot", {"name": "env."}, "name"),
    ("empty name", {"name": ""}, "name"),
    ("space", {"name": "env temperature"}, "name"),
    ("129 chars", {"name": "a" * 129}, "name"),
    ("name not a str", {"name": 5}, "name"),
    ("bool true", {"value": True}, "value"),
    ("bool false", {"value": False}, "value"),
    ("null value", {"value": None}, "value"),
    ("list value", {"value": [1, 2]}, "value"),
    ("object value", {"value": {"a": 1}}, "value"),
    ("float timestamp", {"timestamp": 1.7e18}, "timestamp"),
    ("float timestamp, integral", {"timestamp": 1_700_000_000_000_000_000.0}, "timestamp"),
    ("seconds, not ns", {"timestamp": 1_700_000_000}, "timestamp"),
    ("1999", {"timestamp": MIN_TIMESTAMP_NS - 1}, "timestamp"),
    ("negative", {"timestamp": -1}, "timestamp"),
    ("string timestamp", {"timestamp": "1700000000000000000"}, "timestamp"),
    ("bool timestamp", {"timestamp": True}, "timestamp"),
    ("past int64", {"timestamp": 2**63}, "timestamp"),
    ("int meta value", {"meta": {"node": "W012", "channel": 1}}, "meta.channel"),
    ("null meta value", {"meta": {"sensor": None}}, "meta.sensor"),
    ("bool meta value", {"meta": {"ok": True}}, "meta.ok"),
    ("meta not a map", {"meta": ["node"]}, "meta"),
    ("unknown scope", {"scope": "edge"}, "scope"),
    ("unknown field", {"unit": "C"}, "unit"),
]


@pytest.mark.parametrize(
    ("case", "changes", "field"), BAD_READINGS, ids=[c[0] for c in BAD_READINGS]
)
def test_bad_readings_are_refused_naming_the_field(
    case: str, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(DecodeError) as on_wire:
        codec.decode(_reading_event_json(**changes))
    assert on_wire.value.field == f"data.{field}"
    assert on_wire.value.event_type == "data.reading"
    with pytest.raises(DecodeError) as as_dict:
        codec.validate_payload(Reading, {**_OK, **changes})
    assert as_dict.value.field == field


def test_missing_reading_fields_are_named() -> None:
    for field in ("name", "value", "timestamp"):
        data = {k: v for k, v in _OK.items() if k != field}
        with pytest.raises(DecodeError) as err:
            codec.validate_payload(Reading, data)
        assert err.value.field == field


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "a" * 128},
        {"name": "sys.net.rx_bytes"},
        {"name": "0"},
        {"timestamp": MIN_TIMESTAMP_NS},
        {"value": 0},
        {"value": -(2**70)},
        {"value": ""},
        {"value": -0.0},
        {"meta": {}},
        {"scope": "node"},
        {"scope": "beehive"},
    ],
)
def test_good_readings_are_kept_exactly(changes: dict[str, Any]) -> None:
    reading = _reading(**changes)
    for key, value in changes.items():
        got = getattr(reading, key)
        assert got == value and type(got) is type(value)
        if isinstance(value, float):
            assert math.copysign(1, got) == math.copysign(1, value)
    decoded = codec.decode(codec.encode(Event.new(reading, source="node/W012", subject="W012")))
    assert decoded.data == reading


def test_int_value_stays_int_and_float_stays_float() -> None:
    assert type(codec.decode(_reading_event_json(value=3)).data.value) is int
    assert type(codec.decode(_reading_event_json(value=3.0)).data.value) is float


def test_reading_scope_defaults_to_all_and_meta_to_empty() -> None:
    reading = Reading(name="env.temperature", value=1, timestamp=MIN_TIMESTAMP_NS)
    assert reading.scope == "all" and reading.meta == {}


def test_reading_constructor_rejects_bool_without_coercion() -> None:
    with pytest.raises(ValidationError):
        _reading(value=True)
    with pytest.raises(ValidationError):
        _reading(timestamp=float(_OK["timestamp"]))
    with pytest.raises(ValidationError):
        _reading(meta={"n": 1})


@given(st.binary(max_size=256))
def test_bytes_travel_as_base64(raw: bytes) -> None:
    reading = Reading.from_bytes(
        "image.thumbnail", raw, timestamp=MIN_TIMESTAMP_NS, meta={"camera": "top"}
    )
    assert reading.meta == {"camera": "top", "enc": "b64"}
    assert isinstance(reading.value, str)
    decoded = codec.decode(codec.encode(Event.new(reading, source="node/W012", subject="W012")))
    assert decoded.data.raw_bytes() == raw


def test_raw_bytes_of_a_text_reading_is_an_error() -> None:
    with pytest.raises(SchemaError, match="does not carry bytes"):
        _reading(value="hello").raw_bytes()
    with pytest.raises(SchemaError, match="not valid base64"):
        _reading(value="not base64!", meta={"enc": "b64"}).raw_bytes()


# --- upcasting ------------------------------------------------------------------------------


def _private_registry() -> tuple[Registry, type[Payload]]:
    reg = Registry()

    @reg.event("test.sensor.calibrated", version=2)
    class SensorCalibrated(Payload):
        """v1 carried ``offset`` in tenths of a degree (an int); v2 carries degrees."""

        model_config = STRICT

        sensor: str
        offset_c: float

    @reg.upcaster("test.sensor.calibrated", 1)
    def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        return {"sensor": data["sensor"], "offset_c": data["offset"] / 10}

    return reg, SensorCalibrated


def _old_event(data: Any, version: int = 1) -> str:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": "01HZX0000000000000000000AA",
            "type": "test.sensor.calibrated",
            "dataversion": version,
            "source": "node/W012",
            "subject": "W012",
            "time": "2024-05-01T12:00:00Z",
            "data": data,
        }
    )


def test_v1_payload_is_lifted_on_decode() -> None:
    reg, model = _private_registry()
    event = codec.decode(_old_event({"sensor": "bme680", "offset": -15}), reg=reg)
    assert event.dataversion == 2
    assert event.data == model(sensor="bme680", offset_c=-1.5)
    assert "test.sensor.calibrated" not in registry  # the private registry stayed private


def test_current_version_is_not_upcast() -> None:
    reg, model = _private_registry()
    event = codec.decode(_old_event({"sensor": "bme680", "offset_c": 0.5}, version=2), reg=reg)
    assert event.data == model(sensor="bme680", offset_c=0.5)


def test_v1_shape_under_v2_label_is_refused() -> None:
    reg, _ = _private_registry()
    with pytest.raises(DecodeError) as err:
        codec.decode(_old_event({"sensor": "bme680", "offset": -15}, version=2), reg=reg)
    assert err.value.field in {"data.offset_c", "data.offset"}


@pytest.mark.parametrize("version", [0, 3, "1", True, None])
def test_unknown_data_versions_are_refused(version: Any) -> None:
    reg, _ = _private_registry()
    with pytest.raises(DecodeError) as err:
        codec.decode(_old_event({"sensor": "bme680", "offset": 1}, version=version), reg=reg)
    assert err.value.field == "dataversion"


def test_a_failing_upcaster_is_a_decode_error() -> None:
    """A v1 payload the upcaster cannot read (no ``offset``) must not escape as a KeyError."""
    reg, _ = _private_registry()
    with pytest.raises(DecodeError) as err:
        codec.decode(_old_event({"sensor": "bme680"}), reg=reg)
    assert err.value.field == "data"


def test_missing_upcaster_is_a_decode_error() -> None:
    reg = Registry()

    @reg.event("test.thing.happened", version=3)
    class ThingHappened(Payload):
        what: str

    @reg.upcaster("test.thing.happened", 2)
    def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
        return {"what": data["old_what"]}

    raw = _old_event({"what": "x"}).replace("test.sensor.calibrated", "test.thing.happened")
    with pytest.raises(DecodeError) as err:
        codec.decode(raw, reg=reg)
    assert err.value.field == "dataversion"


# --- ECR and SES helpers --------------------------------------------------------------------


@given(namespaces, app_names, versions)
def test_bundle_ids_parse_back(namespace: str, name: str, version: str) -> None:
    assert parse_bundle_id(bundle_id(namespace, name, version)) == (namespace, name, version)


@pytest.mark.parametrize(
    "text",
    [
        "waggle/plugin",
        "plugin:1.0",
        "Waggle/plugin:1.0",
        "a/b/c:1.0",
        "a/b:",
        "/b:1",
        "a.b/c:1",
        "a/b:1 0",
    ],
)
def test_malformed_bundle_ids_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a bundle id"):
        parse_bundle_id(text)


@pytest.mark.parametrize(
    ("version", "problem"),
    [
        ("0.2.1", None),
        ("10.0.0", None),
        ("1.0", None),
        ("1.00", None),
        ("0.23.4.13", None),
        ("1.0.0-rc1", None),
        ("01.0.0", None),
        ("v1.2.3", "must not start with 'v'"),
        ("latest", "not a release version"),
        ("1..2", "not a release version"),
        ("", "empty"),
    ],
)
def test_version_policy(version: str, problem: str | None) -> None:
    problems = version_problems(version)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0]


def test_architecture_problem() -> None:
    assert architecture_problem("linux/arm/v7") is None
    problem = architecture_problem("amd65")
    assert problem is not None and "unknown architecture 'amd65'" in problem


@pytest.mark.parametrize(
    ("image", "bundle"),
    [
        ("registry.sagecontinuum.org/waggle/plugin-bme680:0.2.1", "waggle/plugin-bme680:0.2.1"),
        ("waggle/plugin-bme680:0.2.1", "waggle/plugin-bme680:0.2.1"),
        ("localhost:5000/example/surface-water:0.1.0", "example/surface-water:0.1.0"),
        ("localhost/example/surface-water:0.1.0", "example/surface-water:0.1.0"),
        ("registry.sagecontinuum.org/waggle/x:1.0.0@sha256:" + "a" * 64, "waggle/x:1.0.0"),
    ],
)
def test_bundle_from_image(image: str, bundle: str) -> None:
    assert bundle_from_image(image) == bundle


@pytest.mark.parametrize(
    "image",
    [
        "registry.sagecontinuum.org/waggle/plugin-bme680",  # no version
        "plugin-bme680:0.2.1",  # no namespace
        "registry.sagecontinuum.org/plugin-bme680:0.2.1",  # host, then no namespace
        "registry.sagecontinuum.org/a/b/c:1.0",  # nested path
        "waggle/plugin@sha256:" + "a" * 64,  # digest only
    ],
)
def test_images_that_name_no_bundle(image: str) -> None:
    with pytest.raises(ValueError, match="does not name a bundle"):
        bundle_from_image(image)


@given(bundle_ids)
def test_image_for_bundle_inverts_bundle_from_image(bundle: str) -> None:
    assert bundle_from_image(image_for_bundle(bundle)) == bundle


def test_keywords_and_authors_accept_comma_strings() -> None:
    source = AppSource(url="https://x", architectures=["linux/amd64"])
    app = AppSpec(
        namespace="waggle", name="p", version="1.0.0", description="d", source=source,
        keywords="temperature, humidity,,  pressure", authors=["Ada <ada@example.org>"],
    )  # fmt: skip
    assert app.keywords == ["temperature", "humidity", "pressure"]
    assert app.authors == ["Ada <ada@example.org>"]


@pytest.mark.parametrize(
    ("kind", "default", "ok"),
    [
        ("int", 30, True),
        ("int", True, False),
        ("int", "30", False),
        ("boolean", False, True),
        ("boolean", 0, False),
        ("float", 1, True),
        ("double", 0.5, True),
        ("string", 3, False),
        ("File", "/data/x", True),
    ],
)
def test_input_defaults_match_their_type(kind: str, default: Any, ok: bool) -> None:
    build = lambda: AppInput(id="x", type=kind, default=default)  # noqa: E731
    if ok:
        assert build().default == default
    else:
        with pytest.raises(ValidationError):
            build()


def test_source_takes_a_branch_or_a_tag() -> None:
    with pytest.raises(ValidationError, match="branch or a tag"):
        AppSource(url="u", branch="main", tag="v1", architectures=["linux/amd64"])
    with pytest.raises(ValidationError, match="more than once"):
        AppSource(url="u", architectures=["linux/amd64", "linux/amd64"])


def test_all_users_is_a_group() -> None:
    with pytest.raises(ValidationError, match="AllUsers is a group"):
        PermissionGranted(
            resource="waggle", grantee_type="user", grantee="AllUsers", permission="READ", by="ada"
        )
    with pytest.raises(ValidationError, match="AllUsers is a group"):
        Grant(grantee_type="user", grantee="AllUsers", permission="READ")
    grant = PermissionGranted(
        resource="waggle/plugin-bme680:0.2.1",
        grantee_type="group",
        grantee="AllUsers",
        permission="READ",
        by="ada",
    )
    assert grant.resource_kind == "bundle"


def test_job_needs_a_target_and_distinct_plugins() -> None:
    plugin = {"name": "p", "pluginSpec": {"image": "waggle/p:1.0.0"}}
    with pytest.raises(ValidationError, match="nodes"):
        JobSpec.model_validate({"name": "j", "plugins": [plugin]})
    with pytest.raises(ValidationError, match="not unique"):
        JobSpec.model_validate({"name": "j", "plugins": [plugin, plugin], "nodes": {"W012": None}})
    job = JobSpec.model_validate(
        {"name": "j", "plugins": [plugin], "nodes": {"W012": None, "W013": {}}}
    )
    assert job.nodes == ["W012", "W013"]
    assert job.plugins[0].plugin_spec.bundle_id == "waggle/p:1.0.0"


def test_plugin_state_accepts_names_and_members() -> None:
    base = {
        "node": "W012",
        "job_id": "1",
        "plugin": "p",
        "bundle_id": "waggle/p:1.0.0",
        "run_id": "r1",
    }
    assert PluginStatus(**base, state="running").state is PluginState.RUNNING
    with pytest.raises(ValidationError):
        PluginStatus(**base, state="exploded")


def test_trigger_time_must_be_aware() -> None:
    with pytest.raises(ValidationError):
        TriggerFired(
            node="W012", job_id="1", rule="r", name="heat.alert", value=1, time=datetime(2024, 1, 1)
        )
