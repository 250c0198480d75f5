"""SIGKILL the agent (a real ``hivebus node run`` process) at random points while it forwards."""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from hivebus.bus.batch import bodies_of
from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import DATA, EVENTS, platform_streams
from hivebus.bus.subjects import data_filter, fromedge_filter, subject_for
from hivebus.config import Settings
from hivebus.edge.db import NodeDatabase
from hivebus.edge.forwarder import _identity
from hivebus.edge.outbox import Outbox
from hivebus.schemas import codec
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NODE = "W042"
N = 20_000
DUP_WINDOW = timedelta(seconds=1)


def agent_process(url: str, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-c", "from hivebus.cli import main; main()",
        "--log-level", "info", "node", "run", "--node-id", NODE, "--hub", url, "--data-dir", str(data_dir),
        "--heartbeat", "0.5", "--metrics", "0.5",
    ]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HIVEBUS_LOG_FORMAT": "json"},
        )


async def prefill(data_dir: Path) -> list[int]:
    """The node's outbox holds N readings before its agent first runs (produced offline)."""
    db = await NodeDatabase.open(data_dir / "node.db")
    outbox = await Outbox.open(db, NODE)
    t = time.time_ns()
    seqs: list[int] = []
    for start in range(0, N, 2000):
        events = [
            Event.new(
                Reading(name="test.burst", value=i, timestamp=t + i),
                source=f"node/{NODE}",
                subject=NODE,
            )
            for i in range(start, start + 2000)
        ]
        seqs += [s for s in await outbox.append_many(events) if s is not None]
    await outbox.close()
    await db.close()
    return seqs


async def stored(bus: Bus, stream: str, subject: str) -> list[tuple[int, str, bytes]]:
    """(nodeseq, the event's own subject, body) of every event stored, the readings inside
    packed messages each (issue 18)."""
    out = []
    async for batch in bus.read(stream, filter_subjects=[subject], stop_at_end=True):
        for m in batch:
            for body in bodies_of(m.data):
                seq, _ = _identity(body)
                assert seq is not None
                out.append((seq, subject_for(codec.decode(body)), body))
    return out


class BurstCount:
    """How many test.burst readings DATA holds (copies included), read on from where it was."""

    def __init__(self) -> None:
        self.next, self.n = 1, 0

    async def __call__(self, bus: Bus) -> int:
        async for batch in bus.read(DATA, start_seq=self.next, filter_subjects=[data_filter(NODE)],
                                    stop_at_end=True):
            for m in batch:
                self.n += sum(1 for body in bodies_of(m.data) if b'"name":"test.burst"' in body)
                self.next = m.seq + 1
        return self.n


async def test_sigkill_during_forwarding_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    data_dir = tmp_path / "node"
    log = tmp_path / "agent.log"
    expected = await prefill(data_dir)
    bus = await Bus.connect(nats_server.url)
    await bus.ensure_streams(platform_streams(Settings(duplicate_window=DUP_WINDOW)))
    kills = 0
    burst_count = BurstCount()
    try:
        for _ in range(3):
            before = await burst_count(bus)
            target = min(N - 1, before + rng.randrange(100, 6000))
            proc = agent_process(nats_server.url, data_dir, log)
            try:
                deadline = time.monotonic() + 60
                while await burst_count(bus) < target and proc.poll() is None:
                    assert time.monotonic() < deadline, f"no progress (seed {seed}); log: {log}"
                    await asyncio.sleep(0.005)
                assert proc.poll() is None, f"the agent exited by itself (seed {seed}); log: {log}"
                await asyncio.sleep(rng.uniform(0, 0.3))  # mid-batch, between publish and delete...
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            kills += 1
            # outlast the duplicate window: only reconciliation can now prevent copies
            await asyncio.sleep(DUP_WINDOW.total_seconds() * 1.2)
        last_start = log.stat().st_size  # (an agent killed early, packing fast, may never have said it runs)
        proc = agent_process(nats_server.url, data_dir, log)
        try:
            deadline = time.monotonic() + 60
            while await burst_count(bus) < N:
                assert time.monotonic() < deadline, f"the burst did not arrive whole (seed {seed})"
                assert proc.poll() is None, f"the agent exited (seed {seed}); log: {log}"
                await asyncio.sleep(0.05)
            deadline = time.monotonic() + 30
            while f"node {NODE} running".encode() not in log.read_bytes()[last_start:]:  # its handlers are set
                assert time.monotonic() < deadline, f"the last agent never said it runs; log: {log}"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # housekeeping events of the last run go through too
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, f"the agent did not stop cleanly; log: {log}"

        readings = await stored(bus, DATA, data_filter(NODE))
        lifecycle = await stored(bus, EVENTS, fromedge_filter(NODE))
    finally:
        await bus.close()

    assert kills == 3
    counts = collections.Counter(seq for seq, _, _ in readings + lifecycle)
    twice = [seq for seq, n in counts.items() if n > 1]
    assert not twice, f"{len(twice)} events stored twice (seed {seed})"
    burst = [seq for seq, subject, _ in readings if subject.endswith(".test.burst")]
    assert burst == expected, f"the burst is not complete and in order (seed {seed})"
    registrations = [1 for _, subject, _ in lifecycle if subject.endswith("node.registered")]
    assert len(registrations) == 1, "the node registered again though its manifest did not change"
