"""What a consumer receives: ``Delivery`` (decoded, ackable) and ``RawMessage``.

A message that cannot be decoded never stops a consumer: ``Delivery.dead_letter`` sends
it to ``dlq.<stream>.<consumer>.<seq>`` with the reason (stored in the DEADLETTERS stream, from
which the projector builds the ``dead_letters`` view) and acknowledges it. Each letter has its
own subject and is published only if that subject is still empty, so a letter sent again after
a crash is stored once however late it comes (the duplicate window alone covers 2 minutes).
"""

from __future__ import annotations

import base64
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

from nats.aio.msg import Msg
from pydantic import BaseModel

from hivebus.bus.publisher import EXPECTED_LAST_SUBJECT_SEQUENCE, MSG_ID
from hivebus.bus.subjects import dlq_letter_subject
from hivebus.errors import ConcurrencyConflict, DecodeError
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event

if TYPE_CHECKING:
    from hivebus.bus.client import Bus


class RawMessage(NamedTuple):
    seq: int
    subject: str
    data: bytes
    time_ns: int = 0  # when the stream stored it (ns since the epoch); 0 if unknown


def parse_reply(reply: str) -> tuple[int, int]:
    """(stream sequence, times delivered) from a JetStream ``$JS.ACK...`` reply subject.

    v1: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``;
    v2 adds ``<domain>.<account hash>`` after ``ACK`` and a trailing token.
    """
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[4])
    return int(tokens[7]), int(tokens[6])


def reply_position(reply: str) -> tuple[int, int]:
    """(stream sequence, stored time in ns since the epoch) from a ``$JS.ACK...`` reply subject."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[7])
    return int(tokens[7]), int(tokens[9])


class DeadLetter(BaseModel):
    """The body of a ``dlq.<stream>.<consumer>.<seq>[.<index>]`` message."""

    stream: str
    seq: int
    subject: str
    consumer: str
    reason: str
    field: str | None = None
    index: int | None = None
    """For one reading of a packed DATA message: its place there (``payload`` is that reading)."""
    time: datetime
    payload_b64: str

    @property
    def payload(self) -> bytes:
        return base64.b64decode(self.payload_b64)


async def dead_letter(
    bus: Bus, *, stream: str, consumer: str, seq: int, subject: str, data: bytes, reason: str, field: str | None = None,
    index: int | None = None,
) -> None:
    """Record an unusable message (or, with ``index``, one reading of a packed message) with its
    reason (idempotent per stream/seq/consumer/index)."""
    letter = DeadLetter(
        stream=stream,
        seq=seq,
        subject=subject,
        consumer=consumer,
        reason=reason,
        field=field,
        index=index,
        time=datetime.now(UTC),
        payload_b64=base64.b64encode(data).decode(),
    )
    msg_id = f"dlq:{stream}:{seq}:{consumer}" + ("" if index is None else f":{index}")
    headers = {MSG_ID: msg_id, EXPECTED_LAST_SUBJECT_SEQUENCE: "0"}  # only onto an empty subject
    with contextlib.suppress(ConcurrencyConflict):  # stored already (sent before a crash): once is the point
        await bus._publish_one(
            dlq_letter_subject(stream, consumer, seq, index),
            letter.model_dump_json().encode(),
            headers,
            timeout=5.0,
            retries=3,
        )


@dataclass(slots=True)
class Delivery:
    """One message from a durable consumer: the event (or why it is not one) and its position."""

    msg: Msg
    bus: Bus
    stream: str
    consumer: str
    seq: int
    delivered: int
    event: Event | None
    error: DecodeError | None

    @classmethod
    def of(cls, msg: Msg, bus: Bus, stream: str, consumer: str) -> Delivery:
        seq, delivered = parse_reply(msg.reply)
        try:
            event, error = codec.decode(msg.data), None
        except DecodeError as exc:
            event, error = None, exc
        return cls(msg, bus, stream, consumer, seq, delivered, event, error)

    async def ack(self) -> None:
        await self.msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        await self.msg.nak(delay=delay)

    async def term(self) -> None:
        await self.msg.term()

    async def dead_letter(self, reason: str, *, field: str | None = None) -> None:
        """Send this message to the dead-letter subject with ``reason``, then ack it."""
        await dead_letter(
            self.bus,
            stream=self.stream,
            consumer=self.consumer,
            seq=self.seq,
            subject=self.msg.subject,
            data=self.msg.data,
            reason=reason,
            field=field,
        )
        await self.msg.ack()
