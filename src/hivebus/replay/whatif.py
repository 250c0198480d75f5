"""What-if placement: the recorded history decided again by another policy (pure).

Two scheduler states are folded side by side from the same log. ``actual`` folds every event
as recorded: what happened. ``alt`` folds the same inputs (nodes and their heartbeats,
bundles and their profiles, users' lifecycle decisions) but answers every job submission
itself, with the scheduler's own decider (``plan_job``) under ``policy``, and folds those
answers instead of the recorded ones. So a later submission meets the goals the what-if
placed, not the recorded ones: the comparison is of two histories, not of single decisions.

A submission is found in either shape the log holds: a user's ``ses.job.submitted`` request
(logs written before commands existed, answered later by ``causationid``), a decided
``ses.job.scheduled`` that carries its submission, or a ``ses.command.rejected`` of
``ses.submit`` that carries what was asked. What the scheduler did to a job afterwards is
mirrored onto the what-if job, whatever nodes it sits on there: goals removed (suspend,
remove, completion) remove all its what-if goals; goals re-sent for a resume re-send its
what-if goals. Jobs only the what-if accepted complete by their ``WallClock`` like the real
scheduler's (``due_completions``).

Nothing is published: ``feed`` returns nothing, the events it builds live only in ``alt``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from pydantic import ValidationError

from hivebus.errors import ProjectionError
from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.fit import over
from hivebus.handlers.nodes import Usage
from hivebus.handlers.placement import POLICIES
from hivebus.handlers.ses import SOURCE, Plan, committed, due_completions, plan_job
from hivebus.handlers.ses_state import SesState, evolve
from hivebus.schemas.envelope import Event, Payload
from hivebus.schemas.ses import (
    GoalAssigned,
    GoalRemoved,
    JobRejected,
    JobScheduled,
    JobSubmitted,
)

COMMAND_REJECTED: Final = "ses.command.rejected"
"""A refused user command: ``command``, ``by``, ``job_id``, ``reasons``, ``data`` (what was asked)."""


_NOTHING: Final = Usage()


@dataclass(slots=True)
class Outcome:
    """One world's answer to one submission."""

    decision: str = "unanswered"
    """``scheduled``, ``rejected`` or ``unanswered`` (no answer in the log yet)."""
    policy: str | None = None
    nodes: dict[str, list[str]] = field(default_factory=dict)
    """Node -> the plugins placed there."""
    scores: dict[str, float | None] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def fit_refused(self) -> bool:
        """Rejected because no node had room (as opposed to bad input or permissions)."""
        return self.decision == "rejected" and any("does not fit" in r for r in self.reasons)

    def placed(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return tuple(sorted((n, tuple(sorted(p))) for n, p in self.nodes.items()))


@dataclass(slots=True)
class Compared:
    """A submission, what happened to it and what the what-if policy decided."""

    seq: int
    time: datetime
    job_id: str
    user: str
    submission_id: str
    actual: Outcome
    whatif: Outcome

    @property
    def differs(self) -> bool:
        return (
            self.actual.decision != self.whatif.decision
            or self.actual.placed() != self.whatif.placed()
        )


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """What one node held at the end of the window in one world."""

    node: str
    world: str
    """``actual`` or ``whatif``."""
    placements: int
    """Placements on it in the window."""
    goals: int
    cpu: float
    memory: int
    capacity_cpu: float
    capacity_memory: int
    over: list[str]
    """Resources its goals exceed by the latest profiles (a fit violation), if any."""


@dataclass(slots=True)
class Summary:
    policy: str
    events: int = 0
    submissions: int = 0
    differ: int = 0
    fit_rejections_actual: int = 0
    fit_rejections_whatif: int = 0
    avoided: int = 0
    """Refused for lack of room in fact, placed by the what-if."""
    caused: int = 0
    """Placed in fact, refused for lack of room by the what-if."""
    overcommitted_actual: int = 0
    overcommitted_whatif: int = 0


class WhatIf:
    """Feed it the EVENTS stream in order; ``decisions``/``loads``/``summary`` afterwards."""

    def __init__(self, policy: str, config: HandlerConfig | None = None) -> None:
        if policy not in POLICIES:
            raise ProjectionError(
                f"unknown placement policy {policy!r}", hint=f"one of {', '.join(POLICIES)}"
            )
        self.policy = policy
        self.actual = SesState.empty(config)
        self.alt = SesState.empty(config)
        self.decisions: dict[str, Compared] = {}
        """By submission id, in log order."""
        self.events = 0
        self._placed: dict[str, Counter[str]] = {"actual": Counter(), "whatif": Counter()}
        self._mirrored: set[tuple[str, str]] = set()
        self._next_deadline_check: datetime | None = None
        self._pending_alt: tuple[JobSubmitted, Plan, str] | None = None

    # --- feeding -------------------------------------------------------------------------

    def feed(self, seq: int, event: Event, *, in_window: bool = True) -> None:
        """Fold one recorded event; inside the window, re-decide the submissions it makes."""
        self.events += 1
        if not in_window:
            evolve(self.actual, event)
            evolve(self.alt, event)
            return
        self._complete_due(event)
        submission = submission_of(event)
        if submission is not None and submission[1] in self.decisions:
            submission = None  # the answer to a request already decided (it carries it again)
        if submission is not None:
            submitted, submission_id = submission
            self._decide(seq, event, submitted, submission_id)
        self._record_actual(event)
        ours = event.source == SOURCE and (
            isinstance(event.data, JobScheduled | JobRejected | GoalAssigned | GoalRemoved)
            or event.type == COMMAND_REJECTED
        )
        if ours:
            self._mirror(event)
        evolve(self.actual, event)
        if not ours:
            evolve(self.alt, event)
            if submission is not None and event.type == JobSubmitted.event_type:
                self._answer_alt(event, submission_id=event.id)

    def _decide(self, seq: int, event: Event, submitted: JobSubmitted, submission_id: str) -> None:
        asked = submitted.model_copy(update={"policy": self.policy})
        plan = plan_job(self.alt, asked)
        whatif = Outcome(policy=plan.policy)
        if plan.accepted:
            whatif.decision = "scheduled"
            for p in plan.placements:
                whatif.nodes.setdefault(p.node, []).append(p.plugin)
                whatif.scores[p.node] = p.score
            for node in whatif.nodes:
                self._placed["whatif"][node] += 1
        else:
            whatif.decision = "rejected"
            whatif.reasons = list(plan.reasons)
        self.decisions[submission_id] = Compared(
            seq=seq, time=event.time, job_id=submitted.job_id, user=submitted.user,
            submission_id=submission_id, actual=Outcome(), whatif=whatif,
        )
        self._pending_alt = (submitted, plan, submission_id)
        if event.type != JobSubmitted.event_type:  # a decided fact: answer at once
            self._answer_alt(event, submission_id=submission_id)

    def _answer_alt(self, cause: Event, *, submission_id: str) -> None:
        """Fold the what-if's answer to the submission just decided into ``alt``."""
        if self._pending_alt is None or self._pending_alt[2] != submission_id:
            return
        submitted, plan, _ = self._pending_alt
        self._pending_alt = None
        payloads: list[Payload]
        if plan.accepted:
            payloads = [
                _scheduled(submitted, plan),
                *plan.goals,
            ]
        elif cause.type == JobSubmitted.event_type:  # an old request left a pending job
            payloads = [JobRejected(job_id=submitted.job_id, reasons=plan.reasons)]
        else:
            payloads = []
        for payload in payloads:
            self._fold_alt(payload, subject=submitted.job_id, cause_id=submission_id, when=cause.time)

    def _record_actual(self, event: Event) -> None:
        data = event.data
        if event.source != SOURCE:
            return
        if isinstance(data, JobScheduled):
            row = self.decisions.get(event.causationid or "")
            if row is None:
                return
            row.actual = Outcome(decision="scheduled", policy=data.policy)
            for p in data.placements:
                row.actual.nodes.setdefault(p.node, []).append(p.plugin)
                row.actual.scores[p.node] = p.score
            for node in row.actual.nodes:
                self._placed["actual"][node] += 1
        elif isinstance(data, JobRejected) or event.type == COMMAND_REJECTED:
            row = self.decisions.get(event.causationid or "")
            if row is not None:
                row.actual = Outcome(decision="rejected", reasons=list(data.reasons))

    def _mirror(self, event: Event) -> None:
        """Apply to the what-if job what the scheduler did to the real one afterwards."""
        data = event.data
        if not isinstance(data, GoalAssigned | GoalRemoved):
            return
        real = self.actual.jobs.get(data.job_id)
        cause = event.causationid or event.id
        if real is None or cause == real.submission_id:
            return  # a submission's own goals: the what-if placed its own
        key = (data.job_id, cause)
        if key in self._mirrored:
            return
        self._mirrored.add(key)
        job = self.alt.jobs.get(data.job_id)
        if job is None:
            return
        if isinstance(data, GoalRemoved):
            for node in sorted(job.goals):
                removed = GoalRemoved(node=node, job_id=job.id, reason=data.reason)
                self._fold_alt(removed, subject=job.id, cause_id=cause, when=event.time)
        else:
            for _, goal in sorted(job.planned.items()):
                self._fold_alt(goal, subject=job.id, cause_id=cause, when=event.time)

    def _complete_due(self, event: Event) -> None:
        """Jobs the what-if alone placed complete by their WallClock too."""
        now = self.alt.clock
        if now is None or (self._next_deadline_check is not None and now < self._next_deadline_check):
            return
        for done in due_completions(self.alt, now):
            evolve(self.alt, done)
        deadlines = [j.deadline for j in self.alt.jobs.values() if j.deadline is not None and j.deadline > now]
        self._next_deadline_check = min(deadlines) if deadlines else None

    def _fold_alt(self, payload: Payload, *, subject: str, cause_id: str, when: datetime) -> None:
        evolve(
            self.alt,
            Event.new(payload, source=SOURCE, subject=subject, time=when, causationid=cause_id),
        )

    # --- results -------------------------------------------------------------------------

    def rows(self) -> list[Compared]:
        return list(self.decisions.values())

    def loads(self) -> list[NodeLoad]:
        loads = []
        for world, state in (("actual", self.actual), ("whatif", self.alt)):
            for node_id, node in sorted(state.nodes.items()):
                if not node.registered:
                    continue
                held = committed(state, node)
                capacity = node.capacity
                loads.append(
                    NodeLoad(
                        node=node_id, world=world, placements=self._placed[world][node_id],
                        goals=len(state.node_goals.get(node_id, {})), cpu=round(held.cpu, 6),
                        memory=held.memory, capacity_cpu=capacity.cpu,
                        capacity_memory=capacity.memory, over=over(capacity, held, _NOTHING),
                    )
                )
        return loads

    def summary(self) -> Summary:
        summary = Summary(policy=self.policy, events=self.events)
        for row in self.rows():
            summary.submissions += 1
            summary.differ += row.differs
            summary.fit_rejections_actual += row.actual.fit_refused
            summary.fit_rejections_whatif += row.whatif.fit_refused
            summary.avoided += row.actual.fit_refused and row.whatif.decision == "scheduled"
            summary.caused += row.whatif.fit_refused and row.actual.decision == "scheduled"
        for load in self.loads():
            if load.over:
                if load.world == "actual":
                    summary.overcommitted_actual += 1
                else:
                    summary.overcommitted_whatif += 1
        return summary


def _scheduled(submitted: JobSubmitted, plan: Plan) -> JobScheduled:
    """The what-if's ``ses.job.scheduled``, carrying its submission where the schema does."""
    carried: dict[str, Any] = {
        "user": submitted.user, "spec": submitted.spec, "max_nodes": submitted.max_nodes
    }
    fields = {k: v for k, v in carried.items() if k in JobScheduled.model_fields}
    return JobScheduled(
        job_id=submitted.job_id, placements=plan.placements, policy=plan.policy, **fields
    )


def submission_of(event: Event) -> tuple[JobSubmitted, str] | None:
    """The job submission ``event`` records, with the id its answers carry as causation."""
    data: Any = event.data
    if isinstance(data, JobSubmitted) and event.source.startswith("user/"):
        return data, event.id  # a request of an old log
    if event.source != SOURCE:
        return None
    spec, user = getattr(data, "spec", None), getattr(data, "user", None)
    if isinstance(data, JobScheduled) and spec is not None and user is not None:
        submitted = JobSubmitted(
            job_id=data.job_id, user=user, spec=spec, policy=data.policy,
            max_nodes=getattr(data, "max_nodes", None),
        )
        return submitted, event.causationid or event.id
    if event.type == COMMAND_REJECTED and getattr(data, "command", None) == "ses.submit":
        try:
            return JobSubmitted.model_validate(data.data), event.causationid or event.id
        except ValidationError:
            return None  # it did not even decode: no policy would have placed it
    return None

