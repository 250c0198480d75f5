"""The projector's batch size: throughput and time per batch, plotted to bench/projection_batch.png.

``-n`` ``data.reading`` events (20 nodes) are published once into DATA on one embedded server.
For each batch size (``PumpConfig.batch_size``, the most messages in one transaction) the
projector (all views) projects them from an empty DuckDB file until its DATA checkpoint is at
the end; every commit is timed. Printed per size: events/s, the mean messages a batch really
held (with a backlog, a batch takes what has arrived, up to the size), and the p50 / p99 time
from one commit to the next (reading, decoding, applying and committing one batch).

Baseline, per size: the same rows (read back from the projector's file) inserted into a fresh
file with DuckDB's Arrow insert, ``size`` rows per transaction: the write path's ceiling.

At a steady low rate the batch size does not matter: a batch is committed when its first
message has waited ``max_wait`` (50 ms) or when the streams go quiet (bench/latency.py).

    python bench/batches.py [-n 60000] [--sizes 250,1000,...] [--quick] [--plot bench/projection_batch.png]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import Timer, duckdb_arrow_insert, fresh_server, node_readings, projected_rows, rate

from hivebus.bus.client import Bus
from hivebus.bus.streams import DATA
from hivebus.config import Settings
from hivebus.projections.pump import PumpConfig
from hivebus.projections.runner import Projector, ProjectorConfig
from hivebus.projections.store import Prepared

HERE = Path(__file__).resolve().parent
FULL_SIZES = (500, 1000, 2500, 5000, 10_000, 20_000)
QUICK_SIZES = (500, 2500, 10_000)


class TimedProjector(Projector):
    """The projector, noting the time and size of every commit."""

    def __init__(self, bus: Bus, path: Path, config: ProjectorConfig) -> None:
        super().__init__(Settings(), bus, path, config=config)
        self.commits: list[tuple[float, int]] = []

    def _committed(self, prepared: Prepared) -> None:
        self.commits.append((time.perf_counter(), prepared.messages))
        super()._committed(prepared)


@dataclass
class Point:
    size: int
    per_second: float
    mean_batch: float
    p50_ms: float
    p99_ms: float
    arrow_per_second: float


async def project_with(bus: Bus, path: Path, n: int, size: int) -> tuple[float, TimedProjector]:
    config = ProjectorConfig(pump=PumpConfig(batch_size=size), serve_queries=False, rebuild_stale=False)
    projector = TimedProjector(bus, path, config)
    stop = asyncio.Event()
    with Timer() as t:
        task = asyncio.create_task(projector.run(stop))
        reached = await projector.wait_for({DATA: n}, 600)
    stop.set()
    await task
    assert reached, f"batch size {size}: the projector stopped at {projector.positions}"
    return t.seconds, projector


def per_batch_ms(commits: list[tuple[float, int]]) -> list[float]:
    """Milliseconds from each commit to the next (the first batch includes start-up: left out)."""
    times = [t for t, _ in commits]
    return [(b - a) * 1000 for a, b in itertools.pairwise(times)]


async def sweep(n: int, sizes: tuple[int, ...], work: Path) -> list[Point]:
    points = []
    with fresh_server("interval") as server:  # projection only reads: the server's fsync does not enter
        async with await Bus.connect(server.url) as bus:
            await bus.ensure_streams()
            await bus.publish_many(node_readings(n))
            rows = None
            for size in sizes:
                path = work / f"views-{size}.duckdb"
                seconds, projector = await project_with(bus, path, n, size)
                if rows is None:
                    rows = projected_rows(path)
                    assert rows.num_rows == n, f"the projector wrote {rows.num_rows} readings of {n}"
                arrow = duckdb_arrow_insert(rows, work / f"arrow-{size}.duckdb", size)
                gaps = sorted(per_batch_ms(projector.commits)) or [seconds * 1000]
                points.append(Point(
                    size=size,
                    per_second=n / seconds,
                    mean_batch=statistics.fmean(m for _, m in projector.commits),
                    p50_ms=statistics.median(gaps),
                    p99_ms=gaps[min(len(gaps) - 1, round(0.99 * (len(gaps) - 1)))],
                    arrow_per_second=n / arrow,
                ))
                path.unlink()
    return points


def plot(points: list[Point], n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [p.size for p in points]
    default = PumpConfig().batch_size
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    left.plot(sizes, [p.per_second for p in points], "o-", label="hivebus projector (12 views, checkpoints)")
    left.plot(sizes, [p.arrow_per_second for p in points], "s--", label="raw DuckDB Arrow insert (same rows)")
    for p in points:
        left.annotate(f"{p.mean_batch:,.0f}", (p.size, p.per_second), textcoords="offset points", xytext=(0, -13),
                      ha="center", fontsize=7, color="C0")
    left.set(xscale="log", yscale="log", xlabel="batch size (most messages per transaction)", ylabel="events/s",
             title=f"Projection throughput, {n:,} readings\n(numbers: messages a batch really held, mean)")
    left.set_ylim(bottom=min(p.per_second for p in points) / 1.5)  # room for the numbers
    right.plot(sizes, [p.p50_ms for p in points], "o-", label="p50")
    right.plot(sizes, [p.p99_ms for p in points], "^-", label="p99")
    right.set(xscale="log", yscale="log", xlabel="batch size (most messages per transaction)",
              ylabel="ms per batch (commit to commit)", title="Time per batch")
    for ax in (left, right):
        ax.axvline(default, color="grey", linestyle=":", linewidth=1, label=f"default ({default:,})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("bench/batches.py (written by bench/run.py)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=60_000)
    ap.add_argument("--sizes", default="")
    ap.add_argument("--quick", action="store_true", help=f"n=10,000, sizes {QUICK_SIZES}")
    ap.add_argument("--plot", type=Path, default=HERE / "projection_batch.png")
    args = ap.parse_args()
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    if args.sizes:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    if args.quick:
        args.n = 10_000
    with tempfile.TemporaryDirectory(prefix="hivebus-bench-batches-") as d:
        points = asyncio.run(sweep(args.n, sizes, Path(d)))
    print(f"projector batch size sweep over {args.n:,} readings (default size {PumpConfig().batch_size:,})")
    print(f"  {'size':>7} {'projector':>11} {'mean batch':>11} {'p50/batch':>10} {'p99/batch':>10} {'raw Arrow':>11} {'ratio':>6}")
    for p in points:
        print(f"  {p.size:>7,} {rate(1, 1 / p.per_second):>11} {p.mean_batch:>11,.0f} {p.p50_ms:>8.1f}ms "
              f"{p.p99_ms:>8.1f}ms {rate(1, 1 / p.arrow_per_second):>11} {p.per_second / p.arrow_per_second:>6.3f}")
    plot(points, args.n, args.plot)
    print(f"plot: {args.plot.relative_to(HERE.parent) if args.plot.is_relative_to(HERE.parent) else args.plot}")


if __name__ == "__main__":
    main()
