"""``hivebus publish``: put one event on the bus, validated like any other."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hivebus.bus.client import Bus
from hivebus.bus.subjects import subject_for
from hivebus.cli.app import Hub, app, out, run, settings
from hivebus.errors import SchemaError
from hivebus.schemas import Event, registry
from hivebus.schemas.codec import validate_payload


def read_data(data: str) -> object:
    """``--data`` is JSON, or ``@path`` to a JSON file."""
    text = Path(data[1:]).read_text() if data.startswith("@") else data
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"--data is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


@app.command()
def publish(
    event_type: Annotated[str, typer.Argument(metavar="TYPE", help="Event type, e.g. ecr.bundle.approved")],
    data: Annotated[str, typer.Option("--data", "-d", help="Payload as JSON, or @file.json")],
    subject: Annotated[str | None, typer.Option(help="Aggregate the event is about (default: from the payload)")] = None,
    source: Annotated[str, typer.Option(help="Who emits it, e.g. user/alice")] = "user/cli",
    hub: Hub = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
) -> None:
    """Publish one event; prints its id and stream sequence. A bad payload is refused with the field."""
    spec = registry.spec(event_type)
    payload = validate_payload(spec.model, read_data(data))
    aggregate = subject or _default_subject(payload)
    event = Event.new(payload, source=source, subject=aggregate)

    async def go() -> int:
        async with await Bus.connect(settings(hub).nats_url) as bus:
            return await bus.publish(event)

    seq = run(go())
    if as_json:
        out.print_json(json.dumps({"id": event.id, "seq": seq, "subject": subject_for(event)}))
    else:
        out.print(f"published {event.type} id={event.id} seq={seq} on {subject_for(event)}")


def _default_subject(payload: object) -> str:
    for name in ("bundle_id", "job_id", "node", "node_id", "bucket_id", "id", "name"):
        value = getattr(payload, name, None)
        if isinstance(value, str) and value:
            return value
    raise SchemaError("cannot tell which aggregate this event is about", hint="pass --subject")
