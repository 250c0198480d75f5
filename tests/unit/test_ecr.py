"""ECR decisions with no server: registration, every rejection reason, access, review, profiles."""

from __future__ import annotations

import json

import pytest

from hivebus.errors import SetupError
from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.ecr import EcrHandler, salvage_push
from hivebus.handlers.testing import Log, app_spec, manifest
from hivebus.schemas import codec
from hivebus.schemas.auth import GroupMemberAdded, GroupMemberRemoved, RoleGranted, RoleRevoked
from hivebus.schemas.ecr import (
    AppInput,
    ArtifactRef,
    BundleApproved,
    BundleDeleted,
    BundleFrozen,
    BundlePushed,
    HardwareProfile,
    PermissionGranted,
    PermissionRevoked,
)
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import Perf, PluginStatus

BME = "waggle/plugin-bme680:0.2.1"


def ecr_log(**config: object) -> Log:
    return Log([EcrHandler(HandlerConfig(**config))])  # type: ignore[arg-type]


def only(events: list[Event]) -> Event:
    assert len(events) == 1, [e.type for e in events]
    return events[0]


def grant(
    log: Log, by: str, resource: str, grantee: str, permission: str, kind: str = "user"
) -> list[Event]:
    payload = PermissionGranted(
        resource=resource, grantee_type=kind, grantee=grantee, permission=permission, by=by
    )
    return log.by(by, payload, resource)


# --- registration -----------------------------------------------------------------------------


def test_a_valid_push_is_registered_and_its_pusher_owns_the_namespace() -> None:
    log = ecr_log()
    push = log.push(app_spec(BME), "alice")
    registered = only(push)
    assert registered.type == "ecr.bundle.registered"
    assert registered.data.bundle_id == BME and registered.data.owner == "alice"
    assert registered.causationid == log.events[0].id
    assert registered.source == "handler/ecr"
    catalog = log.state("ecr")
    assert catalog.namespace_owner == {"waggle": "alice"}
    assert catalog.can("alice", "FULL_CONTROL", "waggle/other:1.0.0")
    assert not catalog.can("bob", "READ", BME)  # private by default


def test_the_decision_is_deterministic() -> None:
    first, second = ecr_log(), ecr_log()
    event = Event.new(
        BundlePushed(app=app_spec(BME), pusher="alice"), source="user/alice", subject=BME
    )
    assert first.add(event) == second.add(event)


def test_a_frozen_app_is_registered_and_frozen() -> None:
    log = ecr_log()
    types = [e.type for e in log.push(app_spec(BME, frozen=True))]
    assert types == ["ecr.bundle.registered", "ecr.bundle.frozen"]
    assert log.state("ecr").bundles[BME].frozen


def reasons_of(events: list[Event]) -> list[str]:
    rejected = only(events)
    assert rejected.type == "ecr.command.rejected", rejected.type
    return rejected.data.reasons


@pytest.mark.parametrize(
    ("version", "words"),
    [("v1.2.3", "must not start with 'v'"), ("latest", "not a release version"), ("1.2.", "dots")],
)
def test_bad_version(version: str, words: str) -> None:
    log = ecr_log()
    reasons = reasons_of(log.push(app_spec(f"waggle/plugin-bme680:{version}")))
    assert any(words in r for r in reasons), reasons


def test_architecture_not_accepted() -> None:
    log = ecr_log(architectures=frozenset({"linux/amd64"}))
    reasons = reasons_of(log.push(app_spec(BME, architectures=["linux/amd64", "linux/arm64"])))
    assert reasons == ["architecture 'linux/arm64' is not accepted (accepted: linux/amd64)"]


def test_input_type_not_allowed() -> None:
    log = ecr_log(input_types=frozenset({"int", "string"}))
    app = app_spec(BME, inputs=[AppInput(id="model", type="File"), AppInput(id="n", type="int")])
    reasons = reasons_of(log.push(app))
    assert reasons == ["inputs[0] 'model': input type 'File' is not allowed (allowed: int, string)"]


def test_reserved_names_and_namespaces() -> None:
    log = ecr_log()
    assert (
        "name 'latest' is not allowed" in reasons_of(log.push(app_spec("waggle/latest:1.0.0")))[0]
    )
    assert (
        "namespace 'hivebus' is reserved" in reasons_of(log.push(app_spec("hivebus/tool:1.0.0")))[0]
    )
    assert only(log.push(app_spec("hivebus/tool:1.0.0"), "admin")).type == "ecr.bundle.registered"


