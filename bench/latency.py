"""Publish -> queryable latency at a steady rate, and the peak RSS of the projector and an agent.

One pass per server fsync policy (``always``, the platform's default, then ``interval``,
nats-server's own default), each on a fresh embedded server, with real processes:

1. ``--backlog`` readings are published, then a projector process (``python -m
   hivebus.projections``: the views and the ``hivebus.query`` service) starts on an empty
   file and catches up; the time from its start to the last backlog event being queryable is
   printed (interpreter start-up included).
2. A node agent process (``hivebus node run --virtual``: a reading sample every 10 ms,
   heartbeats and housekeeping every second) runs alongside, forwarding through its outbox.
3. The publisher sends ``--rate`` readings/s for ``--seconds``: every 10 ms a chunk of
   rate/100 events goes out with ``Bus.publish_many``, each chunk in its own task so that a
   slow acknowledgement never delays the schedule. Every 5th chunk is a sample. Its latency
   runs from just before ``publish_many`` until the answer of ``hivebus.query`` for its last
   event's row (``SELECT count(*) FROM readings WHERE seq = ?``) sent with ``min_seq`` = that
   event's DATA sequence: the query service answers as soon as the projector has committed
   it, and the row must be in the answer. It includes the server's fsync and ack, the
   projector's batching (at most 50 ms) and commit, and the query's round trip.
4. The peak resident set size (``VmHWM``) of both processes is read at the end.

With ``fsync=always`` every acknowledged write is on disk first, so the rate a server takes
is bounded by the disk's fsyncs per second (bench/fsync.py measures both); when other work
shares the disk the acks queue and the latency with them. The ``interval`` pass shows the
same pipeline without that bound. The publish -> ack part is printed on its own.

    python bench/latency.py [--rate 2000] [--seconds 15] [--backlog 50000] [--fsync always,interval] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import Timer, fresh_server, node_readings, peak_rss_mib, rate, result

from hivebus.bus.client import Bus
from hivebus.bus.streams import DATA
from hivebus.errors import RequestTimeout
from hivebus.projections.client import query
from hivebus.schemas.envelope import Event

TICK = 0.01
SAMPLE_EVERY = 5
AGENT_NODE = "W900"


def start(argv: list[str], url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HIVEBUS_NATS_URL": url, "HIVEBUS_LOG_LEVEL": "warning", "HIVEBUS_LOG_FORMAT": "json"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, *argv], env=env, stdout=out, stderr=subprocess.STDOUT)


async def served(bus: Bus, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait until the projector process answers ``hivebus.query``."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the projector exited with {proc.returncode} before serving queries")
        try:
            await query(bus, "SELECT 1", timeout=2)
            return
        except RequestTimeout:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@dataclass
class Steady:
    """What the steady phase measured: per sample, seconds to the ack and to queryable."""

    acked: list[float] = field(default_factory=list)
    queryable: list[float] = field(default_factory=list)
    seconds: float = 0.0
    """From the first publish to the last acknowledgement."""
    last_ack: float = 0.0
    late: int = 0
    """Ticks that started more than one tick behind the schedule."""


async def steady(bus: Bus, events: list[Event], per_second: int) -> Steady:
    """Publish ``events`` at ``per_second``, sampling every ``SAMPLE_EVERY``th chunk."""
    per_tick = max(1, round(per_second * TICK))
    chunks = [events[i : i + per_tick] for i in range(0, len(events), per_tick)]
    out = Steady()

    async def send(chunk: list[Event], sample: bool) -> None:
        started = time.perf_counter()
        seqs = await bus.publish_many(chunk)
        out.last_ack = max(out.last_ack, time.perf_counter())
        if sample:
            acked = time.perf_counter() - started
            answer = await query(bus, "SELECT count(*) FROM readings WHERE seq = ?", [seqs[-1]],
                                 min_seq={DATA: seqs[-1]}, timeout=30)
            assert answer.rows == [[1]], f"DATA {seqs[-1]} not in readings: {answer.rows}"
            out.queryable.append(time.perf_counter() - started)
            out.acked.append(acked)

    loop = asyncio.get_running_loop()
    first = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:  # a failed sample cancels the rest
        t0 = loop.time()
        for k, chunk in enumerate(chunks):
            delay = t0 + k * TICK - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -TICK:
                out.late += 1
            tasks.create_task(send(chunk, k % SAMPLE_EVERY == 0))
    out.seconds = out.last_ack - first
    return out


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


async def run(per_second: int, seconds: float, backlog: int, fsync: str, work: Path) -> dict[str, float]:
    """One pass on a fresh server with ``fsync``: prints its section and RESULT lines, returns
    the peak RSS of the projector and the agent (MiB)."""
    work.mkdir()
    with fresh_server(fsync) as server:
        async with await Bus.connect(server.url) as bus:
            await bus.ensure_streams()
            if backlog:
                await bus.publish_many(node_readings(backlog))
            last = await bus.last_seq(DATA)
            steady_events = node_readings(int(per_second * seconds), start=backlog)
            projector = start(["-m", "hivebus.projections", "--db", str(work / "views.duckdb")],
                              server.url, work / "projector.log")
            agent = None
            try:
                with Timer() as caught_up:
                    await served(bus, projector)
                    await query(bus, "SELECT 1", min_seq={DATA: last}, timeout=600)
                agent = start(["-m", "hivebus", "node", "run", "--node-id", AGENT_NODE, "--virtual",
                               "--virtual-interval", "0.01", "--heartbeat", "1", "--metrics", "1",
                               "--data-dir", str(work / "node")], server.url, work / "agent.log")
                measured = await steady(bus, steady_events, per_second)
                forwarded = await query(bus, "SELECT count(*) FROM readings WHERE node = ?", [AGENT_NODE])
                if agent.poll() is not None:
                    raise RuntimeError(f"the agent exited with {agent.returncode}; see {work / 'agent.log'}")
                rss = {"projector": peak_rss_mib(projector.pid), "agent": peak_rss_mib(agent.pid)}
            finally:
                for proc in (agent, projector):
                    if proc is not None:
                        proc.terminate()
                        try:
                            proc.wait(30)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                            proc.wait()
    ms = sorted(x * 1000 for x in measured.queryable)
    ack = sorted(x * 1000 for x in measured.acked)
    p50, p90, p99 = quantile(ms, 0.5), quantile(ms, 0.9), quantile(ms, 0.99)
    sent, took = len(steady_events), measured.seconds
    ticks = len(range(0, sent, max(1, round(per_second * TICK))))
    print(f"server fsync={fsync}")
    if backlog:
        print(f"  projector process: {backlog:,} backlog events queryable {caught_up.seconds:.1f}s after its "
              f"start ({rate(backlog, caught_up.seconds)}, interpreter start-up included)")
    print(f"  steady publish: {sent:,} readings acknowledged in {took:.1f}s ({sent / took:,.0f}/s, target {per_second:,}/s; "
          f"{measured.late} of {ticks} ticks started > {TICK * 1000:.0f} ms late)")
    if sent / took < 0.95 * per_second:
        print(f"  (the server did not keep up with {per_second:,}/s: the acks queued, and so did the latency)")
    print(f"  publish -> queryable over {len(ms)} samples: p50 {p50:.1f} ms, p90 {p90:.1f} ms, "
          f"p99 {p99:.1f} ms, max {ms[-1]:.1f} ms")
    print(f"    of which publish -> ack: p50 {quantile(ack, 0.5):.1f} ms, p99 {quantile(ack, 0.99):.1f} ms")
    print(f"  agent {AGENT_NODE}: {forwarded.rows[0][0]:,} virtual readings forwarded and queryable")
    print(f"  peak RSS (VmHWM): projector {rss['projector']:.1f} MiB, agent {rss['agent']:.1f} MiB")
    label = f"at {per_second:,}/s, fsync={fsync}"
    result(f"publish->queryable p50 {label} (ms)", p50, "ms")
    result(f"publish->queryable p99 {label} (ms)", p99, "ms")
    return rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--backlog", type=int, default=50_000)
    ap.add_argument("--fsync", default="always,interval", help="server fsync policies, one pass each")
    ap.add_argument("--quick", action="store_true", help="5 s, backlog 5,000")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.backlog = 5.0, 5_000
    print(f"publish -> queryable at a steady {args.rate:,} readings/s for {args.seconds:g}s: every "
          f"{SAMPLE_EVERY}th {TICK * 1000:.0f} ms chunk is timed from its publish_many to the hivebus.query "
          "answer (min_seq = its last event's DATA sequence) that holds its row")
    with tempfile.TemporaryDirectory(prefix="hivebus-bench-latency-") as d:
        rss = [asyncio.run(run(args.rate, args.seconds, args.backlog, fsync, Path(d) / fsync))
               for fsync in args.fsync.split(",")]
    result(f"projector process peak RSS ({args.backlog:,} backlog, then {args.rate:,}/s) (MiB)",
           max(r["projector"] for r in rss), "MiB")
    result("agent process peak RSS, online, forwarding (MiB)", max(r["agent"] for r in rss), "MiB")


if __name__ == "__main__":
    main()
