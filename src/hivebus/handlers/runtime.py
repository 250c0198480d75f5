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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import structlog

from hivebus.handlers.base import Decision
from hivebus.schemas import codec
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

    # --- resuming ---------------------------------------------------------------------------

    def history(self, event: Event) -> None:
        self._fold(event)

    def backlog(self, pending_inputs: Iterable[str], outputs: Iterable[Event]) -> None:
        pending = set(pending_inputs)
        for out in outputs:
            if out.source != self.handler.source:
                continue
            if out.causationid in pending:
                self.recorded.setdefault(out.causationid or "", []).append(out)
            else:
                self._fold(out)

    # --- live -------------------------------------------------------------------------------

    def deliver(self, event: Event) -> Step:
        if event.source == self.handler.source:
            return SKIP  # own output: folded when it was decided (or while resuming)
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
            self._fold(out)
        return Step(steps + to_publish, refused=decision.refused)

    def salvage(self, raw: bytes, error: Any) -> Step | None:
        """An input that does not decode: the handler may still answer it (a rejection)."""
        decision = self.handler.salvage(raw, error)
        if decision is None:
            return None
        for out in decision.events:
            self._fold(out)
        return Step(list(decision.events), refused=decision.refused)

    def tick(self, now: datetime) -> list[Event]:
        events = list(self.handler.tick(self.state, now))
        for out in events:
            self._fold(out)
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
