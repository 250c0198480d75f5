"""Where the projector's time goes on packed readings (issue 18): a sampling profile of a real run.

``-p`` readings of 20 nodes are stored in DATA as the forwarder packs them (``ingest.packed``),
then the real projector (``bench/project.project``: all views, from an empty file) applies
them while a thread samples every thread's stack (``sys._current_frames``) every
``--interval`` seconds. Printed per thread (the event loop's and the writer's): the share of
samples in each function on the stack (inclusive) and at its top (self), and the wall time
spent in ``Store.prepare`` and ``Store.commit``. Then the raw DuckDB Arrow insert of the
rows it wrote, for the ratio (as ``ingest.py`` measures it).

With ``--compare A,B`` (settings of ``PumpConfig``, e.g. ``decode_ahead=False,decode_ahead=True``)
no profile is taken: the projector runs ``--rounds`` times with each setting, alternating, each
round followed by the raw insert of its rows; printed per setting: best time, its rate and the
ratio to the best raw insert of the same run.

    python bench/profile_projection.py [-p 100000] [--top 25]
    python bench/profile_projection.py -p 200000 --compare decode_ahead=False,decode_ahead=True
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from common import Timer, duckdb_arrow_insert, fresh_server, projected_rows
from ingest import packed, reading_bodies
from project import project

from hivebus.bus.client import Bus
from hivebus.bus.publisher import Outgoing
from hivebus.bus.streams import DATA
from hivebus.config import Settings
from hivebus.projections.pump import PumpConfig
from hivebus.projections.runner import Projector, ProjectorConfig
from hivebus.projections.store import Store


class Sampler(threading.Thread):
    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.stop = threading.Event()
        self.inclusive: dict[str, Counter[str]] = {}
        self.own: dict[str, Counter[str]] = {}
        self.samples: Counter[str] = Counter()

    def run(self) -> None:
        me = threading.get_ident()
        while not self.stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                name = names.get(ident, str(ident))
                if name.startswith("hivebus-projector"):
                    name = "writer"
                elif name.startswith("hivebus-decode"):
                    name = "decoder"
                elif name == "MainThread":
                    name = "loop"
                else:
                    continue
                seen: set[str] = set()
                top = True
                f = frame
                while f is not None:
                    code = f.f_code
                    key = f"{Path(code.co_filename).name}:{code.co_name}"
                    if top:
                        self.own.setdefault(name, Counter())[key] += 1
                        top = False
                    if key not in seen:
                        self.inclusive.setdefault(name, Counter())[key] += 1
                        seen.add(key)
                    f = f.f_back
                self.samples[name] += 1


def timed(cls: type, name: str, totals: Counter[str]) -> None:
    fn = getattr(cls, name)

    def wrapper(*args: object, **kwargs: object) -> object:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - t

    setattr(cls, name, wrapper)


async def store_packed(bus: Bus, p: int) -> list[Outgoing]:
    """``p`` readings of 20 nodes stored in DATA as the forwarder packs them; the messages."""
    messages = packed(reading_bodies(0, p))
    for lo in range(0, len(messages), 500):
        await bus.publish_raw_many(messages[lo : lo + 500])
    return messages


async def run(p: int, top: int, interval: float, work: Path) -> None:
    totals: Counter[str] = Counter()
    for name in ("prepare", "commit"):
        timed(Store, name, totals)
    with fresh_server("interval") as server:
        async with await Bus.connect(server.url) as bus:
            await bus.ensure_streams()
            messages = await store_packed(bus, p)
            sampler = Sampler(interval)
            sampler.start()
            seconds = await project(bus, work / "views.duckdb", {DATA: len(messages)})
            sampler.stop.set()
            sampler.join()
    rows = projected_rows(work / "views.duckdb")
    assert rows.num_rows == p, rows.num_rows
    raw = duckdb_arrow_insert(rows, work / "raw.duckdb", PumpConfig().batch_size)
    print(f"projection of {p:,} readings ({len(messages):,} DATA messages): {seconds:.2f} s ({p / seconds:,.0f}/s); "
          f"raw DuckDB Arrow insert {raw:.2f} s ({p / raw:,.0f}/s); ratio {raw / seconds:.3f}")
    print(f"  in Store.prepare {totals['prepare']:.2f} s, Store.commit {totals['commit']:.2f} s (writer thread)")
    for thread in ("loop", "writer", "decoder"):
        n = sampler.samples[thread]
        if not n:
            continue
        print(f"\n{thread}: {n} samples ({interval * 1000:.0f} ms apart)")
        print("  inclusive:")
        for key, c in sampler.inclusive[thread].most_common(top):
            print(f"    {100 * c / n:5.1f}%  {key}")
        print("  self:")
        for key, c in sampler.own[thread].most_common(top):
            print(f"    {100 * c / n:5.1f}%  {key}")


def setting(text: str) -> PumpConfig:
    """``name=value,...`` -> a ``PumpConfig`` (values: int, float, True/False)."""
    values: dict[str, object] = {}
    for item in filter(None, text.split(";")):
        name, _, raw = item.partition("=")
        values[name] = {"True": True, "False": False}.get(raw) if raw in ("True", "False") else (
            float(raw) if "." in raw else int(raw))
    return PumpConfig(**values)  # type: ignore[arg-type]


async def project_with(bus: Bus, path: Path, ends: dict[str, int], pump: PumpConfig) -> float:
    stop = asyncio.Event()
    projector = Projector(Settings(), bus, path, config=ProjectorConfig(pump=pump))
    with Timer() as t:
        task = asyncio.create_task(projector.run(stop))
        reached = await projector.wait_for(ends, 600)
    stop.set()
    await task
    assert reached, projector.positions
    return t.seconds


async def compare(p: int, settings: list[str], rounds: int, work: Path) -> None:
    with fresh_server("interval") as server:
        async with await Bus.connect(server.url) as bus:
            await bus.ensure_streams()
            messages = await store_packed(bus, p)
            times: dict[str, list[float]] = {s: [] for s in settings}
            raw: list[float] = []
            for r in range(rounds):
                for i, name in enumerate(settings):
                    db = work / f"views-{r}-{i}.duckdb"
                    times[name].append(await project_with(bus, db, {DATA: len(messages)}, setting(name)))
                    rows = projected_rows(db)
                    assert rows.num_rows == p, rows.num_rows
                    raw.append(duckdb_arrow_insert(rows, work / f"raw-{r}-{i}.duckdb", PumpConfig().batch_size))
    best_raw = min(raw)
    print(f"projection of {p:,} readings ({len(messages):,} DATA messages), best of {rounds} alternating; "
          f"raw DuckDB Arrow insert of the same rows {p / best_raw:,.0f}/s (best of {len(raw)})")
    for name, ts in times.items():
        print(f"  {name or 'defaults':<40}: {min(ts):.2f} s  {p / min(ts):>9,.0f}/s  ratio {best_raw / min(ts):.3f}"
              f"  (rounds: {', '.join(f'{t:.2f}' for t in ts)} s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-p", type=int, default=100_000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--interval", type=float, default=0.002)
    ap.add_argument("--compare", help="PumpConfig settings to compare, ','-separated (';' within one)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hivebus-bench-profile-") as d:
        if args.compare is not None:
            asyncio.run(compare(args.p, args.compare.split(","), args.rounds, Path(d)))
        else:
            asyncio.run(run(args.p, args.top, args.interval, Path(d)))


if __name__ == "__main__":
    main()
