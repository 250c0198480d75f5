"""``hivebus.cmd``: the command gateway, where user actions enter the log.

On a hub with authentication, the public identity cannot publish on ``evt.>``; a user's
action (push, approve, freeze, delete, grant, revoke, submit, suspend, resume, remove) is
a request here instead: ``{"token", "event", "answers", "timeout", "wait"}``. The gateway

1. checks the token against the ``auth.user.*`` events (caught up on every request, so a
   revocation takes effect at once),
2. checks that the action is by the token's user (the event's ``source`` and the payload's
   acting-user field), and that it is a user action at all,
3. publishes the event as is, waits for the ECR or the scheduler to decide on it (unless
   ``"wait": false``), and replies ``{"seq", "user", "events", "refused"}``.

The handlers then decide on that user's rights (owner, reviewer, grants) as for any event;
the token never reaches the log. Refusals reply ``{"error", "kind"}`` and publish nothing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

import structlog

from hivebus.auth.tokens import Users
from hivebus.bus.client import Bus
from hivebus.bus.streams import EVENTS
from hivebus.errors import SchemaError, Unauthorized
from hivebus.schemas import codec
from hivebus.services.requests import CMD_SUBJECT, request

log = structlog.get_logger()
AUTH_FILTER: Final = "evt.auth.>"
# event type -> (the handler that decides on it, the payload field naming the acting user)
ACTIONS: Final[dict[str, tuple[str, str]]] = {
    "ecr.bundle.pushed": ("ecr", "pusher"),
    "ecr.bundle.approved": ("ecr", "by"),
    "ecr.bundle.frozen": ("ecr", "by"),
    "ecr.bundle.deleted": ("ecr", "by"),
    "ecr.permission.granted": ("ecr", "by"),
    "ecr.permission.revoked": ("ecr", "by"),
    "ses.job.submitted": ("ses", "user"),
    "ses.job.suspended": ("ses", "by"),
    "ses.job.resumed": ("ses", "by"),
    "ses.job.removed": ("ses", "by"),
}
MAX_TIMEOUT: Final = 120.0


class Gateway:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.users = Users()
        self._position = 0
        self._lock = asyncio.Lock()

    async def serve(self) -> Any:
        await self.catch_up()
        return await self.bus.serve(CMD_SUBJECT, self.answer, queue="hivebus-gateway")

    async def catch_up(self) -> None:
        async with self._lock:
            async for batch in self.bus.read(
                EVENTS, start_seq=self._position + 1, filter_subjects=[AUTH_FILTER], stop_at_end=True
            ):
                for message in batch:
                    self._position = max(self._position, message.seq)
                    try:
                        self.users.apply(codec.decode(message.data))
                    except SchemaError as exc:
                        log.warning("gateway.bad_auth_event", seq=message.seq, error=str(exc))

    async def answer(self, body: bytes) -> bytes:
        request_doc = _parse(body)
        try:
            event = codec.decode(json.dumps(request_doc.get("event")).encode())
        except SchemaError as exc:
            raise SchemaError(f"command: the event is invalid: {exc}") from None
        if event.type not in ACTIONS:
            raise Unauthorized(f"{event.type} is not a user action", hint=f"the gateway takes: {', '.join(ACTIONS)}")
        handler, actor_field = ACTIONS[event.type]
        token = request_doc.get("token")
        if not isinstance(token, str) or not token:
            raise Unauthorized("no token", hint="`hivebus user add NAME` (an admin) issues one; pass --token or set HIVEBUS_TOKEN")
        await self.catch_up()
        user = self.users.who(token)
        if user is None:
            raise Unauthorized("the token is unknown, rotated or revoked", hint="ask an admin for a new one (`hivebus user add NAME`)")
        actor = getattr(event.data, actor_field)
        if event.source != f"user/{user}" or actor != user:
            raise Unauthorized(f"the token is {user}'s, but this {event.type} is by {actor} (source {event.source})")
        # Only the events this very action caused are returned (same causation id), so
        # the goals a job submission produced may be among them.
        answers = request_doc.get("answers") or []
        if not isinstance(answers, list) or not all(isinstance(a, str) and a.startswith(("evt.", "toedge.")) for a in answers):
            raise SchemaError("command: answers must be a list of evt.> or toedge.> subjects")
        if request_doc.get("wait") is False:  # publish only (`hivebus ecr push --no-wait`)
            seq = await self.bus.publish(event)
            log.info("gateway.accepted", type=event.type, user=user, seq=seq, waited=False)
            return json.dumps({"seq": seq, "user": user, "events": [], "refused": None}).encode()
        timeout = min(float(request_doc.get("timeout") or 15.0), MAX_TIMEOUT)
        answer = await request(self.bus, event, handler=handler, answers=answers, timeout=timeout)
        log.info("gateway.accepted", type=event.type, user=user, seq=answer.seq, refused=answer.refused is not None)
        return json.dumps(
            {
                "seq": answer.seq,
                "user": user,
                "events": [codec.to_dict(e) for e in answer.events],
                "refused": answer.refused,
            }
        ).encode()


def _parse(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise SchemaError(f"command is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise SchemaError("command must be a JSON object")
    return doc
