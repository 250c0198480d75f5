"""Exactly-once under SIGKILL (guarantees 2 and 4).

A real ``hivebus projector`` process is killed with SIGKILL at random points while ~20k events
stream in (node readings and lifecycle events, hub events, node messages re-sent after the
duplicate window, junk), restarted each time, and finally left to catch up. Then every view
of its file must equal the same view built by a clean replay of the log, and no event may be
counted twice.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hivebus.bus.client import Bus
from hivebus.bus.publisher import Outgoing
from hivebus.bus.subjects import subject_for
from hivebus.errors import RequestTimeout
from hivebus.projections.client import query
from hivebus.projections.duck import connect
from hivebus.projections.views import all_views
from hivebus.replay.build import Build, stream_ends
from hivebus.replay.synthetic import history
from hivebus.schemas import Event, codec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = 5
COMPARED = [
    "events", "readings", "bundles", "bundle_permissions", "profile_runs", "profiles", "jobs", "assignments",
    "nodes", "node_sensors", "plugin_runs", "triggers", "dead_letters", "projector.node_seqs",
    "projector.checkpoints",
]


def start_projector(db: Path, url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HIVEBUS_LOG_LEVEL": "warning", "HIVEBUS_NATS_URL": url}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hivebus.projections", "--db", str(db)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )


def messages(events: list[Event], rng: random.Random) -> list[Outgoing]:
    """The history on the wire, with some node messages stored twice (a re-send after the
    duplicate window: a fresh message id) and junk in between."""
    out = [Outgoing(subject_for(e), codec.encode(e), e.id) for e in events]
    resent = [e for e in events if e.nodeseq is not None and rng.random() < 0.03]
    for i, e in enumerate(resent):
        at = min(len(out), events.index(e) + rng.randint(1, 3000))
        out.insert(at, Outgoing(subject_for(e), codec.encode(e), f"resent-{i}-{e.id}"))
    for i in range(20):
        subject = rng.choice(["evt.junk.key", "data.W001.env.temperature", "fromedge.W002.node.heartbeat"])
        out.insert(rng.randrange(len(out)), Outgoing(subject, b"{not an event " + str(i).encode(), f"junk-{i}"))
    return out


async def served(bus: Bus, timeout: float = 30.0) -> None:
    """Wait until a projector answers ``hivebus.query`` (a process takes a moment to start)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await query(bus, "SELECT 1", timeout=2)
            return
        except RequestTimeout:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def publish_slowly(bus: Bus, wire: list[Outgoing], chunks: int = 40) -> None:
    size = len(wire) // chunks + 1
    for i in range(0, len(wire), size):
        await bus.publish_raw_many(wire[i : i + size])
        await asyncio.sleep(0.1)


async def test_sigkill_at_random_points_leaves_every_view_equal_to_a_clean_replay(
    nats_server: Any, tmp_path: Path
) -> None:
    rng = random.Random(20260301)
    events = history(nodes=4, readings=19_000, jobs=2, seed=7)
    kinds = Counter(e.type for e in events)
    wire = messages(events, rng)
    db, log = tmp_path / "live.duckdb", tmp_path / "projector.log"
    async with await Bus.connect(nats_server.url) as bus:
        await bus.ensure_streams()
        publisher = asyncio.create_task(publish_slowly(bus, wire))
        kills = 0
        while kills < KILLS:
            process = start_projector(db, nats_server.url, log)
            await asyncio.sleep(rng.uniform(1.2, 2.5))  # start-up, then a random point of the work
            assert process.poll() is None, log.read_text()[-2000:]
            process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process.wait)
            kills += 1
        await publisher
        ends = await stream_ends(bus)
        process = start_projector(db, nats_server.url, log)
        try:
            await served(bus)
            caught = await query(bus, "SELECT count(*) FROM readings", min_seq=ends, timeout=60)
            assert caught.rows == [[kinds["data.reading"]]]  # each reading once, re-sends dropped
            letters = await query(bus, "SELECT count(*) FROM dead_letters", min_seq={"DEADLETTERS": 20}, timeout=30)
            assert letters.rows == [[20]]
        finally:
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 30) == 0, log.read_text()[-2000:]

        live = connect(db, read_only=True)
        positions = dict(live.execute("SELECT stream, seq FROM projector.checkpoints").fetchall())
        clean_db = tmp_path / "clean.duckdb"
        build = Build(bus, clean_db, all_views())
        await build.run_to(positions)
        await build.close(keep=True)

    clean = connect(clean_db, read_only=True)
    assert live.execute("SELECT count(*) FROM events").fetchone() == (len(events) - kinds["data.reading"],)
    for table in COMPARED:
        ours = live.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
        theirs = clean.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
        assert ours == theirs, table
    assert live.execute("SELECT count(*) - count(DISTINCT seq) FROM events").fetchone() == (0,)
    assert live.execute("SELECT count(*) - count(DISTINCT seq) FROM readings").fetchone() == (0,)
    live.close()
    clean.close()
