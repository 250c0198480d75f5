"""Scheduler decisions with no server: placement, every rejection reason, policies, lifecycle."""

from __future__ import annotations

from datetime import timedelta

import pytest

from hivebus.bus.subjects import subject_for
from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.ecr import EcrHandler
from hivebus.handlers.health import HealthHandler
from hivebus.handlers.runtime import Driver
from hivebus.handlers.ses import SesHandler, plan_job
from hivebus.handlers.testing import GiB, Log, app_spec, job_spec, manifest, resources
from hivebus.schemas.ecr import BundleApproved, HardwareProfile, PermissionGranted, ProfileRecorded
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import NodeConfigUpdated, SensorLost
from hivebus.schemas.ses import JobRemoved, JobResumed, JobSubmitted, JobSuspended

BME = "waggle/plugin-bme680:0.2.1"
RAIN = "waggle/plugin-rain:1.0.0"


def world(*nodes: tuple[str, list[str]], approve: bool = True, **config: object) -> Log:
    """ECR + SES + health; alice's BME bundle pushed (and approved); nodes registered and online."""
    cfg = HandlerConfig(**config)  # type: ignore[arg-type]
    log = Log([EcrHandler(cfg), SesHandler(cfg), HealthHandler(cfg)])
    log.push(app_spec(BME), "alice")
    if approve:
        log.by("admin", BundleApproved(bundle_id=BME, by="admin"), BME)
    for node, tags in nodes or (("W012", []), ("W013", [])):
        log.register_node(manifest(node, tags=tags))
        log.heartbeat(node)
    return log


def rejected(events: list[Event]) -> list[str]:
    types = [e.type for e in events]
    assert types == ["ses.command.rejected"], types
    return events[0].data.reasons


def has(reasons: list[str], *words: str) -> None:
    for word in words:
        assert any(word in r for r in reasons), (word, reasons)


def profile(
    log: Log, bundle: str, *, cpu_seconds: float, wall: float, rss: int, arch: str = "linux/arm64"
) -> None:
    payload = ProfileRecorded(
        bundle_id=bundle,
        hardware=HardwareProfile(arch=arch),
        node="W012",
        run_id="r",
        exit_state="completed",
        cpu_seconds=cpu_seconds,
        max_rss_bytes=rss,
        wall_seconds=wall,
    )
    log.by("handler/ecr", payload, bundle)


# --- the happy path -----------------------------------------------------------------------------


def test_a_job_is_scheduled_with_one_goal_per_node_to_edge() -> None:
    log = world()
    out = log.submit(job_spec(nodes=["W012", "W013"], criteria=["WallClock(1d)"]))
    assert [e.type for e in out] == ["ses.job.scheduled", "ses.goal.assigned", "ses.goal.assigned"]
    scheduled, *goals = out
    assert scheduled.data.policy == "fit"
    assert {(p.node, p.plugin, p.bundle_id) for p in scheduled.data.placements} == {
        ("W012", "bme680", BME),
        ("W013", "bme680", BME),
    }
    assert [subject_for(g) for g in goals] == [
        "toedge.W012.ses.goal.assigned",
        "toedge.W013.ses.goal.assigned",
    ]
    goal = goals[0].data
    assert goal.plugins[0].image == f"registry.sagecontinuum.org/{BME}"
    assert goal.science_rules == ["schedule(bme680): cronjob('bme680', '*/5 * * * *')"]
    assert goal.success_criteria == ["WallClock(1d)"]
    assert all(e.causationid == log.of_type("ses.job.submitted")[0].id for e in out)
    job = log.state("ses").jobs["j1"]
    assert job.state == "Running" and sorted(job.goals) == ["W012", "W013"]


def test_node_tags_select_nodes_having_every_tag() -> None:
    log = world(("W1", ["urban", "rain"]), ("W2", ["urban"]), ("W3", ["rain", "urban", "x"]))
    out = log.submit(job_spec(tags=["rain", "urban"]))
    assert sorted(p.node for p in out[0].data.placements) == ["W1", "W3"]