def test_source_url_must_be_a_repository() -> None:
    log = ecr_log()
    reasons = reasons_of(log.push(app_spec(BME, url="ftp://example.org/code.tgz")))
    assert "is not a repository URL" in reasons[0]


def test_duplicate_artifacts() -> None:
    log = ecr_log()
    art = ArtifactRef(name="model.pt", kind="model", digest="sha256:" + "a" * 64, size=3)
    payload = BundlePushed(app=app_spec(BME), pusher="alice", artifacts=[art, art])
    reasons = reasons_of(log.by("alice", payload, BME))
    assert reasons == ["artifact 'model.pt' is listed 2 times"]


def test_a_frozen_version_cannot_be_pushed_again_even_after_deletion() -> None:
    log = ecr_log()
    log.push(app_spec(BME, frozen=True))
    assert "already registered and frozen" in reasons_of(log.push(app_spec(BME)))[0]
    log.by("alice", BundleDeleted(bundle_id=BME, by="alice"), BME)
    assert "already registered and frozen" in reasons_of(log.push(app_spec(BME)))[0]


def test_an_unfrozen_version_is_replaced_and_needs_a_new_review() -> None:
    log = ecr_log()
    log.push(app_spec(BME))
    log.by("admin", BundleApproved(bundle_id=BME, by="admin"), BME)
    assert log.state("ecr").bundles[BME].approved
    assert only(log.push(app_spec(BME, cpu=0.5))).type == "ecr.bundle.registered"
    bundle = log.state("ecr").bundles[BME]
    assert not bundle.approved and bundle.app.resources.cpu == 0.5
    log.by("alice", BundleFrozen(bundle_id=BME, by="alice"), BME)
    assert "frozen" in reasons_of(log.push(app_spec(BME)))[0]


def test_pusher_lacks_write_on_the_namespace_until_granted() -> None:
    log = ecr_log()
    log.push(app_spec(BME), "alice")
    other = "waggle/plugin-rain:1.0.0"
    reasons = reasons_of(log.push(app_spec(other), "bob"))
    assert reasons == ["bob lacks WRITE on namespace 'waggle' (owned by alice; ask for a grant)"]
    assert [e.type for e in grant(log, "alice", "waggle", "bob", "WRITE")] == ["ecr.permission.granted"]
    assert only(log.push(app_spec(other), "bob")).data.owner == "bob"
    # WRITE on the namespace covers its bundles (not frozen ones); the owner stays alice
    assert only(log.push(app_spec(BME), "bob")).data.owner == "alice"
    log.by(
        "alice",
        PermissionRevoked(
            resource="waggle", grantee_type="user", grantee="bob", permission="WRITE", by="alice"
        ),
        "waggle",
    )
    assert (
        "lacks WRITE on namespace"
        in reasons_of(log.push(app_spec("waggle/plugin-x:1.0.0"), "bob"))[0]
    )


def test_every_reason_is_reported_at_once() -> None:
    log = ecr_log(architectures=frozenset({"linux/amd64"}), input_types=frozenset({"int"}))
    log.push(app_spec("waggle/seed:1.0.0", architectures=["linux/amd64"]), "alice")
    app = app_spec(
        "waggle/latest:v1.0.0",
        architectures=["linux/arm64"],
        inputs=[AppInput(id="f", type="File")],
        url="ftp://x",
    )
    reasons = reasons_of(log.push(app, "bob"))
    assert len(reasons) == 6, reasons
    for words in (
        "start with 'v'",
        "architecture",
        "input type",
        "'latest' is not allowed",
        "repository URL",
        "lacks WRITE",
    ):
        assert any(words in r for r in reasons), (words, reasons)


def test_a_push_that_does_not_decode_is_rejected_with_every_problem() -> None:
    app = app_spec(BME).model_dump(mode="json")
    del app["description"]
    app["source"]["architectures"] = ["linux/amd65"]
    app["inputs"] = [{"id": "x", "type": "tensor"}]
    event = Event.new(
        BundlePushed(app=app_spec(BME), pusher="alice"), source="user/alice", subject=BME
    )
    doc = json.loads(codec.encode(event))
    doc["data"]["app"] = app
    raw = json.dumps(doc).encode()
    decision = salvage_push(raw)
    assert decision is not None
    rejected = only(decision.events)
    assert rejected.causationid == event.id
    text = "\n".join(rejected.data.reasons)
    assert "app.description: Field required" in text
    assert "amd65" in text
    assert "app.inputs.0.type" in text
    assert salvage_push(raw) == decision  # deterministic
    del doc["data"]["app"]["namespace"]
    assert salvage_push(json.dumps(doc).encode()) is None  # no bundle id to answer: dead letter
    assert salvage_push(b"not json") is None


