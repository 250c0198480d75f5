"""Node-requested offload decided with no server (issue 20, item 3): the requester is scored
with the others and told to run locally when it scores highest, else the best node runs it."""

from __future__ import annotations

import pytest

from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.ecr import EcrHandler
from hivebus.handlers.health import HealthHandler
from hivebus.handlers.offload import decide, decide_offload
from hivebus.handlers.placement import home_edge_score
from hivebus.handlers.ses import SesHandler
from hivebus.handlers.testing import GiB, Log, app_spec, manifest, resources
from hivebus.schemas.ecr import BundleApproved
from hivebus.schemas.offload import OffloadRequested

BME = "waggle/plugin-bme680:0.2.1"


def world(*nodes: str, approve: bool = True) -> Log:
    cfg = HandlerConfig()
    log = Log([EcrHandler(cfg), SesHandler(cfg), HealthHandler(cfg)])
    log.push(app_spec(BME), "alice")
    if approve:
        log.by("admin", BundleApproved(bundle_id=BME, by="admin"), BME)
    for node in nodes:
        log.register_node(manifest(node))
    return log


def ask(node: str, **resources: str) -> OffloadRequested:
    return OffloadRequested(node=node, request_id="r1", bundle=BME, resources=resources)


def test_a_requester_that_scores_highest_is_told_to_run_locally() -> None:
    log = world("A", "B")
    log.heartbeat("A", resources(cpus=8, memory=16 * GiB, load1=0.1))
    log.heartbeat("B", resources(cpus=2, memory=2 * GiB, load1=1.5))
    decision = decide(log.state("ses"), ask("A", cpu="1", memory="256Mi"))
    assert decision.run_on == "A" and decision.local
    assert set(decision.scores) == {"A", "B"}
    assert decision.scores["A"] > decision.scores["B"]


def test_a_requester_that_scores_lower_sees_the_best_node_run_it() -> None:
    log = world("A", "B", "C")
    log.heartbeat("A", resources(cpus=2, memory=2 * GiB, load1=1.8))
    log.heartbeat("B", resources(cpus=8, memory=16 * GiB, load1=0.1))
    log.heartbeat("C", resources(cpus=4, memory=8 * GiB, load1=0.5), backlog_age=600)
    decision = decide(log.state("ses"), ask("A"))
    assert decision.run_on == "B" and not decision.local
    assert max(decision.scores, key=lambda n: decision.scores[n]) == "B"
    assert set(decision.scores) == {"A", "B", "C"}  # the requester is scored too


def test_a_poor_link_loses_to_a_smaller_node_with_a_good_one() -> None:
    log = world("A", "B")
    log.heartbeat("A", resources(cpus=8, memory=16 * GiB), backlog_age=3600)
    log.heartbeat("B", resources(cpus=4, memory=8 * GiB))
    assert decide(log.state("ses"), ask("A")).run_on == "B"


def test_a_requester_it_does_not_fit_on_is_left_out_with_the_reason() -> None:
    log = world("A", "B")
    log.heartbeat("A", resources(cpus=1, memory=1 * GiB))
    log.heartbeat("B", resources(cpus=8, memory=16 * GiB))
    decision = decide(log.state("ses"), ask("A", cpu="4"))
    assert decision.run_on == "B" and set(decision.scores) == {"B"}
    assert any(r.startswith("node A: does not fit") for r in decision.reasons), decision.reasons


def test_nowhere_to_run_names_why() -> None:
    log = world("A")
    log.heartbeat("A")
    unknown = OffloadRequested(node="A", request_id="r", bundle="waggle/nope:1.0.0")
    decision = decide(log.state("ses"), unknown)
    assert decision.run_on is None and decision.scores == {}
    assert decision.reasons == ["bundle waggle/nope:1.0.0 is not registered in the ECR"]
    unapproved = world("A", approve=False)
    unapproved.heartbeat("A")
    assert "not approved" in decide(unapproved.state("ses"), ask("A")).reasons[0]


def test_a_tie_keeps_it_on_the_requester_and_scores_are_home_edge_scores() -> None:
    log = world("A", "B")
    log.heartbeat("A")
    log.heartbeat("B")
    state = log.state("ses")
    from hivebus.handlers.offload import offload_candidates

    candidates, _ = offload_candidates(state, ask("B"))
    decision = decide_offload(ask("B"), candidates)
    assert decision.scores["A"] == decision.scores["B"]
    assert decision.run_on == "B"  # running locally moves no data
    assert decision.scores == {c.node.id: pytest.approx(home_edge_score(c)) for c in candidates}


def test_the_decision_goes_with_a_one_shot_goal_to_the_chosen_node_only() -> None:
    from hivebus.edge.goals import Goal
    from hivebus.handlers.offload import decide_request
    from hivebus.schemas.envelope import Event
    from hivebus.schemas.ses import GoalAssigned

    log = world("A", "B")
    log.heartbeat("A", resources(cpus=2, memory=2 * GiB, load1=1.8))
    log.heartbeat("B", resources(cpus=8, memory=16 * GiB, load1=0.1))
    request = OffloadRequested(node="A", request_id="r7", bundle=BME, resources={"cpu": "0.5"},
                               entrypoint="python3", args=["-c", "print(1)"])
    asked = Event.new(request, source="node/A", subject="A")
    events = decide_request(log.state("ses"), asked, "handler/ses").events
    assert [e.type for e in events] == ["ses.offload.decided", "ses.goal.assigned"]
    goal = events[1].data
    assert isinstance(goal, GoalAssigned) and goal.node == "B" and goal.job_id == "offload-r7"
    (plugin,) = goal.plugins
    assert plugin.bundle_id == BME and plugin.entrypoint == "python3" and plugin.args == ["-c", "print(1)"]
    assert plugin.resources.cpu == 0.5
    assert Goal.of(events[1]).continuous == []  # scheduled until one run completed, not restarted
    # nobody else may ask for A; nowhere to run: a decision and no goal
    assert decide_request(log.state("ses"), Event.new(request, source="node/B", subject="A"), "handler/ses").events == []
    nowhere = OffloadRequested(node="A", request_id="r8", bundle=BME, resources={"cpu": "64"})
    only = decide_request(log.state("ses"), Event.new(nowhere, source="node/A", subject="A"), "handler/ses").events
    assert [e.type for e in only] == ["ses.offload.decided"] and only[0].data.run_on is None