def test_rules_go_to_the_nodes_of_their_plugins() -> None:
    log = world(("W1", ["gpu-less"]), ("W2", []))
    log.push(app_spec(RAIN), "alice")
    log.by("admin", BundleApproved(bundle_id=RAIN, by="admin"), RAIN)
    spec = job_spec(
        [("bme680", BME), ("rain", RAIN)],
        nodes=["W1", "W2"],
        rules=[
            "schedule(bme680): cronjob('bme680', '*/5 * * * *')",
            "schedule(rain): v('env.raingauge.uint') > 3",
            "publish(heat.alert): v('env.temperature') > 35",
        ],
    )
    spec.plugins[1].plugin_spec.selector["tag"] = "gpu-less"  # type: ignore[index]
    out = log.submit(spec)
    goals = {e.data.node: e.data for e in out if e.type == "ses.goal.assigned"}
    assert [p.name for p in goals["W1"].plugins] == ["bme680", "rain"]
    assert [p.name for p in goals["W2"].plugins] == ["bme680"]
    assert len(goals["W1"].science_rules) == 3 and len(goals["W2"].science_rules) == 2


# --- every rejection reason ----------------------------------------------------------------------


def test_unknown_bundle() -> None:
    log = world()
    has(
        rejected(log.submit(job_spec([("x", "waggle/nothing:1.0.0")], nodes=["W012"]))),
        "bundle waggle/nothing:1.0.0 is not registered",
    )


def test_unapproved_bundle_runs_only_on_virtual_nodes() -> None:
    log = world(("W012", []), ("VW1", ["virtual"]), approve=False)
    has(
        rejected(log.submit(job_spec(nodes=["W012"]))),
        "is not approved (unapproved bundles run only on nodes tagged 'virtual')",
    )
    out = log.submit(job_spec(nodes=["VW1"]), job_id="j2")
    assert out[0].type == "ses.job.scheduled"


def test_no_read_on_a_private_bundle_until_it_is_public() -> None:
    log = world()
    has(
        rejected(log.submit(job_spec(nodes=["W012"]), user="bob")),
        "bob has no READ on bundle waggle/plugin-bme680:0.2.1 (it is private)",
    )
    log.by(
        "alice",
        PermissionGranted(
            resource=BME, grantee_type="group", grantee="AllUsers", permission="READ", by="alice"
        ),
        BME,
    )
    assert (
        log.submit(job_spec(nodes=["W012"]), job_id="j2", user="bob")[0].type == "ses.job.scheduled"
    )


def test_user_not_allowed_on_node() -> None:
    log = world()
    log.by("operator", NodeConfigUpdated(node="W012", settings={"allow_users": "carol"}), "W012")
    has(
        rejected(log.submit(job_spec(nodes=["W012"]))),
        "node W012: alice is not allowed to run jobs there",
    )
    # with tags the node is just left out
    log.by("operator", NodeConfigUpdated(node="W012", tags=["t"]), "W012")
    log.by("operator", NodeConfigUpdated(node="W013", tags=["t"]), "W013")
    out = log.submit(job_spec(tags=["t"]), job_id="j2")
    assert [p.node for p in out[0].data.placements] == ["W013"]


def test_no_node_matches() -> None:
    log = world()
    has(
        rejected(log.submit(job_spec(tags=["nowhere"]))),
        "no registered node matches nodeTags nowhere",
    )
    has(rejected(log.submit(job_spec(nodes=["W999"]), job_id="j2")), "node W999 is not registered")


def test_selector_that_no_node_matches() -> None:
    log = world()
    has(
        rejected(log.submit(job_spec(nodes=["W012"], selector={"gpu": "true"}))),
        "plugin bme680: no node can run it",
        "selector gpu=true does not match",
    )
    has(
        rejected(log.submit(job_spec(nodes=["W012"], selector={"colour": "red"}), job_id="j2")),
        "unknown selector key 'colour'",
    )


def test_zone_selector_matches_the_nodes_zone_core_by_default() -> None:
    """Sage's ``zone`` node label (core, agent, shield...): a hivebus node is one compute
    unit, ``core`` unless its setting ``zone`` says otherwise."""
    log = world()
    out = log.submit(job_spec(nodes=["W012"], selector={"zone": "core"}))
    assert out[0].type == "ses.job.scheduled"
    log.by("operator", NodeConfigUpdated(node="W013", settings={"zone": "agent"}), "W013")
    has(
        rejected(log.submit(job_spec(nodes=["W013"], selector={"zone": "core"}), job_id="j2")),
        "selector zone=core does not match",
    )


