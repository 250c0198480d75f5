"""What-if placement over a recorded history, with no server: the scheduler's own decider
under another policy, folded as a second history beside the recorded one."""

from __future__ import annotations

from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.ecr import EcrHandler
from hivebus.handlers.health import HealthHandler
from hivebus.handlers.ses import SesHandler
from hivebus.handlers.testing import GiB, Log, app_spec, job_spec, manifest, resources
from hivebus.replay.whatif import WhatIf
from hivebus.schemas.ecr import BundleApproved
from hivebus.schemas.ses import JobRemoved

BME = "waggle/plugin-bme680:0.2.1"


def contested_history() -> Log:
    """Recorded with the ``fit`` policy. W001 is big but busy with a stale uplink, W002 small,
    idle, well linked: ``fit`` puts job ``big`` on W001 (headroom), ``score`` on W002 (Home
    Edge score); then ``pinned`` asks for 3 cores on W002, which fits only if ``big`` is not
    there."""
    cfg = HandlerConfig()
    log = Log([EcrHandler(cfg), SesHandler(cfg), HealthHandler(cfg)])
    log.push(app_spec(BME), "alice")
    log.by("admin", BundleApproved(bundle_id=BME, by="admin"), BME)
    log.register_node(manifest("W001", tags=["t"], cpus=8, memory=16 * GiB))
    log.heartbeat("W001", resources(8, 16 * GiB, load1=8.0), backlog_age=600)
    log.register_node(manifest("W002", tags=["t"], cpus=4, memory=8 * GiB))
    log.heartbeat("W002", resources(4, 8 * GiB, load1=0.2))
    three_cores = {"request.cpu": "3"}
    log.submit(job_spec(tags=["t"], resource=three_cores), job_id="big", max_nodes=1)
    log.submit(job_spec(nodes=["W002"], resource=three_cores), job_id="pinned")
    return log


def what_if(log: Log, policy: str) -> WhatIf:
    engine = WhatIf(policy)
    for seq, event in enumerate(log.events, start=1):
        engine.feed(seq, event)
    return engine


def test_the_recorded_history_is_what_fit_decided() -> None:
    log = contested_history()
    scheduled = {e.data.job_id: [p.node for p in e.data.placements] for e in log.of_type("ses.job.scheduled")}
    assert scheduled == {"big": ["W001"], "pinned": ["W002"]}


def test_the_same_policy_reproduces_every_recorded_decision() -> None:
    engine = what_if(contested_history(), "fit")
    rows = engine.rows()
    assert [r.job_id for r in rows] == ["big", "pinned"]
    assert not any(r.differs for r in rows), [(r.actual, r.whatif) for r in rows]
    summary = engine.summary()
    assert (summary.submissions, summary.differ, summary.caused, summary.avoided) == (2, 0, 0, 0)


def test_score_places_big_elsewhere_and_so_causes_a_fit_rejection() -> None:
    engine = what_if(contested_history(), "score")
    big, pinned = engine.rows()
    assert big.actual.nodes == {"W001": ["bme680"]} and big.actual.policy == "fit"
    assert big.whatif.nodes == {"W002": ["bme680"]} and big.whatif.policy == "score"
    assert big.whatif.scores["W002"] is not None
    assert pinned.actual.decision == "scheduled"
    assert pinned.whatif.decision == "rejected" and pinned.whatif.fit_refused
    assert any("W002" in r and "cpu" in r for r in pinned.whatif.reasons), pinned.whatif.reasons
    summary = engine.summary()
    assert (summary.differ, summary.caused, summary.avoided) == (2, 1, 0)
    loads = {(x.node, x.world): x for x in engine.loads()}
    assert loads["W001", "actual"].cpu == 3 and loads["W002", "actual"].cpu == 3
    assert loads["W001", "whatif"].cpu == 0 and loads["W002", "whatif"].cpu == 3
    assert loads["W002", "whatif"].placements == 1 and loads["W001", "whatif"].placements == 0


def test_the_recorded_states_are_left_as_recorded() -> None:
    log = contested_history()
    live = log.state("ses")
    engine = what_if(log, "score")
    assert {n: sorted(g) for n, g in engine.actual.node_goals.items()} == {
        n: sorted(g) for n, g in live.node_goals.items()
    }


def test_a_removal_in_the_log_frees_the_whatif_placement_too() -> None:
    log = contested_history()
    log.by("alice", JobRemoved(job_id="big", by="alice"), "big")
    log.submit(job_spec(nodes=["W002"], resource={"request.cpu": "3"}), job_id="again")
    engine = what_if(log, "score")
    rows = {r.job_id: r for r in engine.rows()}
    assert rows["pinned"].whatif.decision == "rejected"
    # big removed: its what-if goal on W002 is gone, so "again" fits there in both worlds
    assert rows["again"].whatif.nodes == {"W002": ["bme680"]}
    assert rows["again"].actual.decision == "rejected" and rows["again"].actual.fit_refused
    assert engine.summary().avoided == 1


def test_an_unknown_policy_is_refused_by_name() -> None:
    import pytest

    from hivebus.errors import ProjectionError

    with pytest.raises(ProjectionError, match="unknown placement policy 'best'"):
        WhatIf("best")
