"""Placement policies: given the nodes a job fits on, which to prefer.

Every policy sees only candidates that already fit (resources, permissions, selectors), so
no policy can over-commit a node; a policy orders them and may give each a score
(``Placement.score``). With ``max_nodes`` the scheduler takes the first ones, else all.

- ``fit`` (default): most headroom first: the smallest free fraction of cpu and memory left
  once the job is placed, highest first.
- ``score``: the Home Edge orchestration rule: each node gets a score from its resources and
  its link, the highest wins. ``100 * (0.3 cpu + 0.25 mem + 0.15 load + 0.3 link)`` where cpu is
  free cores / 8 and mem free memory / 8 GiB (each capped at 1), load ``1 / (1 + load1/cores)``
  and link 0 for an offline node, else ``1 / (1 + backlog age / 60 s)``: a node still holding
  unsent data has a poor uplink.
- ``roundrobin``: node ids in order, starting after the node the previous round-robin
  placement chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from hivebus.handlers.fit import headroom
from hivebus.handlers.nodes import NodeView, Usage

if TYPE_CHECKING:
    from hivebus.handlers.ses_state import SesState

GiB: Final = 2**30


@dataclass(frozen=True, slots=True)
class Candidate:
    """A node the job fits on, with the plugins it would run there."""

    node: NodeView
    plugins: tuple[str, ...]
    need: Usage
    committed: Usage

    @property
    def headroom(self) -> float:
        return headroom(self.node.capacity, self.committed + self.need)


Ranked = list[tuple[Candidate, float | None]]


class PlacementPolicy(Protocol):
    name: str

    def rank(self, candidates: Sequence[Candidate], state: SesState) -> Ranked: ...


class FitPolicy:
    name = "fit"

    def rank(self, candidates: Sequence[Candidate], state: SesState) -> Ranked:
        scored = [(c, c.headroom) for c in candidates]
        scored.sort(key=lambda pair: (-pair[1], pair[0].node.id))
        return [(c, round(room * 100, 3)) for c, room in scored]


def home_edge_score(candidate: Candidate) -> float:
    node = candidate.node
    capacity = node.capacity
    used = candidate.committed + candidate.need
    cpu = min(1.0, max(0.0, capacity.cpu - used.cpu) / 8)
    mem = min(1.0, max(0, capacity.memory - used.memory) / (8 * GiB))
    resources = node.resources
    load = 1.0 / (1.0 + resources.load1 / resources.cpus) if resources is not None else 1.0
    if not node.online:
        link = 0.0
    else:
        age = node.backlog.oldest_age_seconds or 0.0
        link = 1.0 / (1.0 + age / 60.0)
    return round(100 * (0.3 * cpu + 0.25 * mem + 0.15 * load + 0.3 * link), 3)


class ScorePolicy:
    name = "score"

    def rank(self, candidates: Sequence[Candidate], state: SesState) -> Ranked:
        scored = [(c, home_edge_score(c)) for c in candidates]
        scored.sort(key=lambda pair: (-pair[1], pair[0].node.id))
        return [(c, s) for c, s in scored]


class RoundRobinPolicy:
    name = "roundrobin"

    def rank(self, candidates: Sequence[Candidate], state: SesState) -> Ranked:
        ordered = sorted(candidates, key=lambda c: c.node.id)
        cursor = state.rr_cursor
        if cursor is not None:
            after = [c for c in ordered if c.node.id > cursor]
            ordered = after + [c for c in ordered if c.node.id <= cursor]
        return [(c, None) for c in ordered]


POLICIES: Final[dict[str, PlacementPolicy]] = {
    "fit": FitPolicy(),
    "score": ScorePolicy(),
    "roundrobin": RoundRobinPolicy(),
}