def test_a_lost_sensor_does_not_satisfy_a_selector() -> None:
    log = world()
    spec = job_spec(tags=[], nodes=["W012", "W013"], selector={"resource.bme680": "true"})
    log.by("handler/health", SensorLost(node="W012", sensor="bme680", reason="silent"), "W012")
    out = log.submit(spec)
    assert [p.node for p in out[0].data.placements] == ["W013"]


def test_bundle_not_built_for_the_nodes_arch() -> None:
    log = world()
    log.push(app_spec(RAIN, architectures=["linux/amd64"]), "alice")
    log.by("admin", BundleApproved(bundle_id=RAIN, by="admin"), RAIN)
    has(
        rejected(log.submit(job_spec([("rain", RAIN)], nodes=["W012"]))),
        "is built for linux/amd64, the node is linux/arm64",
    )


def test_does_not_fit_the_profiled_cpu() -> None:
    log = world()
    profile(log, BME, cpu_seconds=30.0, wall=10.0, rss=100 * 2**20)  # 3 cores, on a 4-core node
    assert log.submit(job_spec(nodes=["W012"]))[0].type == "ses.job.scheduled"
    reasons = rejected(log.submit(job_spec(nodes=["W012"]), job_id="j2"))
    has(
        reasons,
        "node W012: does not fit: cpu: 3 of 4 cores committed, needs 3 more",
        "profiled on linux/arm64",
    )


def test_does_not_fit_requested_memory_or_gpu() -> None:
    log = world()
    has(
        rejected(log.submit(job_spec(nodes=["W012"], resource={"request.memory": "9Gi"}))),
        "memory: 0Mi of 8.0Gi committed, needs 9.0Gi more",
    )
    has(
        rejected(log.submit(job_spec(nodes=["W012"], resource={"gpu": "1"}), job_id="j2")),
        "gpu: the node has no GPU",
    )
    has(
        rejected(
            log.submit(job_spec(nodes=["W012"], resource={"request.cpu": "lots"}), job_id="j3")
        ),
        "resource request.cpu",
    )


def test_profiled_wall_time_longer_than_the_cron_period() -> None:
    log = world()
    profile(log, BME, cpu_seconds=1.0, wall=400.0, rss=1)
    has(
        rejected(log.submit(job_spec(nodes=["W012"]))),
        "plugin bme680 runs 400 s (profiled on linux/arm64) but is scheduled every 300 s",
    )
    every_ten = job_spec(
        nodes=["W012"], rules=["schedule(bme680): cronjob('bme680', '*/10 * * * *')"]
    )
    assert log.submit(every_ten, job_id="j2")[0].type == "ses.job.scheduled"


def test_bad_rules_are_rejected_with_their_position() -> None:
    log = world()
    spec = job_spec(
        nodes=["W012"],
        rules=[
            "schedule(bme680): v('env.t') >",
            "schedule(other): 1",
            "bme680: cronjob('x', '* * * * *')",
        ],
    )
    reasons = rejected(log.submit(spec))
    assert (
        reasons[0]
        == "scienceRules[0] \"schedule(bme680): v('env.t') >\": at position 30: expected a value, found the end of the rule"
    )
    has(
        reasons,
        "scienceRules[1] 'schedule(other): 1': 'other' is not a plugin of this job",
        "'x' is not a plugin of this job",
    )


def test_unknown_criterion_policy_and_reused_job_id() -> None:
    log = world()
    log.submit(job_spec(nodes=["W012"]))
    reasons = rejected(
        log.submit(job_spec(nodes=["W012"], criteria=["Forever()"]), policy="random")
    )
    has(
        reasons,
        "job id 'j1' is already used",
        "unknown criterion 'Forever'",
        "unknown placement policy 'random'",
    )
    assert (
        log.state("ses").jobs["j1"].state == "Running"
    )  # the rejection did not touch the first job


def test_every_reason_at_once() -> None:
    log = world(approve=False)
    spec = job_spec(
        [("bme680", BME), ("x", "waggle/nothing:1.0.0")],
        nodes=["W012", "W999"],
        rules=["bme680: (", "x: 1"],
        criteria=["Soon()"],
    )
    reasons = rejected(log.submit(spec, user="alice"))
    has(
        reasons,
        "position",
        "unknown criterion",
        "waggle/nothing:1.0.0 is not registered",
        "node W999 is not registered",
        "is not approved",
    )


