"""Edge outbox: durable append rate, drain rate after reconnect, and agent RSS with a backlog.

1. append: N ``data.reading`` events appended durably (the call returns once the WAL is
   fsync'ed), as the intake does (one ``submit`` per event, group commit) and in batches;
   baseline: raw sqlite3 ``executemany`` of the same rows into the same kind of table
   (WAL, synchronous=FULL), in the same run.
2. drain: the outbox holds N events and the hub comes back; time until the forwarder has
   everything acknowledged and deleted. Baseline: raw nats-py ``publish_async`` of the same
   bytes (same subjects, bodies and Nats-Msg-Id) on the same server, in the same run. Sides
   alternate twice, each on a freshly created stream; the best of each counts.
3. rss: a real ``NodeAgent`` (hub unreachable) takes ``--buffered`` readings through its
   intake into the outbox; its resident set size is sampled every 10% (in a child process,
   so nothing of steps 1-2 is counted).

    python bench/outbox.py [--quick] [-n 100000] [--buffered 1000000 (0: skip)] [--fsync always|interval]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from common import Timer, drain_copy, fresh_data_stream, fresh_server, rate, result

from hivebus.bus.client import Bus
from hivebus.bus.streams import DATA
from hivebus.edge.db import NodeDatabase
from hivebus.edge.forwarder import ForwarderOptions
from hivebus.edge.outbox import Outbox, OutboxLimits
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event

NODE = "W012"
LIMITS = OutboxLimits(max_bytes=8 << 30)


def readings(n: int) -> list[Event]:
    t0 = time.time_ns()
    meta = {"sensor": "bme680", "node": NODE, "vsn": NODE, "host": "bench"}
    return [
        Event.new(
            Reading(
                name="env.temperature", value=20.0 + (i % 100) / 10, timestamp=t0 + i, meta=meta
            ),
            source=f"node/{NODE}",
            subject=NODE,
        )
        for i in range(n)
    ]


# --- 1. append ----------------------------------------------------------------------------


async def append_each(path: Path, events: list[Event]) -> float:
    db = await NodeDatabase.open(path)
    outbox = await Outbox.open(db, NODE, LIMITS)
    with Timer() as t:
        futures = [outbox.submit([e]) for e in events]
        for future in futures:
            await future
    await outbox.close()
    await db.close()
    return t.seconds


async def append_batched(path: Path, events: list[Event], size: int = 500) -> float:
    db = await NodeDatabase.open(path)
    outbox = await Outbox.open(db, NODE, LIMITS)
    with Timer() as t:
        await asyncio.gather(
            *(outbox.append_many(events[i : i + size]) for i in range(0, len(events), size))
        )
    await outbox.close()
    await db.close()
    return t.seconds


def raw_sqlite(
    path: Path, rows: list[tuple[int, int, int, str, str, bytes]], size: int = 5000
) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE readings (nodeseq INTEGER PRIMARY KEY, t INTEGER, size INTEGER, subject TEXT, msg_id TEXT, body BLOB)"
    )
    with Timer() as t:
        for i in range(0, len(rows), size):
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?)", rows[i : i + size])
            conn.execute("COMMIT")
    conn.close()
    return t.seconds


async def bench_append(n: int, work: Path) -> Path:
    """Runs the append benchmarks; returns an outbox file holding n events, for the drain."""
    events = readings(n)
    gc.collect()
    gc.freeze()  # the prebuilt events are not the outbox's garbage to scan
    each = await append_each(work / "each.db", events)
    events2 = readings(n)
    batched = await append_batched(work / "batched.db", events2)
    db = await NodeDatabase.open(work / "each.db")
    rows = await db.call(
        lambda: db.conn.execute(
            "SELECT nodeseq, t, size, subject, msg_id, body FROM readings"
        ).fetchall()
    )
    await db.close()
    raw = raw_sqlite(work / "raw.db", rows)
    gc.unfreeze()
    print(f"append {n:,} data.reading, durable (WAL, synchronous=FULL, group commit)")
    print(f"  outbox submit per event (intake) : {rate(n, each)}")
    print(f"  outbox append_many of 500        : {rate(n, batched)}")
    print(f"  raw sqlite executemany of 5000   : {rate(n, raw)}  (pre-encoded rows: the floor)")
    print(f"  ratio per-event/raw              : {raw / each:.2f}")
    result("outbox append, submit per event (events/s)", n / each, "events/s", n / raw,
           "sqlite3 executemany of 5000, pre-encoded")
    return work / "each.db"


# --- 2. drain -----------------------------------------------------------------------------


async def raw_publish_async(bus: Bus, wire: list[tuple[str, bytes, str]]) -> float:
    js = bus.nc.jetstream(publish_async_max_pending=8192)
    with Timer() as t:
        for subject, payload, msg_id in wire:
            await js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id})
        await js.publish_async_completed()
    return t.seconds


async def bench_drain(source: Path, fsync: str, work: Path) -> None:
    conn = sqlite3.connect(source)
    wire = [
        (s, bytes(b), m)
        for s, b, m in conn.execute("SELECT subject, body, msg_id FROM readings ORDER BY nodeseq")
    ]
    conn.close()
    n = len(wire)
    with fresh_server(fsync) as server:
        async with await Bus.connect(server.url) as bus:
            await bus.ensure_streams()
            raw_times, ours = [], []
            for _ in range(2):
                await fresh_data_stream(bus)
                raw_times.append(await raw_publish_async(bus, wire))
                await fresh_data_stream(bus)
                # one message per reading, as the raw side publishes them: the same bytes on the wire
                # (packed readings are bench/ingest.py's comparison)
                seconds, held = await drain_copy(server.url, source, work, NODE, LIMITS, ForwarderOptions(pack=1))
                assert held == n
                stored = (await bus.js.stream_info(DATA)).state.messages
                assert stored == n, f"drain stored {stored} of {n}"
                ours.append(seconds)
    raw, drained = min(raw_times), min(ours)
    print(f"drain {n:,} buffered events after reconnect (server fsync={fsync})")
    print(f"  raw nats-py publish_async (same bytes) : {rate(n, raw)}")
    print(f"  outbox forwarder (ack, then delete)    : {rate(n, drained)}")
    print(f"  ratio forwarder/raw                    : {raw / drained:.2f}")
    result(f"outbox drain after reconnect, fsync={fsync} (events/s)", n / drained, "events/s", n / raw,
           "nats-py publish_async, same bytes")


# --- 3. rss -------------------------------------------------------------------------------


async def rss_child(buffered: int) -> None:
    from hivebus.edge.agent import AgentConfig, NodeAgent
    from hivebus.logs import configure_logging

    configure_logging("error")
    with tempfile.TemporaryDirectory(prefix="hivebus-bench-rss-") as d:
        config = AgentConfig.build(
            NODE,
            "nats://127.0.0.1:1",
            data_dir=Path(d),
            heartbeat_seconds=3600,
            metrics_seconds=3600,
            outbox=LIMITS,
        )
        agent = NodeAgent(config)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await agent.ready.wait()
        me = psutil.Process()
        step = max(1, buffered // 10)
        chunk = 2000
        samples: list[tuple[int, int]] = []
        t0 = time.time_ns()
        with Timer() as t:
            for done in range(0, buffered, chunk):
                batch = [
                    Reading(name="env.temperature", value=20.0 + (i % 97) / 10, timestamp=t0 + i)
                    for i in range(done, done + chunk)
                ]
                await agent.intake.accept(batch)
                await agent.intake.drain()
                if (done + chunk) % step == 0:
                    gc.collect()
                    samples.append((done + chunk, me.memory_info().rss))
        backlog = agent.outbox.backlog_now()
        stop.set()
        await task
    first, last = samples[0][1], samples[-1][1]
    peak = max(rss for _, rss in samples)
    print(
        f"agent RSS with a growing backlog (hub unreachable; {buffered:,} readings through the intake in {t.seconds:.0f} s)"
    )
    for n, rss in samples:
        print(f"  {n:>9,} buffered: {rss / 2**20:6.1f} MiB")
    print(f"  outbox: {backlog[0]:,} events, {backlog[1] / 2**20:.0f} MiB on disk")
    print(
        f"  growth from {samples[0][0]:,} to {samples[-1][0]:,} buffered: {(last - first) / 2**20:+.1f} MiB (peak {peak / 2**20:.1f} MiB)"
    )
    result(f"agent RSS with {buffered:,} readings buffered offline (MiB)", peak / 2**20, "MiB")


def bench_rss(buffered: int) -> None:
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(buffered)],
        capture_output=True,
        text=True,
        check=False,
    )
    print(out.stdout.strip())
    if out.returncode:
        print(out.stderr[-2000:], file=sys.stderr)
        raise SystemExit(out.returncode)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--buffered", type=int, default=1_000_000)
    ap.add_argument("--fsync", default="always", choices=["always", "interval"])
    ap.add_argument("--quick", action="store_true", help="n=5,000, buffered=50,000")
    ap.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        asyncio.run(rss_child(args.rss_child))
        return
    if args.quick:
        args.n, args.buffered = 5_000, 50_000
    with tempfile.TemporaryDirectory(prefix="hivebus-bench-outbox-") as d:
        work = Path(d)
        source = asyncio.run(bench_append(args.n, work))
        asyncio.run(bench_drain(source, args.fsync, work))
    if args.buffered > 0:
        bench_rss(args.buffered)


if __name__ == "__main__":
    main()
