"""The outbox on a real SQLite file: sequence, durability, caps, back-pressure, state writes."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hivebus.edge.db import NodeDatabase
from hivebus.edge.outbox import DROPPED_EXPIRED, DROPPED_FULL, Outbox, OutboxLimits
from hivebus.errors import OutboxError, SetupError
from hivebus.schemas import codec
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import SensorLost

NODE = "W012"


def reading(i: int = 0, node: str = NODE, size: int = 0) -> Event:
    meta = {"pad": "x" * size} if size else {}
    return Event.new(
        Reading(name="env.temperature", value=float(i), timestamp=time.time_ns(), meta=meta),
        source=f"node/{node}",
        subject=node,
    )


def lifecycle(i: int = 0) -> Event:
    return Event.new(
        SensorLost(node=NODE, sensor=f"s{i}", reason="r"), source=f"node/{NODE}", subject=NODE
    )


class Opened:
    def __init__(self, path: Path, limits: OutboxLimits | None = None) -> None:
        self.path, self.limits = path, limits

    async def __aenter__(self) -> Outbox:
        self.db = await NodeDatabase.open(self.path)
        self.outbox = await Outbox.open(self.db, NODE, self.limits)
        return self.outbox

    async def __aexit__(self, *exc: object) -> None:
        await self.outbox.close()
        await self.db.close()


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Opened(tmp_path / "node.db") as o:
        yield o


async def test_nodeseq_increases_strictly_and_is_in_the_stored_bytes(outbox: Outbox) -> None:
    events = [reading(i) if i % 3 else lifecycle(i) for i in range(50)]
    seqs = await outbox.append_many(events)
    assert seqs == sorted(seqs) and len(set(seqs)) == 50  # type: ignore[type-var]
    assert seqs[0] > 1_600_000_000 * 10**6  # a fresh outbox starts at the time in microseconds
    batch = await outbox.next_batch(100)
    assert [e.nodeseq for e in batch] == seqs
    decoded = codec.decode(batch[7].body)
    assert (
        decoded.nodeseq == seqs[7] and decoded.id == events[7].id and decoded.data == events[7].data
    )
    assert (
        batch[0].subject == "fromedge.W012.node.sensor.lost"
        and batch[1].subject == "data.W012.env.temperature"
    )


async def test_appends_survive_a_reopen_and_numbers_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    async with Opened(path) as outbox:
        first = await outbox.append_many([reading(i) for i in range(10)])
        batch = await outbox.next_batch(100)
        await outbox.remove(batch, {"DATA": 10})  # drained: the tables are empty now
    async with Opened(path) as outbox:
        assert outbox.backlog_now() == (0, 0)
        assert outbox.positions == {"DATA": 10}
        again = await outbox.append(reading())
        assert again is not None and again > max(first)  # type: ignore[type-var]
        kept = await outbox.append(lifecycle())
    async with Opened(path) as outbox:
        assert [e.nodeseq for e in await outbox.next_batch(10)] == [again, kept]


async def test_a_first_position_of_zero_is_remembered(tmp_path: Path) -> None:
    """An empty stream's position (0) must be stored, or reconciliation is skipped."""
    async with Opened(tmp_path / "node.db") as outbox:
        await outbox.save_positions({"DATA": 0, "EVENTS": 0})
        assert outbox.positions == {"DATA": 0, "EVENTS": 0}
        await outbox.save_positions({"DATA": 5})
    async with Opened(tmp_path / "node.db") as outbox:
        assert outbox.positions == {"DATA": 5, "EVENTS": 0}


async def test_events_that_cannot_be_stored_are_refused_clearly(outbox: Outbox) -> None:
    with pytest.raises(OutboxError, match="node/W099"):
        await outbox.append(reading(node="W099"))
    numbered = reading().model_copy(update={"nodeseq": 5})
    with pytest.raises(OutboxError, match="already has nodeseq"):
        await outbox.append(numbered)
    with pytest.raises(OutboxError, match="could never be sent"):
        await outbox.append(reading(size=2_000_000))
    with pytest.raises(SetupError):
        OutboxLimits(max_bytes=10)


