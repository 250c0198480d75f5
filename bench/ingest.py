"""Readings at fleet scale (issue 18): hub ingest with fsync=always, projection vs raw DuckDB, replay.

1. ingest: ``-n`` ``data.reading`` events of one node sit in its outbox (SQLite, as the agent
   leaves them); the hub runs with ``fsync=always`` (``sync_interval: always``, hivebus's
   default: every stored message is fsync'ed before its ack). Time until the real
   ``Forwarder`` has every reading acknowledged and deleted from the outbox, side by side
   in the same run on the same server, alternating, best of two each:
   - one message per reading (``ForwarderOptions(pack=1)``: what every node sent before
     issue 18);
   - batched (the default: up to 1,000 readings or 256 KiB per DATA message).
   Every reading is checked to be in DATA exactly once (readings counted inside the
   messages). Printed: readings stored per second and the ratio batched / unbatched.
2. projection: ``-p`` readings of 20 nodes are put in DATA (as the forwarder sends them:
   batched; and, for comparison, one message per reading), then, in the same run:
   - the projector (all views) from an empty file until its DATA checkpoint is committed;
   - raw DuckDB: the very rows it wrote (read back as Arrow) inserted into a fresh file's
     ``readings`` table, 10,000 rows per transaction: the write path's ceiling, without
     NATS or decoding. Best of two each; printed: both rates and the ratio.
3. replay: ``--replay`` readings (20 nodes, packed as the forwarder packs them: up to 1,000
   readings or 256 KiB per DATA message) rebuilt into a fresh file by ``hivebus replay``'s
   engine (``replay.build.Build``); seconds, and readings per second. The bodies are written
   from a template of ``codec.encode``'s output (checked against it), in parts of 100,000:
   ``--replay 10000000`` stores 4 GB of readings first (not timed).

    python bench/ingest.py [-n 50000] [-p 200000] [--replay 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import fields
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
from common import (
    SERIES,
    Timer,
    drain_copy,
    duckdb_arrow_insert,
    fresh_data_stream,
    fresh_server,
    node_readings,
    projected_rows,
    rate,
    result,
)
from project import project

from hivebus.bus.client import Bus
from hivebus.bus.publisher import Outgoing
from hivebus.bus.streams import DATA
from hivebus.bus.subjects import subject_for
from hivebus.edge.db import NodeDatabase
from hivebus.edge.forwarder import ForwarderOptions
from hivebus.edge.outbox import Outbox, OutboxLimits
from hivebus.projections.duck import to_arrow_reader
from hivebus.projections.pump import PumpConfig
from hivebus.projections.views import all_views
from hivebus.projections.views.readings import ReadingsView
from hivebus.replay.build import Build, remove_db
from hivebus.schemas import codec
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event

try:  # the batch wire format (issue 18); absent before it
    from hivebus.bus import batch as wire
except ImportError:  # pragma: no cover - the baseline run before issue 18
    wire = None  # type: ignore[assignment]

NODE = "W042"
LIMITS = OutboxLimits(max_bytes=8 << 30)
BATCHED = wire is not None and "pack" in {f.name for f in fields(ForwarderOptions)}


def one_node_readings(n: int) -> list[Event]:
    t0 = time.time_ns() - n * 1000
    meta = {"sensor": "bme680", "plugin": "waggle/plugin-bme680:0.2.1", "vsn": NODE}
    return [
        Event.new(Reading(name="env.temperature", value=20.0 + (i % 100) / 10, timestamp=t0 + i * 1000, meta=meta),
                  source=f"node/{NODE}", subject=NODE)
        for i in range(n)
    ]


async def fill_outbox(path: Path, n: int) -> None:
    db = await NodeDatabase.open(path)
    outbox = await Outbox.open(db, NODE, LIMITS)
    events = one_node_readings(n)
    await asyncio.gather(*(outbox.append_many(events[i : i + 2000]) for i in range(0, n, 2000)))
    await outbox.close()
    await db.close()


async def stored_readings(bus: Bus) -> tuple[int, int]:
    """(messages, readings) in DATA, every reading counted once by its nodeseq."""
    messages, seqs = 0, set()
    async for chunk in bus.read(DATA, stop_at_end=True, batch=5000):
        for m in chunk:
            messages += 1
            bodies = wire.unpack(m.data) if wire is not None else [m.data]
            for body in bodies:
                seqs.add(codec.decode(body).nodeseq)
    return messages, len(seqs)


async def ingest(n: int, work: Path) -> None:
    source = work / "outbox.db"
    await fill_outbox(source, n)
    sides: dict[str, ForwarderOptions] = {"one message per reading": ForwarderOptions(**({"pack": 1} if BATCHED else {}))}
    if BATCHED:
        sides["batched"] = ForwarderOptions()
    times: dict[str, list[float]] = {name: [] for name in sides}
    shape: dict[str, int] = {}
    with fresh_server("always") as server:
        async with await Bus.connect(server.url) as bus:
            await bus.ensure_streams()
            for _ in range(2):  # alternate, keep the best of each: fsyncs move with the machine
                for name, options in sides.items():
                    await fresh_data_stream(bus)
                    seconds, held = await drain_copy(server.url, source, work, NODE, LIMITS, options)
                    messages, readings = await stored_readings(bus)
                    assert held == n and readings == n, f"{name}: stored {readings} of {n} readings"
                    times[name].append(seconds)
                    shape[name] = messages
    print(f"hub ingest of {n:,} readings from one node's outbox, server fsync=always")
    best = {name: n / min(t) for name, t in times.items()}
    for name, per_s in best.items():
        print(f"  {name:<24}: {per_s:>9,.0f} readings/s  ({shape[name]:,} DATA messages)")
    unbatched = best["one message per reading"]
    if "batched" in best:
        print(f"  ratio batched / unbatched : {best['batched'] / unbatched:.1f}")
        result("hub ingest, fsync=always, batched vs one message per reading (readings/s)", best["batched"],
               "readings/s", unbatched, "one DATA message per reading")
    else:
        result("hub ingest, fsync=always, one message per reading (readings/s)", unbatched, "readings/s")


def wire_messages(events: list[Event], batched: bool) -> list[Outgoing]:
    """DATA messages for ``events`` (with nodeseqs) as nodes send them."""
    if not batched:
        return [Outgoing(subject_for(e), codec.encode(e), e.id) for e in events]
    assert wire is not None
    by_node: dict[str, list[Event]] = {}
    for e in events:
        by_node.setdefault(e.node or "", []).append(e)
    out = []
    for node, evs in by_node.items():
        for lo in range(0, len(evs), 1000):
            part = evs[lo : lo + 1000]
            bodies = [codec.encode(e) for e in part]
            out.append(Outgoing(wire.batch_subject(node), wire.pack(bodies), wire.batch_id(node, [e.id for e in part])))
    return out


async def projection(n: int, work: Path) -> None:
    events = node_readings(n)
    formats = ["batched", "one message per reading"] if BATCHED else ["one message per reading"]
    figures: dict[str, tuple[float, float]] = {}
    with fresh_server("interval") as server:
        async with await Bus.connect(server.url) as bus:
            await bus.ensure_streams()
            for fmt in formats:
                await fresh_data_stream(bus)
                messages = wire_messages(events, fmt == "batched")
                for lo in range(0, len(messages), 5000):
                    await bus.publish_raw_many(messages[lo : lo + 5000])
                ends = {DATA: len(messages)}
                ours, raw = [], []
                for i in range(2):  # alternate, keep the best of each
                    db = work / f"views-{fmt[:3]}-{i}.duckdb"
                    ours.append(await project(bus, db, ends))
                    rows = projected_rows(db)
                    assert rows.num_rows == n, f"the projector wrote {rows.num_rows} readings of {n}"
                    raw.append(duckdb_arrow_insert(rows, work / f"arrow-{fmt[:3]}-{i}.duckdb", PumpConfig().batch_size))
                figures[fmt] = (n / min(ours), n / min(raw))
    print(f"projection of {n:,} readings (20 nodes) into DuckDB (all views), same server, same run")
    for fmt, (ours_rate, raw_rate) in figures.items():
        print(f"  {fmt}: projector {ours_rate:>9,.0f}/s, raw DuckDB Arrow insert {raw_rate:>9,.0f}/s, "
              f"ratio {ours_rate / raw_rate:.3f}")
    for fmt, (ours_rate, raw_rate) in figures.items():
        result(f"projection of readings ({fmt}) vs raw DuckDB Arrow insert (readings/s)", ours_rate, "readings/s",
               raw_rate, "raw DuckDB Arrow insert, 10k rows/txn, same rows")


def reading_bodies(start: int, n: int, nodes: int = 20) -> list[tuple[str, int, bytes]]:
    """(node, nodeseq, body) of readings ``start`` .. ``start + n`` as ``common.node_readings``
    makes them (20 nodes taking turns, four series, a nodeseq per node), written straight from
    a template of what a node's outbox stores (``codec.encode``'s output with the nodeseq
    spliced in first, as ``Outbox._row`` writes it: the form every reading from a node has):
    10M ``Event`` objects would take longer to build than the replay takes (``check_template``
    holds the template to the codec and the outbox's splice)."""
    t0 = T0_NS
    out = []
    for i in range(start, start + n):
        node = f"W{i % nodes:03d}"
        seq = i // nodes + 1
        event_id = f"01BENCH{i:019d}"
        value = 20.0 + (i % 100) / 10
        out.append((node, seq, (
            f'{{"nodeseq":{seq},"specversion":"1.0","id":"{event_id}","type":"data.reading","dataversion":1,'
            f'"source":"node/{node}","subject":"{node}","time":"{TIME}","correlationid":"{event_id}",'
            f'"data":{{"name":"{SERIES[(i // nodes) % len(SERIES)]}","value":{value!r},'
            f'"timestamp":{t0 + i * 1000},"meta":{{"sensor":"bme680","plugin":"waggle/plugin-bme680:0.2.1",'
            f'"vsn":"{node}"}},"scope":"all"}}}}'
        ).encode()))
    return out


T0_NS = 1_790_000_000_000_000_000
TIME = "2026-09-21T12:26:40.123456Z"


def check_template() -> None:
    """The template writes exactly what a node's outbox stores for the same reading."""
    for i in (0, 1, 21, 12345):
        node, seq, raw = reading_bodies(i, 1)[0]
        event = Event.new(
            Reading(name=SERIES[(i // 20) % len(SERIES)], value=20.0 + (i % 100) / 10, timestamp=T0_NS + i * 1000,
                    meta={"sensor": "bme680", "plugin": "waggle/plugin-bme680:0.2.1", "vsn": node}),
            source=f"node/{node}", subject=node, id=f"01BENCH{i:019d}", time=datetime.fromisoformat(TIME))
        stored = b'{"nodeseq":%d,' % seq + codec.encode(event)[1:]  # as Outbox._row splices it
        assert stored == raw, (stored, raw)


def packed(readings: list[tuple[str, int, bytes]]) -> list[Outgoing]:
    """DATA messages as the forwarder packs them: per node, up to 1,000 readings or 256 KiB."""
    assert wire is not None
    by_node: dict[str, list[tuple[int, bytes]]] = {}
    for node, seq, raw in readings:
        by_node.setdefault(node, []).append((seq, raw))
    out = []
    for node, items in by_node.items():
        part: list[tuple[int, bytes]] = []
        size = wire.OVERHEAD
        for item in [*items, None]:
            if item is None or len(part) == wire.MAX_BATCH_READINGS or size + wire.PER_BODY + len(item[1]) > wire.MAX_BATCH_BYTES:
                if part:
                    msg_id = f"bench:{node}:{part[0][0]}-{part[-1][0]}"
                    out.append(Outgoing(wire.batch_subject(node), wire.pack([b for _, b in part]), msg_id))
                part, size = [], wire.OVERHEAD
            if item is not None:
                part.append(item)
                size += wire.PER_BODY + len(item[1])
    return out


async def replay(n: int, work: Path) -> None:
    check_template()
    with fresh_server("interval") as server:
        async with await Bus.connect(server.url) as bus:
            await bus.ensure_streams()
            stored = 0
            with Timer() as put:
                for lo in range(0, n, 100_000):  # generated and stored in parts: 10M bodies are 4 GB
                    messages = packed(reading_bodies(lo, min(100_000, n - lo)) if BATCHED else [])
                    if not BATCHED:
                        messages = wire_messages(node_readings(min(100_000, n - lo), start=lo), False)
                    for part in range(0, len(messages), 500):
                        await bus.publish_raw_many(messages[part : part + 500])
                    stored += len(messages)
            print(f"  ({n:,} readings stored as {stored:,} DATA messages in {put.seconds:.0f} s)")
            build = Build(bus, work / "replay.duckdb", all_views())
            with Timer() as t:
                await build.run_to({DATA: stored})
            per_txn = build.config.batch_size
            await build.close(keep=True)
    raw, rows = raw_insert_of(work / "replay.duckdb", work / "replay-raw.duckdb", per_txn)
    for path in (work / "replay.duckdb", work / "replay-raw.duckdb"):
        remove_db(path)
    assert rows == n, f"the replay wrote {rows} readings of {n}"
    how = "batched" if BATCHED else "one message each"
    print(f"replay of {n:,} readings ({how}, {stored:,} DATA messages) into a fresh file: "
          f"{rate(n, t.seconds)} ({t.seconds:.1f} s); raw DuckDB Arrow insert of the same rows: "
          f"{rate(n, raw)} ({raw:.1f} s), ratio {raw / t.seconds:.3f}")
    result(f"replay of {n:,} readings into a fresh file (s)", t.seconds, "s", raw,
           f"raw DuckDB Arrow insert of the rows it wrote, {per_txn // 1000}k rows/txn", lower_is_better=True)


def raw_insert_of(source: Path, target: Path, batch: int) -> tuple[float, int]:
    """Seconds to insert ``source``'s ``readings`` rows (read back as Arrow, ``batch`` rows
    per transaction) into a fresh file: the write path's ceiling for the replay (only the
    inserts are timed), and how many rows there were."""
    src = duckdb.connect(str(source), read_only=True)
    dst = duckdb.connect(str(target))
    dst.execute(ReadingsView.table.create_sql())
    seconds, rows = 0.0, 0
    try:
        reader = to_arrow_reader(src.sql("SELECT * FROM readings"), batch)
        for chunk in reader:
            table = pa.Table.from_batches([chunk])
            with Timer() as t:
                dst.execute("BEGIN TRANSACTION")
                dst.from_arrow(table).insert_into("readings")
                dst.execute("COMMIT")
            seconds += t.seconds
            rows += table.num_rows
    finally:
        src.close()
        dst.close()
    return seconds, rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=50_000, help="readings for the ingest benchmark")
    ap.add_argument("-p", type=int, default=200_000, help="readings for the projection benchmark")
    ap.add_argument("--replay", type=int, default=1_000_000, help="readings to replay (0: skip)")
    ap.add_argument("--quick", action="store_true", help="n=10,000, p=30,000, replay 100,000")
    args = ap.parse_args()
    if args.quick:
        args.n, args.p, args.replay = 10_000, 30_000, 100_000
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hivebus-bench-ingest-") as d:
        work = Path(d)
        asyncio.run(ingest(args.n, work))
        asyncio.run(projection(args.p, work))
        if args.replay:
            asyncio.run(replay(args.replay, work))
    print(f"(total {time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
