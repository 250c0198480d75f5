"""``hivebus.ses.dryrun``: what the scheduler would decide for a job, without publishing.

Request JSON: ``{"user": str, "spec": <job spec as in the YAML or JobSpec>, "job_id": str|null,
"policy": str|null, "max_nodes": int|null}``. Reply: ``Plan.to_json()`` (``decision``,
``placements``, ``goals``, ``reasons``, ``notes``) plus ``position`` (the last stream sequence
the scheduler had folded), or ``{"error", "kind"}``. The plan is computed on the scheduler's
live state, under the same lock as its decisions.
"""

from __future__ import annotations

import json
from typing import Any, Final

from pydantic import ValidationError

from hivebus.bus.client import Bus
from hivebus.errors import SchemaError
from hivebus.handlers.ses import SesHandler
from hivebus.schemas.ids import new_ulid
from hivebus.schemas.ses import JobSubmitted
from hivebus.services.handler_service import HandlerService

DRYRUN_SUBJECT: Final = "hivebus.ses.dryrun"


def submitted_from_request(request: dict[str, Any]) -> JobSubmitted:
    try:
        return JobSubmitted.model_validate(
            {
                "job_id": request.get("job_id") or f"dryrun-{new_ulid().lower()}",
                "user": request.get("user"),
                "spec": request.get("spec"),
                "policy": request.get("policy"),
                "max_nodes": request.get("max_nodes"),
            }
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SchemaError(f"dry-run request: {where}: {first['msg']}") from None


async def serve_dryrun(service: HandlerService, bus: Bus) -> Any:
    handler: SesHandler = service.handler

    async def answer(body: bytes) -> bytes:
        try:
            request = json.loads(body)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"dry-run request is not JSON: {exc.msg}") from None
        if not isinstance(request, dict):
            raise SchemaError("dry-run request must be a JSON object")
        submitted = submitted_from_request(request)
        async with service.lock:
            plan = handler.plan(service.driver.state, submitted)
            position = service.last_seq
        return json.dumps({**plan.to_json(), "position": position}).encode()

    return await bus.serve(DRYRUN_SUBJECT, answer, queue="hivebus-ses")