# --- access control --------------------------------------------------------------------------


def test_grants_need_write_acp_and_refusals_have_no_effect() -> None:
    log = ecr_log()
    log.push(app_spec(BME))
    grant(log, "bob", BME, "bob", "READ")
    assert log.refused and "bob lacks WRITE_ACP" in log.refused[-1][1]
    assert not log.state("ecr").can("bob", "READ", BME)
    grant(log, "alice", BME, "bob", "WRITE_ACP")
    grant(log, "bob", BME, "carol", "READ")
    assert log.state("ecr").can("carol", "READ", BME)
    assert not log.state("ecr").can("carol", "READ", "waggle/other:1.0.0")


def test_all_users_read_makes_a_bundle_public_and_only_read_is_allowed() -> None:
    log = ecr_log()
    log.push(app_spec(BME))
    grant(log, "alice", BME, "AllUsers", "WRITE", kind="group")
    assert "can only be granted READ" in log.refused[-1][1]
    grant(log, "alice", BME, "AllUsers", "READ", kind="group")
    catalog = log.state("ecr")
    assert catalog.is_public(BME) and catalog.can("anyone", "READ", BME)
    assert not catalog.can("anyone", "WRITE", BME)


def test_groups_from_configuration() -> None:
    log = ecr_log(groups={"lab": frozenset({"bo"})})
    log.push(app_spec(BME))
    grant(log, "alice", "waggle", "nolab", "READ", kind="group")
    assert "unknown group 'nolab'" in log.refused[-1][1]
    grant(log, "alice", "waggle", "lab", "READ", kind="group")
    assert log.state("ecr").can("bo", "READ", BME)
    assert not log.state("ecr").can("cy", "READ", BME)


def test_full_control_implies_every_verb_and_revoking_a_missing_grant_is_refused() -> None:
    log = ecr_log()
    log.push(app_spec(BME))
    grant(log, "alice", "waggle", "bob", "FULL_CONTROL")
    assert log.state("ecr").can("bob", "WRITE_ACP", BME)
    log.by(
        "alice",
        PermissionRevoked(
            resource=BME, grantee_type="user", grantee="bob", permission="READ", by="alice"
        ),
        BME,
    )
    assert "holds no READ grant" in log.refused[-1][1]


def test_grant_on_an_unclaimed_namespace_or_unknown_bundle_is_refused() -> None:
    log = ecr_log()
    grant(log, "alice", "nobody", "bob", "READ")
    assert "has no owner yet" in log.refused[-1][1]
    grant(log, "alice", "nobody/x:1.0.0", "bob", "READ")
    assert "is not registered" in log.refused[-1][1]


# --- review, freeze, delete -------------------------------------------------------------------


def test_only_reviewers_approve_registered_bundles() -> None:
    log = ecr_log(reviewers=frozenset({"rita"}))
    log.by("rita", BundleApproved(bundle_id=BME, by="rita"), BME)
    assert "is not registered" in log.refused[-1][1]
    log.push(app_spec(BME))
    log.by("alice", BundleApproved(bundle_id=BME, by="alice"), BME)
    assert "alice is not a reviewer" in log.refused[-1][1]
    assert not log.state("ecr").bundles[BME].approved
    assert log.state("ecr").can("rita", "READ", BME)  # reviewers read what they review
    log.by("rita", BundleApproved(bundle_id=BME, by="rita"), BME)
    assert log.state("ecr").bundles[BME].approved_by == "rita"


def test_roles_and_groups_are_facts_of_the_log() -> None:
    log = ecr_log()
    log.push(app_spec(BME))
    log.by("rita", BundleApproved(bundle_id=BME, by="rita"), BME)
    assert "rita is not a reviewer" in log.refused[-1][1] and "hivebus user role rita reviewer" in log.refused[-1][1]
    log.by("admin", RoleGranted(user="rita", role="reviewer", by="admin"), "rita")
    log.by("rita", BundleApproved(bundle_id=BME, by="rita"), BME)
    assert log.state("ecr").bundles[BME].approved_by == "rita"
    log.by("admin", RoleRevoked(user="rita", role="reviewer", by="admin"), "rita")
    assert not log.state("ecr").is_reviewer("rita")

    grant(log, "alice", "waggle", "lab", "READ", kind="group")
    assert "unknown group 'lab'" in log.refused[-1][1] and "hivebus group add" in log.refused[-1][1]
    log.by("admin", GroupMemberAdded(group="lab", user="bo", by="admin"), "lab")
    grant(log, "alice", "waggle", "lab", "READ", kind="group")
    assert log.state("ecr").can("bo", "READ", BME) and not log.state("ecr").can("cy", "READ", BME)
    log.by("admin", GroupMemberRemoved(group="lab", user="bo", by="admin"), "lab")
    assert not log.state("ecr").can("bo", "READ", BME)


