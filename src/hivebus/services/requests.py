"""Publish a request event and wait for the handler's answer (what the CLI does).

A handler has processed an input once its durable consumer's ack floor has reached the
input's stream sequence (it acknowledges only after publishing its outputs). The answer is
then in the stream: the events whose causation id is the request's id, or a dead letter for
that sequence when the handler refused it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from nats.js.errors import NotFoundError

from hivebus.auth.tokens import find_token
from hivebus.bus.client import Bus
from hivebus.bus.consumer import DeadLetter
from hivebus.bus.streams import DEADLETTERS, EVENTS
from hivebus.bus.subjects import dlq_subject
from hivebus.errors import NoAnswer, PermissionDenied, RequestRejected, Unauthorized
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event

CMD_SUBJECT = "hivebus.cmd"  # served by services.gateway


@dataclass
class Answer:
    seq: int
    events: list[Event] = field(default_factory=list)
    refused: str | None = None

    def of_type(self, event_type: str) -> list[Event]:
        return [e for e in self.events if e.type == event_type]


async def _dlq_position(bus: Bus) -> int:
    try:
        return await bus.last_seq(DEADLETTERS)
    except NotFoundError:
        return 0


async def processed(bus: Bus, durable: str, seq: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            info = await bus.js.consumer_info(EVENTS, durable)
            if info.ack_floor is not None and info.ack_floor.stream_seq >= seq:
                return
        except NotFoundError:
            pass
        if time.monotonic() > deadline:
            raise NoAnswer(
                f"{durable} did not process the request (sequence {seq}) within {timeout:g}s",
                hint="are the handlers running (`hivebus up` or `hivebus handlers`)?",
            )
        await asyncio.sleep(delay)
        delay = min(0.25, delay * 1.5)


async def request_at(
    url: str,
    event: Event,
    *,
    handler: str,
    answers: Sequence[str],
    timeout: float = 15.0,
    token: str | None = None,
) -> Answer:
    """A user's request on a connection of its own (what a CLI command does once).

    With a user token (``token``, ``HIVEBUS_TOKEN`` or the user's saved one) it goes
    through the command gateway, which acts as the token's user; without one it is
    published directly, which only a hub without authentication (or an admin) allows.
    """
    user = event.source.removeprefix("user/")
    token = find_token(user, token)
    async with await Bus.connect(url) as bus:
        if token is not None:
            return await request_via_gateway(bus, event, token=token, answers=answers, timeout=timeout)
        try:
            return await request(bus, event, handler=handler, answers=answers, timeout=timeout)
        except PermissionDenied:
            raise Unauthorized(
                f"this hub takes {event.type} only with a user token",
                hint=f"an admin runs `hivebus user add {user} --save` (or gives you a token: set HIVEBUS_TOKEN)",
            ) from None


async def request_via_gateway(
    bus: Bus, event: Event, *, token: str, answers: Sequence[str], timeout: float = 15.0, wait: bool = True
) -> Answer:
    """Send ``event`` through the command gateway (``hivebus.cmd``) with ``token``; with
    ``wait=False`` it returns once the event is stored, before any decision."""
    body = {"token": token, "event": codec.to_dict(event), "answers": list(answers), "timeout": timeout, "wait": wait}
    reply = json.loads(await bus.request(CMD_SUBJECT, body, timeout=timeout + 5.0))
    if "error" in reply:
        kind = reply.get("kind")
        error = Unauthorized if kind == "Unauthorized" else RequestRejected
        raise error(str(reply["error"]))
    answer = Answer(int(reply["seq"]), refused=reply.get("refused"))
    answer.events = [codec.decode(json.dumps(doc)) for doc in reply.get("events", [])]
    return answer


async def request(
    bus: Bus,
    event: Event,
    *,
    handler: str,
    answers: Sequence[str],
    timeout: float = 15.0,
) -> Answer:
    """Publish ``event``, wait until ``handler`` processed it, return its answer.

    ``answers``: the subjects the handler's outputs go to (``evt.ecr.bundle.registered.>``...).
    """
    durable = f"handler-{handler}"
    dlq_from = await _dlq_position(bus)
    seq = await bus.publish(event)
    await processed(bus, durable, seq, timeout=timeout)
    answer = Answer(seq)
    async for batch in bus.read(
        EVENTS, start_seq=seq + 1, filter_subjects=list(answers), stop_at_end=True
    ):
        for message in batch:
            try:
                out = codec.decode(message.data)
            except Exception:
                continue
            if out.causationid == event.id:
                answer.events.append(out)
    async for batch in bus.read(
        DEADLETTERS,
        start_seq=dlq_from + 1,
        filter_subjects=[dlq_subject(EVENTS, durable)],
        stop_at_end=True,
    ):
        for message in batch:
            letter = DeadLetter.model_validate_json(message.data)
            if letter.seq == seq:
                answer.refused = letter.reason
    return answer