# --- policies ----------------------------------------------------------------------------------


def test_fit_prefers_the_node_with_most_headroom() -> None:
    log = world(("A", ["t"]), ("B", ["t"]))
    log.heartbeat("A", resources(cpus=2, memory=2 * GiB))
    log.heartbeat("B", resources(cpus=8, memory=16 * GiB))
    out = log.submit(job_spec(tags=["t"]), max_nodes=1)
    assert [(p.node, p.score) for p in out[0].data.placements] == [("B", pytest.approx(98.75))]


def test_score_prefers_the_node_with_the_better_link() -> None:
    log = world(("A", ["t"]), ("B", ["t"]))
    log.heartbeat("A", resources(cpus=8, memory=16 * GiB), backlog_age=600)
    log.heartbeat("B", resources(cpus=4, memory=8 * GiB))
    out = log.submit(job_spec(tags=["t"]), max_nodes=1, policy="score")
    assert out[0].data.policy == "score" and [p.node for p in out[0].data.placements] == ["B"]
    fit = log.submit(job_spec(tags=["t"]), job_id="j2", max_nodes=1)
    assert [p.node for p in fit[0].data.placements] == ["A"]


def test_roundrobin_rotates_through_the_nodes() -> None:
    log = world(("A", ["t"]), ("B", ["t"]), ("C", ["t"]))
    chosen = []
    for i in range(4):
        out = log.submit(job_spec(tags=["t"]), job_id=f"j{i}", max_nodes=1, policy="roundrobin")
        chosen.append(out[0].data.placements[0].node)
    assert chosen == ["A", "B", "C", "A"]


# --- lifecycle ---------------------------------------------------------------------------------


def test_suspend_resume_remove() -> None:
    log = world()
    log.submit(job_spec(nodes=["W012", "W013"]))
    out = log.by("alice", JobSuspended(job_id="j1", by="alice"), "j1")
    assert [(e.type, e.data.node, e.data.reason) for e in out[:-1]] == [
        ("ses.goal.removed", "W012", "suspended"),
        ("ses.goal.removed", "W013", "suspended"),
    ]
    assert (out[-1].type, out[-1].source) == ("ses.job.suspended", "handler/ses")  # the fact
    assert subject_for(out[0]) == "toedge.W012.ses.goal.removed"
    assert log.state("ses").jobs["j1"].state == "Suspended"
    out = log.by("alice", JobResumed(job_id="j1", by="alice"), "j1")
    assert [(e.type, e.data.node) for e in out[:-1]] == [
        ("ses.goal.assigned", "W012"),
        ("ses.goal.assigned", "W013"),
    ]
    assert out[-1].type == "ses.job.resumed"
    assert log.state("ses").jobs["j1"].state == "Running"
    out = log.by("alice", JobRemoved(job_id="j1", by="alice"), "j1")
    assert [e.data.reason for e in out] == ["removed", "removed", ""]
    job = log.state("ses").jobs["j1"]
    assert job.state == "Removed" and job.goals == {}
    log.by("alice", JobResumed(job_id="j1", by="alice"), "j1")
    assert "job j1 is Removed" in log.refused[-1][1]


def test_only_the_owner_or_a_reviewer_manages_a_job() -> None:
    log = world()
    log.submit(job_spec(nodes=["W012"]))
    (rejection,) = log.by("bob", JobSuspended(job_id="j1", by="bob"), "j1")
    assert (rejection.type, rejection.data.by, rejection.data.command) == ("ses.command.rejected", "bob", "ses.suspend")
    assert "bob may not manage job j1 (it is alice's)" in log.refused[-1][1]
    assert log.state("ses").jobs["j1"].state == "Running"
    assert [e.type for e in log.by("admin", JobSuspended(job_id="j1", by="admin"), "j1")] == [
        "ses.goal.removed",
        "ses.job.suspended",
    ]
    log.by("alice", JobRemoved(job_id="nope", by="alice"), "nope")
    assert "job nope does not exist" in log.refused[-1][1]


