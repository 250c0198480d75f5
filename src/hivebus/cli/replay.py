"""``hivebus replay rebuild`` and ``hivebus replay as-of``, with a progress bar per stream."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from hivebus.bus.client import Bus
from hivebus.cli.app import Hub, app, err, out, run, settings
from hivebus.errors import ProjectionError, RequestTimeout
from hivebus.projections.views.base import STREAMS

replay_app = typer.Typer(name="replay", help="Rebuild views from the log, or build them as of a point in time.",
                         no_args_is_help=True)
app.add_typer(replay_app, name="replay")

Views = Annotated[list[str] | None, typer.Option("--view", "-v", help="A view to rebuild (default: all); repeatable")]


class Bars:
    """One bar per stream: messages applied out of the target."""

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=err, transient=False)
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Bars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, positions: dict[str, int], targets: dict[str, int]) -> None:
        for stream in STREAMS:
            total = targets.get(stream, 0)
            if stream not in self.tasks:
                self.tasks[stream] = self.progress.add_task(stream, total=max(total, 1))
            self.progress.update(self.tasks[stream], total=max(total, 1),
                                 completed=min(positions.get(stream, 0), total) if total else 1)


@replay_app.command("rebuild")
def rebuild(
    views: Views = None,
    db: Annotated[Path | None, typer.Option(help="Rebuild this file offline (no projector may have it open)")] = None,
    hub: Hub = None,
) -> None:
    """Rebuild views from sequence 1 and swap them in (blue/green); queries keep being answered."""
    config = settings(hub)
    if db is not None:
        from hivebus.replay.offline import rebuild_file

        async def offline() -> Any:
            async with await Bus.connect(config.nats_url, name="hivebus-replay") as bus:
                with Bars() as bars:
                    return await rebuild_file(bus, db, views, bars.update)

        report = run(offline())
        out.print(f"rebuilt {', '.join(report.views)} in {report.path}: {report.messages} messages in "
                  f"{report.seconds:.1f}s; positions {report.positions}")
        return
    run(_rebuild_live(config.nats_url, views))


async def _rebuild_live(url: str, views: list[str] | None) -> None:
    from hivebus.projections.runner import PROGRESS_SUBJECT, REBUILD_SUBJECT

    async with await Bus.connect(url, name="hivebus-replay") as bus:
        updates: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_progress(msg: Any) -> None:
            body = json.loads(msg.data)
            body["_subject"] = msg.subject
            await updates.put(body)

        sub = await bus.nc.subscribe(f"{PROGRESS_SUBJECT}.*", cb=on_progress)
        try:
            reply = json.loads(await bus.request(REBUILD_SUBJECT, {"views": views}, timeout=10.0))
            if "error" in reply:
                raise ProjectionError(reply["error"])
            err.print(f"rebuilding {', '.join(reply['views'])} (projector at {reply['positions']})")
            with Bars() as bars:
                while True:
                    try:
                        async with asyncio.timeout(600):
                            body = await updates.get()
                    except TimeoutError:
                        raise RequestTimeout("no progress from the projector for 10 minutes") from None
                    if body["_subject"] != reply["progress"]:
                        continue
                    if body.get("phase") == "build":
                        bars.update(body["positions"], body["targets"])
                    elif body.get("phase") == "failed":
                        raise ProjectionError(f"the rebuild failed: {body.get('error')}")
                    elif body.get("phase") == "done":
                        bars.update(body["positions"], body["positions"])
                        break
            out.print(f"rebuilt {', '.join(body['views'])}: {body['messages']} messages in {body['seconds']}s; "
                      f"swapped in at {body['positions']}")
        finally:
            await sub.unsubscribe()


@replay_app.command("as-of")
def as_of(
    out_path: Annotated[Path, typer.Option("--out", help="The DuckDB file to write (replaced if it exists)")],
    to_seq: Annotated[int | None, typer.Option(help="Up to this EVENTS sequence")] = None,
    as_of_time: Annotated[str | None, typer.Option("--as-of", help="Up to this time (ISO 8601, UTC if no zone)")] = None,
    views: Views = None,
    hub: Hub = None,
) -> None:
    """Build the views as they were at an EVENTS sequence or a time, into a separate file."""
    from hivebus.replay.offline import as_of as build_as_of

    when = _time(as_of_time) if as_of_time else None
    config = settings(hub)

    async def go() -> Any:
        async with await Bus.connect(config.nats_url, name="hivebus-replay") as bus:
            with Bars() as bars:
                return await build_as_of(bus, out_path, to_seq=to_seq, when=when, names=views, progress=bars.update)

    report = run(go())
    out.print(f"built {', '.join(report.views)} as of {report.positions} into {report.path} "
              f"({report.messages} messages, {report.seconds:.1f}s); query it with `hivebus query --db {report.path} ...`")


def _time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ProjectionError(f"--as-of {text!r} is not an ISO 8601 time", hint="e.g. 2025-05-01T10:30:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
