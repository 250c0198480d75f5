"""Send a user's command and get its decision (what the CLI and the Python API do).

``request_at`` / ``send_command``: with a user token through the gateway (``hivebus.cmd``),
without one straight to the decider (``hivebus.decide.<ecr|ses>``), which only a hub without
authentication (or the admin identity) allows. Either way nothing is published before the
decision; the reply holds the facts appended, a refusal being one ``*.command.rejected``.

``request`` is the older way, kept for events published raw (``hivebus publish``, the demo):
publish an event and wait until a handler's ack floor passes it, then collect the events it
caused and any dead letter for it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.js.errors import NotFoundError

from hivebus.auth.tokens import find_token
from hivebus.bus.client import Bus
from hivebus.bus.consumer import DeadLetter
from hivebus.bus.streams import DEADLETTERS, EVENTS
from hivebus.bus.subjects import dlq_filters
from hivebus.errors import NoAnswer, PermissionDenied, RequestRejected, RequestTimeout, Unauthorized
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event

CMD_SUBJECT = "hivebus.cmd"  # served by services.gateway
DECIDE_SUBJECT = "hivebus.decide"  # served by services.deciders


@dataclass
class Answer:
    seq: int
    events: list[Event] = field(default_factory=list)
    refused: str | None = None
    attempts: int = 1
    """How many times the decider decided (more than once after a concurrent write)."""

    def of_type(self, event_type: str) -> list[Event]:
        return [e for e in self.events if e.type == event_type]

    @property
    def rejection(self) -> Event | None:
        """The ``*.command.rejected`` fact when the decider refused the command."""
        return next((e for e in self.events if e.type.endswith(".command.rejected")), None)

    @property
    def reasons(self) -> list[str]:
        rejection = self.rejection
        if rejection is not None:
            return list(rejection.data.reasons)
        return [self.refused] if self.refused else []

    @classmethod
    def of_reply(cls, reply: dict[str, Any]) -> Answer:
        answer = cls(int(reply.get("seq") or 0), attempts=int(reply.get("attempts") or 1))
        answer.events = [codec.from_dict(doc) for doc in reply.get("events", [])]
        if answer.rejection is not None:
            answer.refused = "; ".join(answer.rejection.data.reasons)
        return answer


async def decide(bus: Bus, command: Event, *, timeout: float = 15.0, instance: str | None = None) -> dict[str, Any]:
    """Hand ``command`` to its decider; the reply document (see ``services.deciders``)."""
    from hivebus.schemas.commands import command_of

    spec = command_of(command)
    if spec is None:
        raise RequestRejected(f"{command.type} from {command.source} is not a command")
    subject = f"{DECIDE_SUBJECT}.{spec.decider}" + (f".{instance}" if instance else "")
    try:
        raw = await _request_unless_denied(bus, subject, {"event": codec.to_dict(command), "timeout": timeout}, timeout + 5.0)
    except RequestTimeout:
        bus.raise_if_denied(subject)
        raise NoAnswer(f"no {spec.decider} decider answered {spec.name}", hint="are the handlers running (`hivebus up` or `hivebus handlers`)?") from None
    reply = json.loads(raw)
    if "error" in reply:
        raise RequestRejected(str(reply["error"]), [str(reply["error"])])
    return dict(reply)


async def _request_unless_denied(bus: Bus, subject: str, body: dict[str, Any], timeout: float) -> bytes:
    """``bus.request``, ended by ``PermissionDenied`` as soon as the server refuses this
    identity the publish (a -ERR on the connection, seen by ``Bus``): an identity that may not
    send the command learns it at once instead of after the whole timeout (20 s)."""
    bus.denied.pop(subject.lower(), None)  # an earlier refusal: the server says it again if it still holds
    answer = asyncio.ensure_future(bus.request(subject, body, timeout=timeout))
    try:
        while not answer.done():
            await asyncio.wait({answer}, timeout=0.05)
            if not answer.done():
                bus.raise_if_denied(subject)
        return answer.result()
    finally:
        answer.cancel()


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
    """A user's command on a connection of its own (what a CLI command does once).

    ``handler`` and ``answers`` are not needed any more (the decision is the reply); they are
    kept so older callers work.
    """
    async with await Bus.connect(url) as bus:
        return await send_command(bus, event, token=token, timeout=timeout)


async def send_command(bus: Bus, event: Event, *, token: str | None = None, timeout: float = 15.0) -> Answer:
    """With a user token (``token``, ``HIVEBUS_TOKEN`` or the user's saved one) through the
    gateway, which acts as the token's user; without one straight to the decider, which only
    a hub without authentication (or an admin) allows."""
    user = event.source.removeprefix("user/")
    token = find_token(user, token)
    if token is not None:
        return await request_via_gateway(bus, event, token=token, timeout=timeout)
    try:
        return Answer.of_reply(await decide(bus, event, timeout=timeout))
    except PermissionDenied:
        from hivebus.schemas.commands import command_of

        spec = command_of(event)
        raise Unauthorized(
            f"this hub takes {spec.name if spec else event.type} only with a user token",
            hint=f"an admin runs `hivebus user add {user} --save` (or gives you a token: set HIVEBUS_TOKEN)",
        ) from None


async def request_via_gateway(
    bus: Bus, event: Event, *, token: str, answers: Sequence[str] = (), timeout: float = 15.0
) -> Answer:
    """Send the command ``event`` through the gateway (``hivebus.cmd``) with ``token``."""
    body = {"token": token, "event": codec.to_dict(event), "timeout": timeout}
    reply = json.loads(await bus.request(CMD_SUBJECT, body, timeout=timeout + 10.0))
    if "error" in reply:
        kind = reply.get("kind")
        error = Unauthorized if kind == "Unauthorized" else RequestRejected
        raise error(str(reply["error"]))
    return Answer.of_reply(reply)


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
        filter_subjects=dlq_filters(EVENTS, durable),
        stop_at_end=True,
    ):
        for message in batch:
            letter = DeadLetter.model_validate_json(message.data)
            if letter.seq == seq:
                answer.refused = letter.reason
    return answer
