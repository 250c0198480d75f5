"""Node-requested offload (issue 20, item 3; LF Edge Home Edge's orchestration).

A node (or a plugin on it) asks for one execution of a bundle with its resource needs
(``ses.offload.requested``, published by the node like its heartbeats). The scheduler
scores every capable node *including the requester* and answers ``ses.offload.decided``:
``run_on`` the requester ("run locally") or the best-scoring other node, with every score.
A requester that hears nothing within its timeout runs it itself and says so afterwards
(``ses.offload.ran_locally``). The score: ``hivebus.handlers.offload`` and docs/offload.md.
"""

from __future__ import annotations

from pydantic import Field

from hivebus.schemas.ecr import BundleId
from hivebus.schemas.envelope import Payload
from hivebus.schemas.fields import STRICT, Key, NodeId, NonNegFloat
from hivebus.schemas.registry import event


@event("ses.offload.requested")
class OffloadRequested(Payload):
    """``node`` asks where one execution of ``bundle`` should run."""

    model_config = STRICT

    node: NodeId
    request_id: Key
    bundle: BundleId
    resources: dict[str, str] = Field(default_factory=dict)
    """The execution's needs, as a job's plugin resources: ``{"cpu": "1", "memory": "512Mi"}``."""


@event("ses.offload.decided", route="toedge")
class OffloadDecided(Payload):
    """Where the requested execution runs: ``run_on == node`` means "run locally".

    To-edge, to the requester: it arrives on ``toedge.<node>.ses.offload.decided`` (and in
    the node's durable to-edge consumer)."""

    model_config = STRICT

    node: NodeId
    request_id: Key
    bundle: BundleId
    run_on: NodeId | None = None
    """``None``: no node can run it (``reasons`` say why)."""
    scores: dict[NodeId, NonNegFloat] = Field(default_factory=dict)
    """Every capable node's score, the requester's included."""
    reasons: list[str] = Field(default_factory=list)
    """Why the nodes left out could not run it."""

    @property
    def local(self) -> bool:
        return self.run_on == self.node


@event("ses.offload.ran_locally")
class OffloadRanLocally(Payload):
    """The requester ran it itself without a decision (the hub did not answer in time)."""

    model_config = STRICT

    node: NodeId
    request_id: Key
    bundle: BundleId
    reason: str = ""
