"""Projection: the projector vs raw consumers draining the same messages, replay, data queries.

1. ``-n`` events of a realistic history (readings with the nodes' lifecycle events, jobs,
   bundles) are put in EVENTS and DATA. Then, on the same server in the same run:
   - raw nats-py: a pull consumer (``js.pull_subscribe`` + ``fetch``, no acks) drains both
     streams with no processing;
   - raw hivebus reader: ``Bus.read`` (the fast ordered reader the projector uses) drains them;
   - the projector: from an empty DuckDB file until every stream's checkpoint is committed
     (decode, de-duplicate, apply to all twelve views, commit).
   Printed: each rate and the ratio projector / raw (target >= 0.7 against nats-py).
2. Replay: ``--replay`` events rebuilt into a fresh file (the ``hivebus replay`` engine).
3. Data query: ``--readings`` readings written straight into a views file (24 h of 50 nodes x
   20 names), then ``hivebus.data.query(start="-1h", filter={"name": ...})`` on it (best of 3).
   Baseline: the same filter in plain DuckDB SQL on the same file to a DataFrame (``.df()``;
   meta becomes a column of dicts), and without the meta column, best of 3 each.

    python bench/project.py [-n 200000] [--replay 1000000] [--readings 10000000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from common import Timer, fresh_server, rate, result
from nats.js.api import AckPolicy, ConsumerConfig

from hivebus.bus.client import Bus
from hivebus.bus.streams import DATA, EVENTS
from hivebus.config import Settings
from hivebus.projections.runner import Projector
from hivebus.projections.store import Store
from hivebus.projections.views import all_views
from hivebus.replay.build import Build, stream_ends
from hivebus.replay.synthetic import stream as synthetic


async def publish_history(bus: Bus, n: int, nodes: int = 20) -> int:
    """About ``n`` events (``n`` is reached with readings; lifecycle events come on top)."""
    total, chunk = 0, []
    for event in synthetic(nodes=nodes, readings=int(n * 0.955), jobs=4, seed=1):
        chunk.append(event)
        if len(chunk) >= 20_000:
            await bus.publish_many(chunk)
            total += len(chunk)
            chunk = []
    if chunk:
        await bus.publish_many(chunk)
        total += len(chunk)
    return total


async def drain_nats_py(bus: Bus, ends: dict[str, int]) -> float:
    """A plain nats-py pull consumer per stream, fetching until it has every message."""
    with Timer() as t:
        for stream, subject in ((EVENTS, ">"), (DATA, "data.>")):
            if not ends[stream]:
                continue
            sub = await bus.js.pull_subscribe(subject if stream == DATA else "", stream=stream,
                                              config=ConsumerConfig(ack_policy=AckPolicy.NONE, mem_storage=True))
            got = 0
            while got < ends[stream]:
                msgs = await sub.fetch(2000, timeout=5)
                got += len(msgs)
            await sub.unsubscribe()
    return t.seconds


async def drain_fast_reader(bus: Bus, ends: dict[str, int]) -> float:
    with Timer() as t:
        for stream in (EVENTS, DATA):
            got = 0
            async for batch in bus.read(stream, stop_at_end=True):
                got += len(batch)
            assert got == ends[stream], (stream, got, ends[stream])
    return t.seconds


async def project(bus: Bus, path: Path, ends: dict[str, int]) -> float:
    stop = asyncio.Event()
    projector = Projector(Settings(), bus, path)
    with Timer() as t:
        task = asyncio.create_task(projector.run(stop))
        reached = await projector.wait_for({s: n for s, n in ends.items() if n}, 600)
    stop.set()
    await task
    assert reached, projector.positions
    return t.seconds


async def projection_vs_raw(n: int, workdir: Path) -> dict[str, float]:
    with fresh_server("interval") as server:
        async with await Bus.connect(server.url) as bus:
            await bus.ensure_streams()
            total = await publish_history(bus, n)
            ends = await stream_ends(bus)
            runs: dict[str, list[float]] = {"nats-py": [], "reader": [], "projector": []}
            for i in range(2):  # alternate, keep the best of each: the machine is shared
                runs["nats-py"].append(await drain_nats_py(bus, ends))
                runs["reader"].append(await drain_fast_reader(bus, ends))
                runs["projector"].append(await project(bus, workdir / f"views-{i}.duckdb", ends))
    raw, reader, ours = min(runs["nats-py"]), min(runs["reader"]), min(runs["projector"])
    print(f"projection of {total} events (EVENTS {ends[EVENTS]}, DATA {ends[DATA]}) into 12 views")
    print(f"  raw nats-py pull consumer, no processing : {rate(total, raw)}")
    print(f"  raw hivebus reader, no processing        : {rate(total, reader)}")
    print(f"  projector, checkpoints committed         : {rate(total, ours)}")
    print(f"  ratio projector / nats-py                : {raw / ours:.2f}")
    print(f"  ratio projector / hivebus reader         : {reader / ours:.2f}")
    result("projection vs raw nats-py drain (events/s)", total / ours, "events/s", total / raw,
           "nats-py pull consumer, no processing")
    return {"events": total, "nats_py_per_s": total / raw, "reader_per_s": total / reader,
            "projector_per_s": total / ours, "ratio_nats_py": raw / ours, "ratio_reader": reader / ours}


async def replay(n: int, workdir: Path) -> dict[str, float]:
    with fresh_server("interval") as server:
        async with await Bus.connect(server.url) as bus:
            await bus.ensure_streams()
            total = await publish_history(bus, n)
            ends = await stream_ends(bus)
            build = Build(bus, workdir / "replay.duckdb", all_views())
            with Timer() as t:
                await build.run_to(ends)
            await build.close(keep=False)
    print(f"replay of {total} events into a fresh file: {rate(total, t.seconds)} ({t.seconds:.1f}s)")
    result(f"replay of {total:,} events into a fresh file (events/s)", total / t.seconds, "events/s")
    return {"events": total, "replay_per_s": total / t.seconds}


def write_readings(path: Path, n: int, *, nodes: int = 50, names: int = 20, hours: float = 24.0) -> None:
    """``n`` readings spread evenly over the last ``hours``, in time order, straight into DuckDB."""
    import numpy as np

    store = Store(path, all_views())
    now = datetime.now(UTC)
    start_ns = int((now - timedelta(hours=hours)).timestamp() * 1e9)
    step = int(hours * 3600e9 / n)
    name_list = [f"env.metric_{i:02d}" for i in range(names - 1)] + ["env.temperature"]
    chunk = 1_000_000
    cur = store.reader()
    for lo in range(0, n, chunk):
        idx = np.arange(lo, min(n, lo + chunk))
        node_ids = [f"W{i % nodes:03d}" for i in idx]
        meta = pa.array([[("plugin", "waggle/plugin-bme680:0.2.1"), ("vsn", v)] for v in node_ids],
                        type=pa.map_(pa.string(), pa.string()))
        table = pa.table({
            "timestamp": pa.array(start_ns + idx * step, type=pa.timestamp("ns")),
            "name": pa.array([name_list[i % names] for i in idx]),
            "value": pa.array(np.sin(idx / 1000.0) * 10 + 20),
            "value_text": pa.nulls(len(idx), pa.string()),
            "node": pa.array(node_ids),
            "meta": meta,
            "seq": pa.array(idx + 1),
        })
        cur.register("chunk", table)
        cur.execute("INSERT INTO readings BY NAME SELECT * FROM chunk")
        cur.unregister("chunk")
    store.checkpoint()
    store.close()


def raw_duckdb_query(path: Path, name: str, columns: str) -> int:
    """What a user writes with DuckDB alone: the rows to a DataFrame; the row count."""
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        frame = con.execute(
            f"SELECT {columns} FROM readings WHERE name = ? AND timestamp >= ?",
            [name, datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)],
        ).df()
    finally:
        con.close()
    return len(frame)


def data_query(n: int, workdir: Path) -> dict[str, float]:
    import hivebus.data

    path = workdir / "readings.duckdb"
    with Timer() as w:
        write_readings(path, n)
    times: dict[str, list[float]] = {"hivebus": [], "raw": [], "raw without meta": []}
    rows = raw_rows = 0
    for _ in range(3):  # alternate
        with Timer() as t:
            frame = hivebus.data.query(start="-1h", filter={"name": "env.temperature"}, db=path)
        times["hivebus"].append(t.seconds)
        rows = len(frame)
        with Timer() as t:
            raw_rows = raw_duckdb_query(path, "env.temperature", "timestamp, name, value, meta")
        times["raw"].append(t.seconds)
        with Timer() as t:
            raw_duckdb_query(path, "env.temperature", "timestamp, name, value")
        times["raw without meta"].append(t.seconds)
    best = {k: min(v) * 1000 for k, v in times.items()}
    print(f"data query over {n} readings (written in {w.seconds:.0f}s): name filter, last hour -> "
          f"{rows} rows in {best['hivebus']:.0f} ms (DataFrame with meta.* columns; best of 3)")
    print(f"  raw DuckDB, same filter to a DataFrame: {raw_rows} rows in {best['raw']:.0f} ms "
          f"(meta as a column of dicts), {best['raw without meta']:.0f} ms without meta (best of 3)")
    result(f"data query, last hour of one name over {n:,} readings (ms)", best["hivebus"], "ms", best["raw"],
           "plain DuckDB SQL to a DataFrame, meta included", lower_is_better=True)
    return {"readings": n, "rows": rows, "ms": best["hivebus"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("--replay", type=int, default=1_000_000)
    ap.add_argument("--readings", type=int, default=10_000_000)
    ap.add_argument("--quick", action="store_true", help="10k / 30k / 500k")
    args = ap.parse_args()
    if args.quick:
        args.n, args.replay, args.readings = 10_000, 30_000, 500_000
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hivebus-bench-project-") as d:
        workdir = Path(d)
        asyncio.run(projection_vs_raw(args.n, workdir))
        asyncio.run(replay(args.replay, workdir))
        data_query(args.readings, workdir)
    print(f"(total {time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
