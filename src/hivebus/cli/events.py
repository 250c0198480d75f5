"""``hivebus publish`` (one event, validated like any other) and ``hivebus tail`` (follow them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hivebus.api import aggregate_of, connect, parse_since
from hivebus.bus.client import Bus
from hivebus.bus.subjects import subject_for
from hivebus.cli.app import Hub, app, out, run, settings
from hivebus.errors import SchemaError
from hivebus.schemas import Event, codec, registry
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
    aggregate = subject or aggregate_of(payload)
    event = Event.new(payload, source=source, subject=aggregate)

    async def go() -> int:
        async with await Bus.connect(settings(hub).nats_url) as bus:
            return await bus.publish(event)

    seq = run(go())
    if as_json:
        out.print_json(json.dumps({"id": event.id, "seq": seq, "subject": subject_for(event)}))
    else:
        out.print(f"published {event.type} id={event.id} seq={seq} on {subject_for(event)}")


@app.command()
def tail(
    to_edge: Annotated[str | None, typer.Option("--to-edge", help="What the hub sends to NODE ('*' for every node)")] = None,
    from_edge: Annotated[str | None, typer.Option("--from-edge", help="What NODE sends to the hub ('*' for every node)")] = None,
    type_glob: Annotated[str, typer.Option("--type", help="Only event types matching this glob, e.g. 'ses.*' or '*.fired'")] = "*",
    since: Annotated[str | None, typer.Option(help="Start from history: -1h, -30m, or an ISO time (default: only new events)")] = None,
    limit: Annotated[int, typer.Option(help="Stop after this many events (0 = follow forever)")] = 0,
    hub: Hub = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON envelope a line")] = False,
) -> None:
    """Follow events live (to-edge goals, from-edge triggers, the control log), optionally from a point in history."""
    start = parse_since(since) if since else None  # a bad --since fails before connecting

    async def go() -> None:
        shown = 0
        async with connect(settings(hub).nats_url, name="hivebus-tail") as api:
            async for seq, event in api.tail_with_seq(to_edge=to_edge, from_edge=from_edge, type=type_glob, since=start):
                _print_event(seq, subject_for(event), event, as_json)
                shown += 1
                if limit and shown >= limit:
                    return

    run(go())


def _print_event(seq: int, subject: str, event: Event, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"seq": seq, **codec.to_dict(event)}), flush=True)
        return
    data = json.dumps(event.data.model_dump(mode="json"), separators=(",", ":"))
    if len(data) > 160:
        data = data[:157] + "..."
    out.print(
        f"[dim]{event.time:%Y-%m-%d %H:%M:%S}[/] [cyan]{seq:>7}[/] [bold]{event.type}[/] "
        f"[magenta]{subject}[/] {data}",
        highlight=False,
        soft_wrap=True,
    )
