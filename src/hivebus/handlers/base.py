"""What every handler is: a state, a fold, a pure decision, and optionally a clock.

A handler never talks to NATS. ``evolve(state, event)`` folds one event into the state (in
place: a hub holds thousands of nodes and folds every heartbeat); ``decide(state, event)``
looks at the state *before* the event and returns a ``Decision``: the events to emit, each
built with ``Outputs`` so its id is derived from (producer, input id, index) and a handler
that re-processes the input after a crash emits the very same ids. ``tick(state, now)``
emits what the passing of time decides (a node silent too long), with ids derived from the
event that started the wait, so a repeated tick emits the same ids too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from hivebus.errors import DecodeError
from hivebus.schemas.envelope import Event, Payload, derived_id

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Decision:
    """What a handler decided about one event.

    ``refused`` names why an input was not acted on (an approval by someone who is not a
    reviewer, a grant by someone without WRITE_ACP...): the runtime records it as a dead
    letter with that reason, so it is visible, and moves on. The fold ignores such inputs
    by the same rule, so every reader of the log agrees they had no effect.
    """

    events: list[Event] = field(default_factory=list)
    refused: str | None = None

    @staticmethod
    def refuse(reason: str) -> Decision:
        return Decision(refused=reason)


NOTHING = Decision()


class Outputs:
    """Builds the events one input causes, numbering them so their ids are deterministic."""

    def __init__(self, cause: Event, source: str, *, producer: str | None = None) -> None:
        self.cause = cause
        self.source = source
        self.producer = producer or source
        self.events: list[Event] = []

    def emit(self, payload: Payload, subject: str) -> Event:
        event = self.cause.caused(
            payload,
            source=self.source,
            subject=subject,
            producer=self.producer,
            index=len(self.events),
        )
        self.events.append(event)
        return event

    def decision(self) -> Decision:
        return Decision(list(self.events))


def timed_event(
    cause: Event,
    payload: Payload,
    *,
    source: str,
    producer: str,
    subject: str,
    when: datetime,
    index: int = 0,
) -> Event:
    """An event the clock decides, caused by ``cause`` but stamped ``when``.

    Its id depends only on (producer, cause id, index), never on when the tick ran.
    """
    return Event.new(
        payload,
        source=source,
        subject=subject,
        id=derived_id(producer, cause.id, index, when),
        time=when,
        correlationid=cause.correlationid or cause.id,
        causationid=cause.id,
    )


class Handler(Protocol, Generic[S]):
    """A handler as the runtime drives it (see ``handlers.runtime``)."""

    name: str
    source: str
    """``handler/<name>``: the ``source`` of every event it emits."""
    inputs: tuple[str, ...]
    """Subjects of the events its state needs (its durable consumer's filter)."""
    outputs: tuple[str, ...]
    """Subjects of its own outputs that ``inputs`` does not already cover."""

    def initial(self) -> S: ...

    def evolve(self, state: S, event: Event) -> None: ...

    def decide(self, state: S, event: Event) -> Decision: ...

    def tick(self, state: S, now: datetime) -> list[Event]: ...

    def salvage(self, raw: bytes, error: DecodeError) -> Decision | None:
        """A decision for an input that does not decode (e.g. reject a malformed push with
        every reason), or None to dead-letter it."""
        ...


def broken_input(raw: bytes, event_type: str) -> tuple[Event, dict[str, Any]] | None:
    """The envelope (as a bare cause for ``Outputs``) and raw payload of an event of
    ``event_type`` whose payload does not validate; None if even the envelope is unreadable.

    Lets a handler answer a malformed request (a rejection listing every problem) instead of
    only dead-lettering it: the answer needs the request's id and time for its own id.
    """
    try:
        doc = json.loads(raw)
        if (
            not isinstance(doc, dict)
            or doc.get("type") != event_type
            or not isinstance(doc.get("data"), dict)
        ):
            return None
        cause = Event.model_construct(
            id=str(doc["id"]),
            type=event_type,
            source=str(doc.get("source", "")),
            subject=str(doc.get("subject", "")),
            time=datetime.fromisoformat(str(doc["time"]).replace("Z", "+00:00")),
            correlationid=doc.get("correlationid"),
            causationid=doc.get("causationid"),
            data=None,
        )
    except (ValueError, KeyError, TypeError):
        return None
    return cause, doc["data"]


def validation_reasons(model: type[BaseModel], data: Any) -> list[str]:
    """Every validation error of ``data`` as ``field: message`` (missing fields included)."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return [
            f"{'.'.join(str(p) for p in err['loc']) or '<payload>'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        ]
    return []