def test_capacity_is_freed_by_suspension_and_resume_is_refused_when_it_no_longer_fits() -> None:
    log = world()
    profile(log, BME, cpu_seconds=30.0, wall=10.0, rss=1)  # 3 of 4 cores
    log.submit(job_spec(nodes=["W012"]))
    log.by("alice", JobSuspended(job_id="j1", by="alice"), "j1")
    assert log.submit(job_spec(nodes=["W012"]), job_id="j2")[0].type == "ses.job.scheduled"
    assert [e.type for e in log.by("alice", JobResumed(job_id="j1", by="alice"), "j1")] == ["ses.command.rejected"]
    assert "cannot resume job j1: node W012: does not fit" in log.refused[-1][1]
    assert log.state("ses").jobs["j1"].state == "Suspended"


def test_wall_clock_completes_the_job_by_the_hub_clock_with_deterministic_ids() -> None:
    log = world()
    log.submit(job_spec(nodes=["W012"], criteria=["WallClock(1h)"]))

    def ses(events: list[Event]) -> list[Event]:
        return [e for e in events if e.type.startswith("ses.")]  # nodes go offline meanwhile

    assert ses(log.tick(1800)) == []
    out = ses(log.tick(1800))
    assert [e.type for e in out] == ["ses.job.completed", "ses.goal.removed"]
    scheduled = log.of_type("ses.job.scheduled")[0]
    assert out[0].time == scheduled.time + timedelta(hours=1)
    assert out[0].data.criterion == "WallClock(1h)" and out[1].data.reason == "completed"
    assert log.state("ses").jobs["j1"].state == "Completed"
    assert ses(log.tick(10)) == []
    # a scheduler folding the same history later (a restart, a replay) decides the same ids
    history = log.events[: log.events.index(out[0])]
    fresh = Driver(SesHandler())
    for event in history:
        fresh.history(event)
    assert [e.id for e in fresh.tick(log.now + timedelta(days=3))] == [e.id for e in out]


def test_a_hub_event_past_the_deadline_completes_the_job_too() -> None:
    log = world()
    log.submit(job_spec(nodes=["W012"], criteria=["WallClock(1m)"]))
    log.later(120)
    out = log.by("bob", JobRemoved(job_id="other", by="bob"), "other")
    assert [e.type for e in out] == ["ses.job.completed", "ses.goal.removed", "ses.command.rejected"]


def test_an_offline_node_keeps_its_goals() -> None:
    log = world()
    log.submit(job_spec(nodes=["W012", "W013"]))
    out = log.tick(3600)  # no heartbeats: both nodes go offline
    assert [e.type for e in out] == ["node.offline", "node.offline"]
    job = log.state("ses").jobs["j1"]
    assert sorted(job.goals) == ["W012", "W013"]
    assert not log.state("ses").nodes["W012"].online


def test_a_dry_run_decides_without_changing_the_state() -> None:
    log = world()
    state = log.state("ses")
    plan = plan_job(state, JobSubmitted(job_id="dry", user="alice", spec=job_spec(nodes=["W012"])))
    assert plan.accepted and [g.node for g in plan.goals] == ["W012"]
    assert "dry" not in state.jobs and plan.to_json()["decision"] == "scheduled"
    bad = plan_job(state, JobSubmitted(job_id="dry", user="bob", spec=job_spec(nodes=["W012"])))
    assert bad.to_json()["decision"] == "rejected" and "bob has no READ" in bad.reasons[0]


def test_a_submission_that_does_not_decode_is_rejected_with_every_problem() -> None:
    import json

    from hivebus.handlers.ses import salvage_submit
    from hivebus.schemas import codec

    event = Event.new(
        JobSubmitted(job_id="j9", user="alice", spec=job_spec(nodes=["W012"])),
        source="user/alice",
        subject="j9",
    )
    doc = json.loads(codec.encode(event))
    doc["data"]["spec"]["plugins"] = []
    doc["data"]["spec"]["nodes"] = []
    decision = salvage_submit(json.dumps(doc).encode())
    assert decision is not None
    (rejected,) = decision.events
    assert rejected.type == "ses.job.rejected" and rejected.causationid == event.id
    assert rejected.data.job_id == "j9" and any("spec.plugins" in r for r in rejected.data.reasons)
    del doc["data"]["job_id"]
    assert salvage_submit(json.dumps(doc).encode()) is None
