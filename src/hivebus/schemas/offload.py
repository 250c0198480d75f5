"""Node-requested offload (issue 20, item 3; LF Edge Home Edge's orchestration).

A node (or a plugin on it) asks for one execution of a bundle with its resource needs
(``ses.offload.requested``, published by the node like its heartbeats). The scheduler
scores every capable node *including the requester* and answers ``ses.offload.decided``:
``run_on`` the requester ("run locally") or the best-scoring other node, with every score.
A requester that hears nothing within its timeout runs it itself and says so afterwards
(``ses.offload.ran_locally``). The score: ``hivebus.handlers.offload`` and docs/offload.md.
"""

from __future__ import annotations

import re
from typing import Final

from pydantic import Field

from hivebus.schemas.ecr import BundleId, parse_bundle_id
from hivebus.schemas.envelope import Payload
from hivebus.schemas.fields import STRICT, Key, NodeId, NonNegFloat
from hivebus.schemas.registry import event
from hivebus.schemas.ses import GoalAssigned, GoalPlugin, ResourceRequest, image_for_bundle

OFFLOAD_JOB: Final = "offload-"
"""The job id of an offloaded execution's goal: ``offload-<request_id>`` (no job of a user)."""


@event("ses.offload.requested")
class OffloadRequested(Payload):
    """``node`` asks where one execution of ``bundle`` should run."""

    model_config = STRICT

    node: NodeId
    request_id: Key
    bundle: BundleId
    resources: dict[str, str] = Field(default_factory=dict)
    """The execution's needs, as a job's plugin resources: ``{"cpu": "1", "memory": "512Mi"}``."""
    entrypoint: str | None = None
    """How to start it, as a job's ``pluginSpec`` (None: the bundle's own)."""
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)


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


def offload_job_id(request_id: str) -> str:
    return f"{OFFLOAD_JOB}{request_id}"[:128]


def offload_plugin_name(bundle: str) -> str:
    """The plugin's name in the goal: the bundle's name as Sage's scheduler takes names."""
    _, name, _ = parse_bundle_id(bundle)
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63] or "offload"


def offload_goal(run_on: str, request: OffloadRequested, resources: ResourceRequest) -> GoalAssigned:
    """The one-shot goal that runs the requested execution on ``run_on``: its one plugin is
    scheduled until a run of it completed (``not after(...)``, read on the node's own clock),
    then the goal stays idle. The scheduler sends it to the chosen node through the normal
    to-edge path; a requester that heard nothing from the hub runs the same goal itself."""
    name = offload_plugin_name(request.bundle)
    plugin = GoalPlugin(
        name=name,
        bundle_id=request.bundle,
        image=image_for_bundle(request.bundle),
        entrypoint=request.entrypoint,
        args=list(request.args),
        env=dict(request.env),
        resources=resources,
    )
    return GoalAssigned(
        node=run_on,
        job_id=offload_job_id(request.request_id),
        plugins=[plugin],
        science_rules=[f"schedule({name}): not after('{name}')"],
    )