def test_a_replay_of_the_log_decides_with_the_roles_it_holds() -> None:
    """The same events folded afresh give the same rights: nothing comes from the environment."""
    log = ecr_log()
    log.push(app_spec(BME))
    log.by("admin", RoleGranted(user="rita", role="admin", by="admin"), "rita")
    log.by("admin", GroupMemberAdded(group="lab", user="bo", by="admin"), "lab")
    replayed = ecr_log()
    for event in log.events:
        replayed.drivers["ecr"].history(event)
    catalog = replayed.state("ecr")
    assert catalog.is_reviewer("rita") and catalog.groups_of("bo") == {"AllUsers", "lab"}


def test_the_retired_environment_variables_are_refused_with_what_to_do() -> None:
    with pytest.raises(SetupError, match="HIVEBUS_ECR_REVIEWERS is no longer read") as caught:
        HandlerConfig.from_env({"HIVEBUS_ECR_REVIEWERS": "rita"})
    assert "hivebus user role NAME reviewer" in str(caught.value.hint)
    with pytest.raises(SetupError, match="HIVEBUS_ECR_GROUPS"):
        HandlerConfig.from_env({"HIVEBUS_ECR_GROUPS": "lab=bo"})


def test_freeze_needs_write_and_delete_needs_full_control() -> None:
    log = ecr_log()
    log.push(app_spec(BME))
    log.by("bob", BundleFrozen(bundle_id=BME, by="bob"), BME)
    assert "bob lacks WRITE" in log.refused[-1][1]
    log.by("bob", BundleDeleted(bundle_id=BME, by="bob"), BME)
    assert "bob lacks FULL_CONTROL" in log.refused[-1][1]
    assert log.state("ecr").live(BME) is not None
    log.by("alice", BundleDeleted(bundle_id=BME, by="alice"), BME)
    assert log.state("ecr").live(BME) is None


# --- profiles ----------------------------------------------------------------------------------


def status(
    state: str,
    perf: Perf | None,
    *,
    bundle: str = BME,
    node: str = "W012",
    hardware: HardwareProfile | None = None,
) -> PluginStatus:
    return PluginStatus(
        node=node,
        job_id="j1",
        plugin="bme680",
        bundle_id=bundle,
        run_id="r1",
        state=state,
        exit_code=0 if state == "completed" else None,
        perf=perf,
        hardware=hardware,
    )


def test_a_finished_run_with_perf_becomes_a_profile_of_the_nodes_hardware() -> None:
    log = ecr_log()
    log.push(app_spec(BME))
    log.register_node(manifest("W012", arch="linux/arm64", gpu="xavier", node_class="nx"))
    perf = Perf(cpu_seconds=3.0, max_rss_bytes=50_000_000, wall_seconds=6.0, gpu_percent=10.0)
    assert log.by("node/W012", status("running", None), "W012") == []
    profile = only(log.by("node/W012", status("completed", perf), "W012"))
    assert profile.type == "ecr.profile.recorded"
    data = profile.data
    assert data.hardware == HardwareProfile(arch="linux/arm64", gpu="xavier", node_class="nx")
    assert (data.cpu_seconds, data.max_rss_bytes, data.wall_seconds, data.exit_state) == (
        3.0,
        50_000_000,
        6.0,
        "completed",
    )
    stats, basis = log.state("ecr").profile(BME, data.hardware)
    assert stats is not None and stats.cpu == 0.5 and basis == "profiled on linux/arm64/xavier"
    failed = only(log.by("node/W012", status("failed", perf), "W012"))
    assert failed.data.exit_state == "failed"


def test_profiles_need_a_known_bundle_and_hardware() -> None:
    log = ecr_log()
    perf = Perf(cpu_seconds=1.0, max_rss_bytes=1, wall_seconds=1.0)
    assert log.by("node/W012", status("completed", perf, bundle="x/unknown:1.0.0"), "W012") == []
    log.push(app_spec(BME))
    assert log.by("node/W099", status("completed", perf, node="W099"), "W099") == []
    assert "no hardware class" in log.refused[-1][1]
    hw = HardwareProfile(arch="linux/amd64")
    assert (
        only(
            log.by("node/W099", status("completed", perf, node="W099", hardware=hw), "W099")
        ).data.hardware
        == hw
    )
