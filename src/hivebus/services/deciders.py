"""``hivebus.decide.<handler>``: where the gateway hands a user's command to its decider.

Served by each running ECR and scheduler (queue group: one of the replicas answers) and,
per instance, on ``hivebus.decide.<handler>.<instance>`` (so a test can make two replicas
race). Request JSON ``{"event": <the command as an event document>, "timeout": s}``; reply
``{"seq", "events": [facts], "attempts"}`` or ``{"error", "kind"}``. Only the service and admin
identities may publish here: users go through the gateway, which checks their token.
"""

from __future__ import annotations

import json
from typing import Any

from hivebus.bus.client import Bus
from hivebus.errors import SchemaError
from hivebus.schemas import codec
from hivebus.schemas.commands import command_of
from hivebus.services.handler_service import HandlerService
from hivebus.services.requests import DECIDE_SUBJECT


def decide_subject(decider: str, instance: str | None = None) -> str:
    return f"{DECIDE_SUBJECT}.{decider}" + (f".{instance}" if instance else "")


async def serve_decider(service: HandlerService, bus: Bus, instance: str | None = None) -> list[Any]:
    name = service.handler.name

    async def answer(body: bytes) -> bytes:
        try:
            doc = json.loads(body)
            command = codec.decode(json.dumps(doc["event"]).encode())
        except (ValueError, KeyError, TypeError) as exc:
            raise SchemaError(f"decide request: {exc}") from None
        spec = command_of(command)
        if spec is None or spec.decider != name:
            raise SchemaError(f"{command.type} from {command.source} is not a command {name} decides")
        outcome = await service.decide_command(command, timeout=float(doc.get("timeout") or 15.0))
        return json.dumps(
            {
                "seq": outcome.seqs[-1] if outcome.seqs else 0,
                "events": [codec.to_dict(e) for e in outcome.facts],
                "attempts": outcome.attempts,
            }
        ).encode()

    subs = [await bus.serve(decide_subject(name), answer, queue=f"hivebus-decide-{name}")]
    if instance:
        subs.append(await bus.serve(decide_subject(name, instance), answer))
    return subs
