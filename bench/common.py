"""Shared bits of the benchmarks: a fresh embedded server, a reading workload, timing, peak RSS,
the machine description and the ``RESULT`` lines bench/run.py gathers into its summary table."""

from __future__ import annotations

import asyncio
import os
import platform
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer, ServerConfig
from hivebus.bus.streams import DATA
from hivebus.edge.db import NodeDatabase
from hivebus.edge.forwarder import Forwarder, ForwarderOptions
from hivebus.edge.outbox import Outbox, OutboxLimits
from hivebus.edge.uplink import Uplink
from hivebus.logs import configure_logging
from hivebus.projections.duck import to_arrow_table
from hivebus.projections.views.readings import ReadingsView
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event

configure_logging("warning")  # benchmarks print their figures; the logs would drown them


@contextmanager
def fresh_server(fsync: str = "always") -> Iterator[NatsServer]:
    with tempfile.TemporaryDirectory(prefix="hivebus-bench-") as d:
        server = NatsServer(ServerConfig(store_dir=Path(d), fsync=fsync))  # type: ignore[arg-type]
        server.start()
        try:
            yield server
        finally:
            server.stop()


async def fresh_data_stream(bus: Bus) -> None:
    """DATA deleted and created again, empty and numbered from 1: a purge would keep the
    duplicate window's ids, and a benchmark that publishes the same events again needs them
    stored again."""
    await bus.js.delete_stream(DATA)
    await bus.ensure_streams()


@dataclass
class Timer:
    started: float = 0.0
    seconds: float = 0.0

    def __enter__(self) -> Timer:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s"


SERIES = ("env.temperature", "env.relative_humidity", "env.pressure", "sys.load1")


def node_readings(n: int, *, nodes: int = 20, start: int = 0) -> list[Event]:
    """``n`` ``data.reading`` events as a network sends them: ``nodes`` nodes take turns, each
    with four series, a per-node ``nodeseq`` and the metadata a node adds (plugin, vsn).

    ``start`` continues an earlier call (same ``nodes``): the nodes' sequences go on from
    there, so the projector does not take the new readings for re-sent ones."""
    t0 = time.time_ns() - (start + n) * 1000
    events = []
    for i in range(start, start + n):
        node = f"W{i % nodes:03d}"
        reading = Reading(
            name=SERIES[(i // nodes) % len(SERIES)],
            value=20.0 + (i % 100) / 10,
            timestamp=t0 + i * 1000,
            meta={"sensor": "bme680", "plugin": "waggle/plugin-bme680:0.2.1", "vsn": node},
        )
        events.append(Event.new(reading, source=f"node/{node}", subject=node, nodeseq=i // nodes + 1))
    return events


READINGS_DDL = ReadingsView.table.create_sql()


def projected_rows(path: Path) -> pa.Table:
    """The ``readings`` rows a projector wrote, in stream order."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return to_arrow_table(con.sql("SELECT * FROM readings ORDER BY seq"))
    finally:
        con.close()


def duckdb_arrow_insert(rows: pa.Table, path: Path, batch: int) -> float:
    """Seconds to insert ``rows`` into a fresh file's ``readings`` table with DuckDB's Arrow
    insert, ``batch`` rows per transaction: the write path's ceiling (no NATS, no decoding,
    no checkpoints)."""
    con = duckdb.connect(str(path))
    con.execute(READINGS_DDL)
    with Timer() as t:
        for chunk in rows.to_batches(max_chunksize=batch):
            con.register("chunk", pa.Table.from_batches([chunk]))
            con.execute("BEGIN TRANSACTION")
            con.execute("INSERT INTO readings BY NAME SELECT * FROM chunk")
            con.execute("COMMIT")
            con.unregister("chunk")
    con.close()
    return t.seconds


async def drain_copy(url: str, source: Path, work: Path, node: str, limits: OutboxLimits,
                     options: ForwarderOptions | None = None) -> tuple[float, int]:
    """Seconds for a real ``Forwarder`` to empty a copy of the outbox ``source`` into the hub at
    ``url`` (timed from when the hub is reachable: "the hub comes back"); the events it held."""
    path = work / "drain.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    shutil.copy(source, path)
    db = await NodeDatabase.open(path)
    outbox = await Outbox.open(db, node, limits)
    held = outbox.backlog_now()[0]
    uplink = Uplink(url, name="bench-node")
    forwarder = Forwarder(outbox, uplink, options)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(uplink.run(stop))]
    await uplink.wait_online(stop)
    with Timer() as t:
        tasks.append(asyncio.create_task(forwarder.run(stop)))
        while outbox.backlog_now()[0]:
            await asyncio.sleep(0.002)
    stop.set()
    await asyncio.gather(*tasks)
    await uplink.close()
    await outbox.close()
    await db.close()
    return t.seconds, held


def peak_rss_mib(pid: int) -> float:
    """The peak resident set size of a live process (``VmHWM`` in /proc/<pid>/status), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status (not Linux?)")


def result(metric: str, hivebus: float, unit: str, baseline: float | None = None, against: str = "",
           *, lower_is_better: bool = False) -> None:
    """One machine-readable line for bench/run.py's summary table.

    ``ratio`` is always "how many times better hivebus is": hivebus/baseline for rates,
    baseline/hivebus for times (``lower_is_better``), so > 1 means hivebus wins."""
    fields = {"metric": metric, "unit": unit, "hivebus": f"{hivebus:.6g}"}
    if baseline is not None:
        ratio = baseline / hivebus if lower_is_better else hivebus / baseline
        fields.update(baseline=f"{baseline:.6g}", against=against, ratio=f"{ratio:.3g}")
    print("RESULT " + " ".join(f"{k}={shlex.quote(v)}" for k, v in fields.items()), flush=True)


def parse_result(line: str) -> dict[str, str]:
    """The fields of a ``RESULT`` line (the inverse of ``result``)."""
    return dict(part.split("=", 1) for part in shlex.split(line.removeprefix("RESULT ")))


def machine() -> dict[str, str]:
    """Cores, RAM and the versions every figure depends on."""
    from importlib.metadata import PackageNotFoundError, version

    from hivebus.bus.server import nats_server_binary

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    server_version = os.popen(f"{nats_server_binary()} --version").read().strip()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    return {
        "cores": f"{os.cpu_count()} ({cpu})",
        "RAM": f"{mem:.0f} GiB",
        "OS": f"{platform.system()} {platform.release()} {platform.machine()}",
        "Python": platform.python_version(),
        "nats-server": server_version.removeprefix("nats-server: "),
        **{name: installed(name) for name in
           ("nats-py", "duckdb", "pyarrow", "faststream", "eventsourcing", "matplotlib", "hivebus")},
    }
