"""``hivebus.cmd``: the command gateway, where users' commands enter.

On a hub with authentication, the public identity cannot publish on ``evt.>``; a user's
command (push, approve, freeze, delete, grant, revoke, submit, suspend, resume, remove) is a
request here: ``{"token", "event", "timeout"}`` (``event``: the command as an event document
of its payload type, e.g. ``ecr.permission.granted`` from ``user/alice``) or
``{"token", "command": "ecr.grant", "data": {...}}``. The gateway

1. checks the token against the ``auth.user.*`` events (caught up on every request, so a
   revocation takes effect at once),
2. checks that the command is by the token's user (the event's ``source`` and the payload's
   acting-user field), and that it is a command at all,
3. hands it to its decider (``hivebus.decide.ecr`` / ``.ses``), which decides on the current
   state and appends the facts, or one ``*.command.rejected`` with every reason; and replies
   ``{"seq", "user", "events": [the facts], "attempts"}``.

A user's own connection (``auth.user_callout``: the hub's callout let it in with that user's
token) sends ``{"event"|"command", "timeout"}`` with no token on ``hivebus.cmd.user.<name>``,
the one command subject the server lets it publish on; the gateway takes the user from that
subject (step 1 is then: the user still holds a token, as of the log's end) and goes on from
step 2. The shared ``hivebus.cmd`` with the token in the body stays for everyone else (a
public connection, the web's broker, a hub without authentication).

Nothing is published before a decision: the log holds only what the deciders accepted and
what they refused (as rejection facts); the token never reaches the log. A request the gateway
itself refuses (no token, someone else's action, not a command) replies ``{"error", "kind"}``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

import structlog

from hivebus.auth.permissions import USER_COMMANDS
from hivebus.auth.tokens import Users
from hivebus.bus.client import Bus
from hivebus.bus.streams import EVENTS
from hivebus.bus.subjects import decode_token
from hivebus.errors import SchemaError, Unauthorized
from hivebus.handlers.directory import Directory
from hivebus.schemas import codec
from hivebus.schemas.commands import COMMANDS, LEGACY
from hivebus.schemas.envelope import Event
from hivebus.services.requests import CMD_SUBJECT, decide

log = structlog.get_logger()
AUTH_FILTER: Final = "evt.auth.>"
MAX_TIMEOUT: Final = 120.0


class Gateway:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.users = Users()
        self.directory = Directory()
        """Roles and groups (what ``hivebus user list`` / ``group list`` show)."""
        self._position = 0
        self._lock = asyncio.Lock()

    async def serve(self) -> Any:
        await self.catch_up()
        return _Both(await self.bus.serve_subjects(f"{USER_COMMANDS}.*", self.answer_for, queue="hivebus-gateway"),
                     await self.bus.serve(CMD_SUBJECT, self.answer, queue="hivebus-gateway"))

    async def catch_up(self) -> None:
        async with self._lock:
            async for batch in self.bus.read(
                EVENTS, start_seq=self._position + 1, filter_subjects=[AUTH_FILTER], stop_at_end=True
            ):
                for message in batch:
                    self._position = max(self._position, message.seq)
                    try:
                        event = codec.decode(message.data)
                        self.users.apply(event)
                        self.directory.fold(event)
                    except SchemaError as exc:
                        log.warning("gateway.bad_auth_event", seq=message.seq, error=str(exc))

    async def answer(self, body: bytes) -> bytes:
        """A command on ``hivebus.cmd``: its user is the holder of the token in the body."""
        request_doc = _parse(body)
        token = request_doc.get("token")
        if not isinstance(token, str) or not token:
            raise Unauthorized("no token", hint="`hivebus user add NAME` (an admin) issues one; pass --token or set HIVEBUS_TOKEN")
        await self.catch_up()
        user = self.users.who(token)
        if user is None:
            raise Unauthorized("the token is unknown, rotated or revoked", hint="ask an admin for a new one (`hivebus user add NAME`)")
        return await self._decide(request_doc, user)

    async def answer_for(self, subject: str, body: bytes) -> bytes:
        """A command on ``hivebus.cmd.user.<name>``: only ``name``'s own connection may publish
        there (``permissions.user_permissions``), so the subject is who sent it."""
        user = decode_token(subject.removeprefix(f"{USER_COMMANDS}."))
        await self.catch_up()
        if user not in self.users.digest_of:
            raise Unauthorized(f"{user} holds no token now (revoked)", hint=f"ask an admin for a new one (`hivebus user add {user}`)")
        return await self._decide(_parse(body), user)

    async def _decide(self, request_doc: dict[str, Any], user: str) -> bytes:
        command = _command(request_doc, user)
        spec = LEGACY[command.type]
        actor = getattr(command.data, spec.actor)
        if command.source != f"user/{user}" or actor != user:
            raise Unauthorized(f"the token is {user}'s, but this {spec.name} is by {actor} (source {command.source})")
        timeout = min(float(request_doc.get("timeout") or 15.0), MAX_TIMEOUT)
        reply = await decide(self.bus, command, timeout=timeout)
        log.info("gateway.decided", command=spec.name, user=user, seq=reply["seq"], facts=[e["type"] for e in reply["events"]])
        return json.dumps({**reply, "user": user}).encode()


class _Both:
    """The gateway's two subscriptions, ended together (``unsubscribe``, as one was before)."""

    def __init__(self, *subs: Any) -> None:
        self.subs = subs

    async def unsubscribe(self) -> None:
        for sub in self.subs:
            await sub.unsubscribe()


def _command(doc: dict[str, Any], user: str) -> Event:
    """The command a request carries, as an (unpublished) event from its user."""
    if "command" in doc:
        name = doc.get("command")
        spec = COMMANDS.get(name) if isinstance(name, str) else None
        if spec is None:
            raise Unauthorized(f"{name!r} is not a command", hint=f"commands: {', '.join(COMMANDS)}")
        payload = codec.validate_payload(spec.model, doc.get("data"))
        subject = str(getattr(payload, "job_id", None) or getattr(payload, "bundle_id", None) or getattr(payload, "resource", None) or user)
        return Event.new(payload, source=f"user/{user}", subject=subject)
    try:
        event = codec.decode(json.dumps(doc.get("event")).encode())
    except SchemaError as exc:
        raise SchemaError(f"command: the event is invalid: {exc}") from None
    if event.type not in LEGACY:
        raise Unauthorized(f"{event.type} is not a command", hint=f"commands: {', '.join(COMMANDS)}")
    return event


def _parse(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise SchemaError(f"command is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise SchemaError("command must be a JSON object")
    return doc