async def test_when_full_the_oldest_readings_go_first_and_are_counted(tmp_path: Path) -> None:
    limits = OutboxLimits(max_bytes=40_000)
    async with Opened(tmp_path / "node.db", limits) as outbox:
        keep = [await outbox.append(lifecycle(i)) for i in range(5)]
        seqs = [await outbox.append(reading(i)) for i in range(300)]
        _held, size = outbox.backlog_now()
        assert size <= limits.max_bytes
        dropped = outbox.dropped()[DROPPED_FULL]
        batch = await outbox.next_batch(1000)
        stored = [e.nodeseq for e in batch]
        assert [s for s in stored if s in keep] == keep, "a lifecycle event was dropped"
        readings = [s for s in stored if s not in keep]
        assert readings == seqs[len(seqs) - len(readings) :], "not the newest readings kept"
        assert dropped == 300 - len(readings) > 0
    async with Opened(tmp_path / "node.db", limits) as outbox:  # counters are on disk
        assert outbox.dropped()[DROPPED_FULL] == dropped


async def test_lifecycle_events_wait_for_space_and_readings_meanwhile_are_dropped(
    tmp_path: Path,
) -> None:
    async with Opened(tmp_path / "node.db", OutboxLimits(max_bytes=4096)) as outbox:
        first = [await outbox.append(lifecycle(i)) for i in range(11)]  # ~340 B each
        assert outbox.backlog_now()[1] > 3400
        waiting = asyncio.ensure_future(outbox.append_many([lifecycle(100 + i) for i in range(5)]))
        await asyncio.sleep(0.2)
        assert not waiting.done() and outbox.blocked
        assert await outbox.append(reading()) is None  # no room and none may be evicted
        assert outbox.dropped()[DROPPED_FULL] == 1
        batch = await outbox.next_batch(8)
        await outbox.remove(batch, {})
        later = await asyncio.wait_for(waiting, 5)
        assert all(s is not None for s in later) and not outbox.blocked
        remaining = [e.nodeseq for e in await outbox.next_batch(100)]
        assert remaining == first[8:] + later


async def test_readings_handed_to_the_forwarder_are_not_dropped(tmp_path: Path) -> None:
    async with Opened(tmp_path / "node.db", OutboxLimits(max_bytes=20_000)) as outbox:
        await outbox.append_many([reading(i) for i in range(40)])
        in_flight = await outbox.next_batch(10)
        await outbox.append_many([reading(i) for i in range(100)])  # forces drops
        stored = {e.nodeseq for e in await outbox.next_batch(1000)}
        assert {e.nodeseq for e in in_flight} <= stored
        await outbox.remove(in_flight, {})


async def test_readings_older_than_max_age_expire_lifecycle_events_do_not(tmp_path: Path) -> None:
    async with Opened(tmp_path / "node.db", OutboxLimits(max_age_seconds=60)) as outbox:
        now = time.time_ns()
        outbox.clock_ns = lambda: now - 120 * 10**9  # appended two minutes ago
        old = await outbox.append_many([reading(1), lifecycle(1), reading(2)])
        outbox.clock_ns = lambda: now
        young = await outbox.append(reading(3))
        outbox._last_expiry = 0.0
        await outbox._maybe_expire()
        assert outbox.dropped()[DROPPED_EXPIRED] == 2
        assert [e.nodeseq for e in await outbox.next_batch(10)] == [old[1], young]


async def test_a_state_write_commits_with_its_events_or_not_at_all(outbox: Outbox) -> None:
    def good(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS marks (v TEXT)")
        conn.execute("INSERT INTO marks VALUES ('done')")

    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    ok = asyncio.ensure_future(outbox.append_many([lifecycle(1)], state=good))
    failing = asyncio.ensure_future(outbox.append_many([lifecycle(2)], state=bad))
    other = asyncio.ensure_future(outbox.append(reading()))
    await asyncio.gather(ok, other)
    with pytest.raises(sqlite3.OperationalError):
        await failing
    stored = [e.nodeseq for e in await outbox.next_batch(10)]
    assert stored == [ok.result()[0], other.result()]
    marks = await outbox.db.call(lambda: outbox.db.conn.execute("SELECT v FROM marks").fetchall())
    assert marks == [("done",)]


async def test_reconciliation_removes_only_events_with_the_same_id(outbox: Outbox) -> None:
    seqs = await outbox.append_many([reading(i) for i in range(5)])
    batch = await outbox.next_batch(10)
    found = [(batch[0].nodeseq, batch[0].msg_id), (batch[1].nodeseq, "01SOMEOTHERID0000000000000")]
    outbox.release()
    assert await outbox.remove_published(found, {"DATA": 7}) == 1
    assert [e.nodeseq for e in await outbox.next_batch(10)] == seqs[1:]
    assert outbox.positions["DATA"] == 7
