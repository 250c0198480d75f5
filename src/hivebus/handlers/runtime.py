"""Driving a handler across restarts with exactly-once effects (pure: no I/O here).

The wiring (``hivebus.services``) feeds a ``Driver`` three things, in this order:

1. ``history(event)``: every event of the handler's subjects (inputs and its own outputs) up
   to its durable consumer's ack floor, in stream order: the state is their fold;
2. ``backlog(inputs, outputs)``: what lies after the floor: the ids of inputs not yet
   acknowledged, and the handler's own outputs already in the stream. An output whose cause
   is not pending is folded now (it answered an input already folded, or came from the
   timer); one whose cause is pending is held until that input is delivered again;
3. ``deliver(event)`` for each input the consumer delivers, and ``tick(now)`` for the clock.

``deliver`` folds the input after deciding on the state before it, and folds the outputs at
once (live, the next input must see them even though they sit later in the stream). For an
input whose outputs were already published before a crash it decides again: if the new
decision agrees with what the stream holds, only the missing outputs are published (a crash
in the middle of publishing them); if it does not (the state differs because the timer ran
in between), the stream wins and nothing new is published. Together with ids derived from
(producer, input, index) and JetStream's duplicate window, no input is ever answered twice,
even after the window has passed.

Facts a decider appends for users' commands (``decide_command``) come back through the inputs
too: from another replica they are folded when delivered; the handler's own, folded when it
decided them, are recognised by id (``own``) and skipped.

Logs written before commands existed hold users' requests as events (``ecr.bundle.approved``
from ``user/alice``). The folds ignore such requests; the handler decides each as the command
it was, on the state of that point in the log, and what it decides is what counts. For a
request under the ack floor that is done while folding ``history``: the facts are folded
there, and the ones the stream does not hold yet (an old release answered a grant with a dead
letter, an approval with nothing) are left in ``adjudicated`` for the wiring to publish once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import structlog

from hivebus.handlers.base import Decision
from hivebus.schemas import codec
from hivebus.schemas.commands import command_of
from hivebus.schemas.envelope import Event

log = structlog.get_logger()
S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Step:
    """What to do after one delivery: publish ``publish`` (in order), then ack the input;
    with ``refused``, record the input as a dead letter with that reason."""

    publish: list[Event] = field(default_factory=list)
    refused: str | None = None


SKIP = Step()


class Driver(Generic[S]):
    def __init__(self, handler: Any, state: S | None = None) -> None:
        self.handler = handler
        self.state: S = state if state is not None else handler.initial()
        self.recorded: dict[str, list[Event]] = {}
        self.decisions = 0
        self.folded = 0
        self.own: set[str] = set()
        """Ids of own facts folded early that the inputs will deliver again."""
        self.adjudicated: dict[str, Event] = {}
        """Facts decided for old requests under the floor that the stream lacks, by id."""
        self._decided_in_history: set[str] = set()

    # --- resuming ---------------------------------------------------------------------------

    def history(self, event: Event) -> None:
        if event.source == self.handler.source and event.id in self._decided_in_history:
            self.adjudicated.pop(event.id, None)  # the stream holds it: nothing to publish
            return
        if self._is_request(event):
            try:
                decision: Decision = self.handler.decide(self.state, event)
            except Exception:
                log.exception("handler.decide_failed", handler=self.handler.name, event_id=event.id)
                self._fold(event)
                return
            self._fold(event)
            for out in decision.events:
                self._decided_in_history.add(out.id)
                self.adjudicated[out.id] = out
                self._fold(out)
            return
        self._fold(event)

    def take_adjudicated(self) -> list[Event]:
        """The facts decided for old requests while resuming that the stream lacks (publish
        them once); from now on their ids are own facts the inputs may deliver."""
        events = list(self.adjudicated.values())
        self.adjudicated.clear()
        self._decided_in_history.clear()
        for out in events:
            self._mark_own(out)
        return events

    def _is_request(self, event: Event) -> bool:
        spec = command_of(event)
        return spec is not None and spec.decider == self.handler.name

    def backlog(self, pending_inputs: Iterable[str], outputs: Iterable[Event]) -> None:
        pending = set(pending_inputs)
        for out in outputs:
            if out.source != self.handler.source:
                continue
            if out.id in self._decided_in_history:  # decided (and folded) while in history
                self.adjudicated.pop(out.id, None)
                self._mark_own(out)
                continue
            if out.causationid in pending:
                self.recorded.setdefault(out.causationid or "", []).append(out)
            else:
                self._fold_own(out)

    # --- live -------------------------------------------------------------------------------

    def deliver(self, event: Event) -> Step:
        if event.source == self.handler.source:
            if event.id in self.own:
                self.own.discard(event.id)  # folded when it was decided (or while resuming)
            elif event.type in self._redelivered:
                self._fold(event)  # another replica's decision
            return SKIP
        steps: list[Event] = []
        now = self._clock(event)
        if now is not None:
            steps += self.tick(now)
        recorded = self.recorded.pop(event.id, None)
        try:
            decision: Decision = self.handler.decide(self.state, event)
        except Exception as exc:  # a bug must not wedge the consumer: record it and move on
            log.exception(
                "handler.decide_failed",
                handler=self.handler.name,
                event_id=event.id,
                type=event.type,
            )
            self._fold(event)
            return Step(
                steps, refused=f"handler {self.handler.name} failed on {event.type}: {exc!r}"
            )
        self.decisions += 1
        to_publish, to_fold = decision.events, decision.events
        if recorded is not None:
            to_publish, to_fold = self._reconcile(event, decision.events, recorded)
        self._fold(event)
        for out in to_fold:
            self._fold_own(out)
        return Step(steps + to_publish, refused=decision.refused)

    def decide_command(self, command: Event) -> Decision:
        """What the handler decides for a user's command now (pure; folds nothing)."""
        return self.handler.decide_command(self.state, command)

    def accept(self, facts: list[Event]) -> None:
        """Fold the facts of a command decision once they are in the stream."""
        for out in facts:
            self._fold_own(out)

    def salvage(self, raw: bytes, error: Any) -> Step | None:
        """An input that does not decode: the handler may still answer it (a rejection)."""
        decision = self.handler.salvage(raw, error)
        if decision is None:
            return None
        for out in decision.events:
            self._fold_own(out)
        return Step(list(decision.events), refused=decision.refused)

    def tick(self, now: datetime) -> list[Event]:
        events = list(self.handler.tick(self.state, now))
        for out in events:
            self._fold_own(out)
        return events

    # --- internals ---------------------------------------------------------------------------

    def _clock(self, event: Event) -> datetime | None:
        clock = getattr(self.handler, "clock", None)
        return clock(event) if clock is not None else None

    def _reconcile(
        self, event: Event, decided: list[Event], recorded: list[Event]
    ) -> tuple[list[Event], list[Event]]:
        on_record = {e.id: e for e in recorded}
        agrees = all(
            codec.encode(e) == codec.encode(on_record[e.id]) for e in decided if e.id in on_record
        )
        if not agrees:
            log.warning(
                "handler.decision_differs",
                handler=self.handler.name,
                event_id=event.id,
                kept=len(recorded),
            )
            return [], recorded
        decided_ids = {e.id for e in decided}
        missing = [e for e in decided if e.id not in on_record]
        if missing:
            log.info(
                "handler.completing_outputs",
                handler=self.handler.name,
                event_id=event.id,
                n=len(missing),
            )
        return missing, decided + [e for e in recorded if e.id not in decided_ids]

    @property
    def _redelivered(self) -> frozenset[str]:
        return getattr(self.handler, "redelivered", frozenset())

    def _mark_own(self, event: Event) -> None:
        if event.type in self._redelivered:
            self.own.add(event.id)

    def _fold_own(self, event: Event) -> None:
        self._mark_own(event)
        self._fold(event)

    def _fold(self, event: Event) -> None:
        try:
            self.handler.evolve(self.state, event)
        except Exception:
            log.exception(
                "handler.evolve_failed",
                handler=self.handler.name,
                event_id=event.id,
                type=event.type,
            )
        self.folded += 1
