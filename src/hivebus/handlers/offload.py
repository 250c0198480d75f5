"""Node-requested offload, decided (issue 20, item 3; LF Edge Home Edge's orchestration).

A node asks where one execution of a bundle should run (``ses.offload.requested``). Every
registered node that can run it is a candidate, **the requester included**: the bundle is
registered and built for the node's architecture, unapproved bundles only on virtual nodes,
and the execution's needs fit beside the goals the node already holds (``handlers.fit``).
Each candidate gets the Home Edge score (``placement.home_edge_score``)::

    score = 100 * (0.30 cpu + 0.25 memory + 0.15 load + 0.30 network)

with cpu = free cores after placing it / 8, memory = free memory after placing it / 8 GiB
(each capped at 1), load = 1 / (1 + load1 / cores) from the node's last heartbeat, and
network = 0 for an offline node, else 1 / (1 + age of its oldest unsent event / 60 s).
Home Edge scores a device from the same four inputs (cpu, memory, network bandwidth/RTT,
load); hivebus reads the network from what the node's outbox has not sent yet, which is
what moving work to a node over that link would suffer.

The highest score runs it; on a tie the requester keeps it (running locally moves no data),
then the lowest node id. ``run_on == node`` is "run locally". The decision carries every
candidate's score and why the other nodes were left out; with it goes the one-shot goal
(``schemas.offload.offload_goal``, job ``offload-<request_id>``) to the chosen node, so the
execution starts there -- the requester's own node for "run locally". Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence

from hivebus.handlers.base import Decision, Outputs
from hivebus.handlers.fit import Demands, over, parse_request
from hivebus.handlers.nodes import NodeView
from hivebus.handlers.placement import Candidate, home_edge_score
from hivebus.handlers.ses_state import SesState
from hivebus.schemas.envelope import Event
from hivebus.schemas.offload import OffloadDecided, OffloadRequested, offload_goal


def offload_candidates(
    state: SesState, request: OffloadRequested
) -> tuple[list[Candidate], list[str]]:
    """The nodes that can run the requested execution, and why each other one cannot."""
    from hivebus.handlers.ses import committed  # ses wires this module: import late

    reasons: list[str] = []
    wanted, problems = parse_request(request.resources)
    if problems:
        return [], [f"resources: {p}" for p in problems]
    bundle = state.catalog.live(request.bundle)
    if bundle is None:
        return [], [f"bundle {request.bundle} is not registered in the ECR"]
    arches = list(bundle.app.source.architectures)
    memo = Demands(state.catalog)
    candidates: list[Candidate] = []
    for node_id, node in sorted(state.nodes.items()):
        if not node.registered:
            continue
        why = _unfit(node, arches, bundle.approved)
        if why is None:
            need = memo(request.bundle, wanted, node).usage
            load = committed(state, node, demands=memo)
            over_by = over(node.capacity, load, need)
            if over_by:
                why = f"does not fit: {'; '.join(over_by)}"
            else:
                candidates.append(Candidate(node, (request.bundle,), need, load))
                continue
        reasons.append(f"node {node_id}: {why}")
    return candidates, reasons


def _unfit(node: NodeView, arches: list[str], approved: bool) -> str | None:
    if node.arch not in arches:
        return f"the bundle is built for {', '.join(arches)}, the node is {node.arch}"
    if not approved and not node.virtual:
        return "the bundle is not approved (unapproved bundles run only on nodes tagged 'virtual')"
    return None


def decide_offload(
    request: OffloadRequested, candidates: Sequence[Candidate], reasons: Sequence[str] = ()
) -> OffloadDecided:
    """Where the execution runs: the best Home Edge score, the requester on a tie."""
    scores = {c.node.id: home_edge_score(c) for c in candidates}
    run_on = None
    if scores:
        run_on = min(scores, key=lambda n: (-scores[n], n != request.node, n))
    out_reasons = list(reasons)
    if run_on is None and not out_reasons:
        out_reasons.append("no registered node can run it")
    return OffloadDecided(
        node=request.node,
        request_id=request.request_id,
        bundle=request.bundle,
        run_on=run_on,
        scores=scores,
        reasons=out_reasons,
    )


def decide(state: SesState, request: OffloadRequested) -> OffloadDecided:
    """The decision for ``request`` on ``state`` (which it does not change)."""
    candidates, reasons = offload_candidates(state, request)
    return decide_offload(request, candidates, reasons)


def decide_request(state: SesState, event: Event, source: str) -> Decision:
    """The scheduler's answer to a node's ``ses.offload.requested``: one decided fact, to-edge.

    Only the requester itself may ask for itself (``source`` ``node/<node>``); anything else
    is ignored, as a node's other facts about another node are."""
    request = event.data
    assert isinstance(request, OffloadRequested)
    if event.source != f"node/{request.node}":
        return Decision()
    out = Outputs(event, source)
    decided = decide(state, request)
    out.emit(decided, request.node)
    if decided.run_on is not None:
        # the chosen node (the requester itself for "run locally") gets a one-shot goal
        # through the normal to-edge path, so the execution starts there
        wanted, _ = parse_request(request.resources)  # checked by offload_candidates
        goal = offload_goal(decided.run_on, request, wanted)
        out.emit(goal, goal.job_id)
    return out.decision()
