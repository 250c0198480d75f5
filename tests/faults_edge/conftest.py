"""Shared by the edge fault tests: a node agent as a real process, its outbox read from the
side (one consistent read of ``node.db`` while the agent runs, or after it died), and the
node's events as the hub stored them.

What a node *accepted* is read from its own outbox, never inferred from the hub: the first
number of a fresh outbox, the numbers held at a moment, the ``next_nodeseq`` it stored, the
drop counters committed with each drop. The hub is then checked against that.

Processes (start, SIGKILL, SIGTERM with a clean exit) are ``tests/faults/conftest.py``'s.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from hivebus.bus.batch import bodies_of
from hivebus.bus.client import Bus
from hivebus.bus.streams import DATA, EVENTS, platform_streams
from hivebus.bus.subjects import data_filter, fromedge_filter
from hivebus.config import Settings
from hivebus.edge.db import NodeDatabase
from hivebus.edge.forwarder import _identity
from hivebus.edge.outbox import Outbox
from tests.faults.conftest import Processes, Service

__all__ = ["Processes", "Service"]

DUP_WINDOW = timedelta(seconds=1)  # shorter than every outage: only reconciliation dedups


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    made = Processes(tmp_path)
    try:
        yield made
    finally:
        made.kill_all()


async def hub_streams(url: str) -> Bus:
    """A connection to the hub with the platform's streams (a 1 s duplicate window)."""
    bus = await Bus.connect(url)
    await bus.ensure_streams(platform_streams(Settings(duplicate_window=DUP_WINDOW)))
    return bus


async def fresh_outbox(data_dir: Path, node: str) -> int:
    """Create the node's database before its agent first runs; the first nodeseq it will use."""
    db = await NodeDatabase.open(data_dir / "node.db")
    outbox = await Outbox.open(db, node)
    first = outbox.next_nodeseq
    await outbox.close()
    await db.close()
    return first


def agent(processes: Processes, node: str, url: str, data_dir: Path, *options: str) -> Service:
    """``hivebus node run --virtual`` for ``node`` (not started)."""
    args = [
        "hivebus", "node", "run", "--node-id", node, "--hub", url, "--data-dir", str(data_dir),
        "--virtual", *options,
    ]  # fmt: skip
    return processes.service(f"agent-{node}", args, url)


@dataclass(frozen=True)
class OutboxState:
    """One consistent read of a node's outbox."""

    readings: dict[int, int]  # nodeseq -> size
    lifecycle: dict[int, tuple[str, int]]  # nodeseq -> (subject, size)
    drops: dict[str, int]
    stored_next: int  # next_nodeseq as committed

    @property
    def held(self) -> set[int]:
        return set(self.readings) | set(self.lifecycle)

    @property
    def bytes(self) -> int:
        return sum(self.readings.values()) + sum(size for _, size in self.lifecycle.values())

    @property
    def resumes_at(self) -> int:
        """The first nodeseq an agent opening this outbox uses (as ``Outbox._load`` decides)."""
        return max(self.stored_next, max(self.held, default=0) + 1)


def outbox_state(data_dir: Path) -> OutboxState:
    conn = sqlite3.connect(f"file:{data_dir / 'node.db'}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("BEGIN")  # one snapshot of the WAL for every SELECT below
        readings = dict(conn.execute("SELECT nodeseq, size FROM readings").fetchall())
        lifecycle = {
            seq: (subject, size)
            for seq, subject, size in conn.execute("SELECT nodeseq, subject, size FROM lifecycle")
        }
        drops = dict(conn.execute("SELECT reason, n FROM drop_counters").fetchall())
        meta = dict(conn.execute("SELECT key, value FROM outbox_meta").fetchall())
        conn.execute("COMMIT")
    finally:
        conn.close()
    return OutboxState(readings, lifecycle, drops, int(meta["next_nodeseq"]))


@dataclass(frozen=True)
class HubCopy:
    """A node's events as the hub stored them: ``(nodeseq, stream sequence)`` per stream (the
    readings of a packed message share its sequence)."""

    data: list[tuple[int, int]]
    events: list[tuple[int, int]]
    ids: dict[str, int]  # event id -> nodeseq

    @property
    def counts(self) -> Counter[int]:
        return Counter(seq for seq, _ in self.data + self.events)

    @property
    def nodeseqs(self) -> set[int]:
        return set(self.counts)

    def twice(self) -> list[int]:
        return sorted(seq for seq, n in self.counts.items() if n > 1)


async def hub_copy(bus: Bus, node: str) -> HubCopy:
    found: dict[str, list[tuple[int, int]]] = {DATA: [], EVENTS: []}
    ids: dict[str, int] = {}
    for stream, subject in ((DATA, data_filter(node)), (EVENTS, fromedge_filter(node))):
        async for batch in bus.read(stream, filter_subjects=[subject], stop_at_end=True):
            for message in batch:
                for body in bodies_of(message.data):  # readings travel packed (issue 18)
                    nodeseq, event_id = _identity(body)
                    assert nodeseq is not None and event_id is not None, f"{stream}: {body!r}"
                    found[stream].append((nodeseq, message.seq))
                    ids[event_id] = nodeseq
    return HubCopy(found[DATA], found[EVENTS], ids)
