"""Build views from the log into a DuckDB file: the engine of rebuilds and as-of snapshots.

A ``Build`` is a fresh ``Store`` at a new path fed by the same ``Pump`` the live projector uses
(same decoding, de-duplication and views), reading each stream from its first message up to a
target sequence. Being the same code path is what makes a rebuild give the live file's rows
(guarantee 6). A build never publishes dead letters: the messages it finds bad were
dead-lettered when the live projector met them, and the ``dead_letters`` view is rebuilt from
the DEADLETTERS stream like any other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from hivebus.bus.client import Bus
from hivebus.errors import ProjectionError
from hivebus.projections.pump import Pump, PumpConfig
from hivebus.projections.store import Prepared, Store
from hivebus.projections.views import View
from hivebus.projections.views.base import STREAMS

T = TypeVar("T")
Progress = Callable[[dict[str, int], dict[str, int]], None]
"""``progress(positions, targets)``, called after every committed batch."""


def remove_db(path: Path) -> None:
    """Delete a DuckDB file and its write-ahead log."""
    for p in (path, path.with_name(path.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


@dataclass
class Build:
    """A store built from the log on its own writer thread (DuckDB connections are not shared)."""

    bus: Bus
    path: Path
    views: Sequence[View]
    sql_views: bool = True
    config: PumpConfig = field(default_factory=lambda: PumpConfig(batch_size=20_000, read_batch=5000))
    store: Store | None = None
    writer: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hivebus-build")
    )
    messages: int = 0

    async def in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.writer, fn, *args)

    async def open(self) -> Store:
        remove_db(self.path)
        self.store = await self.in_writer(lambda: Store(self.path, self.views, sql_views=self.sql_views))
        return self.store

    async def run_to(self, targets: dict[str, int], progress: Progress | None = None) -> None:
        """Apply every stream up to ``targets`` (inclusive)."""
        store = self.store or await self.open()

        def committed(prepared: Prepared) -> None:
            self.messages += prepared.messages
            if progress is not None:
                progress(dict(prepared.positions), targets)

        pump = Pump(self.bus, store, self.writer, config=self.config, targets=targets,
                    dead_letters=False, on_commit=committed)
        await pump.run(asyncio.Event())
        if progress is not None:
            progress(dict(store.positions), targets)

    def reached(self, targets: dict[str, int]) -> bool:
        """Whether the build stands exactly at ``targets`` (what a swap requires)."""
        assert self.store is not None
        return all(self.store.positions.get(s, 0) == n for s, n in targets.items())

    async def close(self, *, keep: bool = True) -> None:
        if self.store is not None:
            if keep:
                await self.in_writer(self.store.checkpoint)
            await self.in_writer(self.store.close)
            self.store = None
        self.writer.shutdown(wait=True)
        if not keep:
            remove_db(self.path)


async def stream_ends(bus: Bus, streams: Sequence[str] = STREAMS) -> dict[str, int]:
    """The last sequence of each stream now (0 for an empty or missing stream)."""
    ends = {}
    for stream in streams:
        try:
            ends[stream] = await bus.last_seq(stream)
        except NotFoundError:
            ends[stream] = 0
    return ends


async def seq_at_time(bus: Bus, stream: str, when: datetime) -> int:
    """The last sequence of ``stream`` stored at or before ``when``."""
    start = when.astimezone(UTC) + timedelta(microseconds=1)
    try:
        info = await bus.js.add_consumer(
            stream,
            ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.BY_START_TIME,
                           opt_start_time=start, mem_storage=True, inactive_threshold=5.0),
        )
    except NotFoundError:
        return 0
    with contextlib.suppress(Exception):
        await bus.js.delete_consumer(stream, info.name)
    return int(info.delivered.stream_seq) if info.delivered is not None else 0


async def time_of_seq(bus: Bus, stream: str, seq: int) -> datetime:
    """When ``stream`` stored message ``seq``."""
    try:
        msg = await bus.js.get_msg(stream, seq=seq)
    except NotFoundError:
        raise ProjectionError(f"{stream} has no message {seq}", hint="see `hivebus query \"SELECT max(seq) FROM events\"`") from None
    when = msg.time
    if isinstance(when, str):
        when = datetime.fromisoformat(when.replace("Z", "+00:00"))
    if when is None:
        raise ProjectionError(f"{stream} message {seq} carries no time")
    return when


async def as_of_targets(bus: Bus, *, to_seq: int | None = None, as_of: datetime | None = None) -> dict[str, int]:
    """Per-stream cutoffs: ``as_of`` a time, or ``to_seq`` of EVENTS (the other streams are cut at
    the time that message was stored)."""
    if (to_seq is None) == (as_of is None):
        raise ProjectionError("give either --to-seq or --as-of")
    if to_seq is not None:
        ends = await stream_ends(bus, ["EVENTS"])
        if to_seq < 1 or to_seq > ends["EVENTS"]:
            raise ProjectionError(f"--to-seq {to_seq} is not between 1 and the last EVENTS sequence {ends['EVENTS']}")
        as_of = await time_of_seq(bus, "EVENTS", to_seq)
        targets = {s: await seq_at_time(bus, s, as_of) for s in STREAMS if s != "EVENTS"}
        return {"EVENTS": to_seq, **targets}
    assert as_of is not None
    return {s: await seq_at_time(bus, s, as_of) for s in STREAMS}


class Throughput:
    """Messages per second since it was made, for progress lines."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def rate(self, messages: int) -> float:
        return messages / max(time.monotonic() - self.started, 1e-9)
