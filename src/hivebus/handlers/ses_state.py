"""The scheduler's state: the ECR catalog, the nodes, the jobs and the goals they hold.

The fold is written to give the same state whatever the interleaving of a user's request
and the scheduler's answer to an earlier one (live, the scheduler folds its answers the
moment it decides; a replay folds them where they sit in the log, possibly after a later
request). So job states follow these rules:

- ``ses.job.scheduled`` carrying the submission creates the job, running (the scheduler
  decided the ``ses.submit`` command); in logs written before commands existed a user's
  ``ses.job.submitted`` request creates it pending and the ``ses.job.scheduled`` that answers
  it (causation id) runs it, while the ``ses.job.rejected`` that answers it removes it (a
  refused request leaves no job);
- a suspend/resume/remove applies when the scheduler decided it (``source`` ``handler/...``);
  users' requests of those types change nothing (the scheduler decides them as commands);
  a resume becomes effective with the goals it re-sends;
- goals (``ses.goal.assigned``/``removed``) are what holds node resources, so capacity is
  always the sum of the goals currently held, whatever the job's label says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import singledispatch

from hivebus.handlers.catalog import Catalog
from hivebus.handlers.catalog import evolve as evolve_catalog
from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.nodes import NodeView
from hivebus.schemas.commands import is_decided
from hivebus.schemas.envelope import Event, Payload
from hivebus.schemas.node import (
    NodeConfigUpdated,
    NodeHeartbeat,
    NodeOffline,
    NodeOnline,
    NodeRegistered,
    SensorLost,
    SensorRestored,
)
from hivebus.schemas.ses import (
    GoalAssigned,
    GoalRemoved,
    JobCompleted,
    JobRejected,
    JobRemoved,
    JobResumed,
    JobScheduled,
    JobSpec,
    JobState,
    JobSubmitted,
    JobSuspended,
    Placement,
)

REJECTED = "Rejected"
"""A job the scheduler refused (not one of Sage's job states, but a job can end so)."""


@dataclass(slots=True)
class JobView:
    id: str
    user: str
    spec: JobSpec
    submission_id: str
    """The id of the command (or old request) that submitted it: its answers' causation id."""
    policy: str | None = None
    max_nodes: int | None = None
    state: str = JobState.SUBMITTED
    placements: list[Placement] = field(default_factory=list)
    scheduled: Event | None = None
    """The ``ses.job.scheduled`` event: completion events derive their ids from it."""
    deadline: datetime | None = None
    goals: dict[str, GoalAssigned] = field(default_factory=dict)
    """Goals the nodes hold now (what counts against their resources)."""
    planned: dict[str, GoalAssigned] = field(default_factory=dict)
    """The last goal sent to each node, kept across a suspension so a resume can re-send it."""
    reasons: list[str] = field(default_factory=list)

    @property
    def nodes(self) -> list[str]:
        return sorted({p.node for p in self.placements})


@dataclass(slots=True)
class SesState:
    config: HandlerConfig
    catalog: Catalog
    nodes: dict[str, NodeView] = field(default_factory=dict)
    jobs: dict[str, JobView] = field(default_factory=dict)
    node_goals: dict[str, dict[str, GoalAssigned]] = field(default_factory=dict)
    """Goals each node holds now, by job id (an index of ``JobView.goals``)."""
    rr_cursor: str | None = None
    """The last node a round-robin placement chose; the next starts after it."""
    clock: datetime | None = None
    """The latest time of a hub event (users, handlers): node clocks are not trusted."""

    @classmethod
    def empty(cls, config: HandlerConfig | None = None) -> SesState:
        config = config or HandlerConfig()
        return cls(config=config, catalog=Catalog(config))

    def node(self, node_id: str) -> NodeView:
        view = self.nodes.get(node_id)
        if view is None:
            view = self.nodes[node_id] = NodeView(node_id)
        return view

    def may_manage(self, user: str, job: JobView) -> bool:
        return user == job.user or self.catalog.is_reviewer(user)

    def goals_on(self, node_id: str) -> list[GoalAssigned]:
        return list(self.node_goals.get(node_id, {}).values())


def lifecycle_problem(state: SesState, data: JobSuspended | JobResumed | JobRemoved) -> str | None:
    """Why a suspend/resume/remove request does not apply, or None."""
    job = state.jobs.get(data.job_id)
    if job is None:
        return f"job {data.job_id} does not exist"
    if not state.may_manage(data.by, job):
        return f"{data.by} may not manage job {job.id} (it is {job.user}'s)"
    allowed = {
        JobSuspended: {JobState.SUBMITTED, JobState.RUNNING},
        JobResumed: {JobState.SUSPENDED},
        JobRemoved: {JobState.SUBMITTED, JobState.RUNNING, JobState.SUSPENDED},
    }[type(data)]
    if job.state not in allowed:
        return f"job {job.id} is {job.state}"
    return None


def evolve(state: SesState, event: Event) -> None:
    if not event.source.startswith("node/") and (state.clock is None or event.time > state.clock):
        state.clock = event.time
    if event.type.startswith(("ecr.", "auth.")) or event.type == "node.registered":
        evolve_catalog(state.catalog, event)
    apply(event.data, state, event)


@singledispatch
def apply(data: Payload, state: SesState, event: Event) -> None:
    """Events the scheduler does not track change nothing."""


@apply.register
def _registered(data: NodeRegistered, state: SesState, event: Event) -> None:
    state.node(data.manifest.node_id).manifest = data.manifest


@apply.register
def _heartbeat(data: NodeHeartbeat, state: SesState, event: Event) -> None:
    node = state.node(data.node)
    node.resources = data.resources
    node.backlog = data.backlog
    node.last_heartbeat = event.time


@apply.register
def _online(data: NodeOnline, state: SesState, event: Event) -> None:
    state.node(data.node).online = True


@apply.register
def _offline(data: NodeOffline, state: SesState, event: Event) -> None:
    state.node(data.node).online = False


@apply.register
def _sensor_lost(data: SensorLost, state: SesState, event: Event) -> None:
    if not event.source.startswith("node/"):  # the health handler's confirmed transitions
        state.node(data.node).lost_sensors.add(data.sensor)


@apply.register
def _sensor_restored(data: SensorRestored, state: SesState, event: Event) -> None:
    if not event.source.startswith("node/"):
        state.node(data.node).lost_sensors.discard(data.sensor)


@apply.register
def _config(data: NodeConfigUpdated, state: SesState, event: Event) -> None:
    node = state.node(data.node)
    if data.tags is not None:
        node.tags_override = list(data.tags)
    node.settings.update(data.settings)


@apply.register
def _submitted(data: JobSubmitted, state: SesState, event: Event) -> None:
    """A submission request of an old log: pending until its answer is folded."""
    if not is_decided(event) and data.job_id not in state.jobs:
        state.jobs[data.job_id] = JobView(
            id=data.job_id,
            user=data.user,
            spec=data.spec,
            submission_id=event.id,
            policy=data.policy,
            max_nodes=data.max_nodes,
        )


def _answered(state: SesState, job_id: str, event: Event) -> JobView | None:
    job = state.jobs.get(job_id)
    if job is None or job.submission_id != event.causationid:
        return None
    return job


@apply.register
def _scheduled(data: JobScheduled, state: SesState, event: Event) -> None:
    if data.spec is not None and data.user is not None and data.job_id not in state.jobs:
        state.jobs[data.job_id] = JobView(
            id=data.job_id,
            user=data.user,
            spec=data.spec,
            submission_id=event.causationid or event.id,
            policy=data.policy,
            max_nodes=data.max_nodes,
        )
    job = _answered(state, data.job_id, event)
    if job is None:
        return
    job.placements = list(data.placements)
    job.scheduled = event
    from hivebus.handlers.criteria import wall_clock

    duration = wall_clock(job.spec.success_criteria)
    job.deadline = event.time + timedelta(seconds=duration) if duration is not None else None
    if job.state == JobState.SUBMITTED:
        job.state = JobState.RUNNING
    if data.policy == "roundrobin" and data.placements:
        state.rr_cursor = data.placements[-1].node


@apply.register
def _rejected(data: JobRejected, state: SesState, event: Event) -> None:
    if _answered(state, data.job_id, event) is not None:
        del state.jobs[data.job_id]  # a refused submission leaves no job


@apply.register
def _suspended(data: JobSuspended, state: SesState, event: Event) -> None:
    job = state.jobs.get(data.job_id)
    if is_decided(event) and job is not None:
        job.state = JobState.SUSPENDED


@apply.register
def _resumed(data: JobResumed, state: SesState, event: Event) -> None:
    """A resume takes effect with the goals it re-sends (see ``_goal_assigned``)."""


@apply.register
def _removed(data: JobRemoved, state: SesState, event: Event) -> None:
    job = state.jobs.get(data.job_id)
    if is_decided(event) and job is not None:
        job.state = JobState.REMOVED


@apply.register
def _completed(data: JobCompleted, state: SesState, event: Event) -> None:
    job = state.jobs.get(data.job_id)
    if job is not None and job.state in (JobState.RUNNING, JobState.SUBMITTED):
        job.state = JobState.COMPLETED


@apply.register
def _goal_assigned(data: GoalAssigned, state: SesState, event: Event) -> None:
    job = state.jobs.get(data.job_id)
    if job is None:
        return
    job.goals[data.node] = data
    job.planned[data.node] = data
    state.node_goals.setdefault(data.node, {})[job.id] = data
    if (
        job.state == JobState.SUSPENDED
        and job.scheduled is not None
        and event.causationid != job.submission_id
    ):
        job.state = JobState.RUNNING  # a resume's goals


@apply.register
def _goal_removed(data: GoalRemoved, state: SesState, event: Event) -> None:
    job = state.jobs.get(data.job_id)
    if job is not None:
        job.goals.pop(data.node, None)
        state.node_goals.get(data.node, {}).pop(job.id, None)
