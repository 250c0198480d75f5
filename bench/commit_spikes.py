"""The projector's commit times batch by batch, and DuckDB's automatic checkpoints among them (issue 18).

Packed readings in a node outbox's form (``ingest.reading_bodies``, 2 nodes, 150 per DATA message) go
through a real ``Store`` (all views) in batches of ``--per`` readings, as the live projector commits them
under a steady load. Printed: each step's p50, the commits over ``--slow`` ms and where they fell. The
periodic ones are DuckDB checkpointing its WAL inside a commit, each time the WAL passes
``checkpoint_threshold`` (16 MB by default). ``--checkpoint-threshold`` opens the file with another
threshold. The store locks its configuration, so the bench patches the ``duckdb.connect`` that
``projections.duck`` calls. There is no process, no NATS and no other load here: on a loaded machine the
same checkpoints stall the live projector for 0.5-2 s (``projector.slow_batch``).

    python bench/commit_spikes.py [--per 1000] [-n 900000] [--checkpoint-threshold 64MB]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
from ingest import reading_bodies

from hivebus.bus import batch as wire
from hivebus.bus.consumer import RawMessage
from hivebus.projections import duck
from hivebus.projections.store import Slice, Store
from hivebus.projections.views import all_views


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per", type=int, default=1000, help="readings per batch")
    ap.add_argument("-n", type=int, default=900_000, help="readings in all")
    ap.add_argument("--checkpoint-threshold", default=None, help="e.g. 64MB (DuckDB's default: 16MB)")
    ap.add_argument("--slow", type=float, default=30.0, help="ms: commits slower than this are listed")
    args = ap.parse_args()
    if args.checkpoint_threshold:
        real = duckdb.connect

        def connect(path: str, read_only: bool = False, config: dict[str, Any] | None = None) -> Any:
            return real(path, read_only=read_only,
                        config={**(config or {}), "checkpoint_threshold": args.checkpoint_threshold})

        duck.duckdb.connect = connect  # type: ignore[assignment]
    bodies = reading_bodies(0, args.n, nodes=2)
    with tempfile.TemporaryDirectory(prefix="hivebus-bench-commits-") as d:
        store = Store(Path(d) / "views.duckdb", all_views())
        try:
            threshold = store.reader().execute("SELECT current_setting('checkpoint_threshold')").fetchone()
            seq, times = 0, []
            started = time.monotonic()
            for lo in range(0, args.n, args.per):
                chunk = bodies[lo : lo + args.per]
                messages = []
                for k in range(0, len(chunk), 150):
                    seq += 1
                    messages.append(RawMessage(seq, "data.W000.BATCH", wire.pack([b for _, _, b in chunk[k : k + 150]]), seq))
                a = time.perf_counter()
                prepared = store.prepare([Slice("DATA", messages)])
                b = time.perf_counter()
                store.commit(prepared)
                times.append((b - a, time.perf_counter() - b))
            elapsed = time.monotonic() - started
        finally:
            store.close()
    prepare = sorted(t[0] * 1e3 for t in times)
    commit = sorted(t[1] * 1e3 for t in times)

    def q(v: list[float], x: float) -> float:
        return v[min(len(v) - 1, int(x * len(v)))]

    slow = [(i, round(t[1] * 1e3)) for i, t in enumerate(times) if t[1] * 1e3 > args.slow]
    print(f"{args.n:,} readings in {len(times)} batches of {args.per:,} (checkpoint_threshold {threshold[0] if threshold else '?'}): "
          f"{args.n / elapsed:,.0f}/s")
    print(f"  prepare p50 {q(prepare, .5):.1f} ms; commit p50 {q(commit, .5):.1f}, p90 {q(commit, .9):.1f}, "
          f"p99 {q(commit, .99):.1f}, max {commit[-1]:.0f} ms")
    print(f"  {len(slow)} commits over {args.slow:g} ms, {sum(ms for _, ms in slow):,} ms in all (batch, ms): {slow}")


if __name__ == "__main__":
    main()
