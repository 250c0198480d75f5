"""The event envelope (CloudEvents 1.0 attribute names) and the payload base class.

An ``Event`` is the envelope plus a typed ``data`` payload. Payload classes declare their
event ``type`` and schema ``version`` through ``@registry.event(...)``; ``Event.new`` fills
the envelope from the payload's class, so callers never spell a type string twice.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from hivebus.schemas.ids import new_ulid, ulid_from_parts

SPECVERSION = "1.0"


class Payload(BaseModel):
    """Base of every event payload. ``event_type``/``version`` are set by the registry."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    event_type: ClassVar[str] = ""
    version: ClassVar[int] = 1
    # Where the event travels when the hub emits it: "evt" (cloud log) or "toedge" (one node).
    route: ClassVar[str] = "evt"


class Event(BaseModel):
    """One event: envelope attributes plus its payload.

    Unknown envelope attributes are refused rather than dropped, so what is stored is
    exactly what was validated; ``time`` must carry a time zone.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    type: str
    dataversion: int = 1
    source: str
    subject: str
    time: AwareDatetime
    correlationid: str | None = None
    causationid: str | None = None
    # Per-node monotonically increasing sequence, set by an edge node's outbox
    # (a CloudEvents extension attribute); the projections de-duplicate on (node, nodeseq).
    nodeseq: int | None = None
    data: Any = Field(repr=False)

    @classmethod
    def new(
        cls,
        data: Payload,
        *,
        source: str,
        subject: str,
        id: str | None = None,
        time: datetime | None = None,
        correlationid: str | None = None,
        causationid: str | None = None,
        nodeseq: int | None = None,
    ) -> Event:
        """A fresh event for ``data``; its id is a new ULID and it starts its own chain."""
        event_id = id or new_ulid()
        # model_construct: every part is already valid (a validated payload, our own id/time).
        return cls.model_construct(
            id=event_id,
            type=type(data).event_type,
            dataversion=type(data).version,
            source=source,
            subject=subject,
            time=time or datetime.now(UTC),
            correlationid=correlationid or event_id,
            causationid=causationid,
            nodeseq=nodeseq,
            data=data,
        )

    def caused(self, data: Payload, *, source: str, subject: str, producer: str, index: int) -> Event:
        """An event caused by this one, with a deterministic id.

        The id is derived from (producer, this event's id, output index), so a handler that
        re-processes this event after a crash emits the very same ids and JetStream's
        duplicate window drops the copies.
        """
        return Event.new(
            data,
            source=source,
            subject=subject,
            id=derived_id(producer, self.id, index, self.time),
            time=self.time,
            correlationid=self.correlationid or self.id,
            causationid=self.id,
        )

    def __eq__(self, other: object) -> bool:
        # Decoded events are instances of a typed subclass (data typed as its model);
        # equality is about the content, not the Python class.
        if not isinstance(other, Event):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]

    @property
    def node(self) -> str | None:
        """The emitting node for events a node produced (``source`` = ``node/<id>``)."""
        return self.source[5:] if self.source.startswith("node/") else None


def derived_id(producer: str, input_id: str, index: int, when: datetime) -> str:
    """A ULID-shaped id that is a pure function of its inputs.

    The timestamp part is the input event's time, so derived ids still sort by time;
    the random part is a hash of (producer, input id, index).
    """
    digest = hashlib.blake2b(f"{producer}\x00{input_id}\x00{index}".encode(), digest_size=10).digest()
    return ulid_from_parts(int(when.timestamp() * 1000), int.from_bytes(digest, "big"))
