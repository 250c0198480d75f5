"""Packed DATA messages in the projector (issue 18): every reading of a batch is projected once,
a bad reading is one dead letter of its own (the rest of its batch projected), a damaged batch
is one dead letter, overlapping batches store no reading twice, and a rebuild gives the same rows.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import duckdb
import pytest

from hivebus.bus import batch as wire
from hivebus.bus.client import Bus
from hivebus.bus.publisher import Outgoing
from hivebus.bus.subjects import subject_for
from hivebus.projections.client import query
from hivebus.projections.runner import running
from hivebus.projections.views import all_views
from hivebus.replay.build import Build, stream_ends
from hivebus.schemas import Event, codec
from hivebus.schemas.data import Reading
from hivebus.schemas.node import SensorLost

pytestmark = pytest.mark.integration

NODE = "W321"
T0 = 1_740_000_000_000_000_000


def body(i: int, *, value: object = None, node: str = NODE) -> bytes:
    event = Event.new(Reading(name="env.temperature", value=float(i) if value is None else value, timestamp=T0 + i),
                      source=f"node/{node}", subject=node, nodeseq=1000 + i)
    return codec.encode(event)


def packed(bodies: list[bytes], tag: str) -> Outgoing:
    return Outgoing(wire.batch_subject(NODE), wire.pack(bodies), f"test-{tag}")


async def letters(bus: Bus, n: int) -> list[tuple[int, int | None, str, bytes]]:
    deadline = time.monotonic() + 15
    while True:
        rows = (await query(bus, "SELECT seq, batch_index, reason, payload FROM dead_letters "
                                 "ORDER BY seq, batch_index NULLS FIRST")).rows
        if len(rows) >= n or time.monotonic() > deadline:
            return [(r[0], r[1], r[2], r[3]) for r in rows]
        await asyncio.sleep(0.1)


def payload(value: object) -> bytes:
    """A BLOB as the query reply carries it (base64 text)."""
    return value if isinstance(value, bytes) else base64.b64decode(str(value))


async def test_a_bad_reading_in_a_batch_is_one_dead_letter_and_the_rest_is_projected(
    nats_server, tmp_path: Path
) -> None:
    lifecycle = Event.new(SensorLost(node=NODE, sensor="s", reason="t"), source=f"node/{NODE}", subject=NODE,
                          nodeseq=999)
    bad = {
        3: b"not json",
        7: json.dumps({"specversion": "1.0", "type": "zz.unknown", "id": "x"}).encode(),
        11: codec.encode(lifecycle),  # not a reading: does not belong on DATA
        15: body(15, value=10**400),  # decodes, but no DOUBLE holds it: the readings view refuses it
    }
    bodies = [bad.get(i, body(i)) for i in range(20)]
    damaged = wire.pack([body(i) for i in range(20, 25)])[:-10]
    async with await Bus.connect(nats_server.url) as bus:
        await bus.ensure_streams()
        seq, broken = await bus.publish_raw_many(
            [packed(bodies, "a"), Outgoing(wire.batch_subject(NODE), damaged, "test-damaged")])
        async with running(bus, tmp_path / "views.duckdb") as projector:
            assert await projector.wait_for(await stream_ends(bus), 30)
            found = await letters(bus, 5)
            values = (await query(bus, "SELECT value FROM readings WHERE node = ? ORDER BY value", [NODE])).rows
    assert [(s, i) for s, i, _, _ in found] == [(seq, 3), (seq, 7), (seq, 11), (seq, 15), (broken, None)]
    for _, index, reason, data in found:
        assert reason
        if index is not None:
            assert payload(data) == bad[index], "the dead letter carries the bad reading alone"
    assert "not JSON" in found[0][2] and "not a reading" in found[2][2] and "view readings" in found[3][2]
    assert "truncated" in found[4][2] and payload(found[4][3]) == damaged
    assert [r[0] for r in values] == [float(i) for i in range(20) if i not in bad]


async def test_batches_formed_again_differently_store_each_reading_once_and_rebuild_the_same(
    nats_server, tmp_path: Path
) -> None:
    """A node that crashed mid-batch and formed its batches again otherwise (other bounds, so
    other ids: JetStream keeps both) and a single-message copy of one reading: the views count
    each reading once, by (node, nodeseq); a rebuild from the log gives the same rows."""
    bodies = [body(i) for i in range(600)]
    first = Event.new(Reading(name="env.temperature", value=50.0, timestamp=T0 + 50), source=f"node/{NODE}",
                      subject=NODE, nodeseq=1050)
    async with await Bus.connect(nats_server.url) as bus:
        await bus.ensure_streams()
        await bus.publish_raw_many([packed(bodies[:300], "x"), packed(bodies[100:], "y"),
                                    Outgoing(subject_for(first), codec.encode(first), "test-single")])
        db = tmp_path / "views.duckdb"
        async with running(bus, db) as projector:
            assert await projector.wait_for(await stream_ends(bus), 30)
            rows = (await query(bus, "SELECT value, count(*) FROM readings WHERE node = ? GROUP BY value",
                                [NODE], limit=None)).rows
        assert sorted(r[0] for r in rows) == [float(i) for i in range(600)]
        assert all(r[1] == 1 for r in rows), "a reading is in the view twice"
        build = Build(bus, tmp_path / "rebuilt.duckdb", all_views())
        await build.run_to(await stream_ends(bus))
        await build.close(keep=True)
    sql = "SELECT timestamp, name, value, node, seq FROM readings ORDER BY seq, timestamp"
    with duckdb.connect(str(db), read_only=True) as live, duckdb.connect(str(tmp_path / "rebuilt.duckdb"),
                                                                         read_only=True) as rebuilt:
        assert live.execute(sql).fetchall() == rebuilt.execute(sql).fetchall()


async def test_a_point_written_twice_in_one_batch_is_the_later_reading(nats_server, tmp_path: Path) -> None:
    """The data API keeps one point per series and timestamp, the later write: inside one packed
    message that is the later reading (both share the message's DATA sequence)."""
    from hivebus.data import aquery

    def twin(value: float, nodeseq: int) -> bytes:
        return codec.encode(Event.new(Reading(name="env.temperature", value=value, timestamp=T0 + 1,
                                              meta={"sensor": "bme680"}), source=f"node/{NODE}", subject=NODE,
                                      nodeseq=nodeseq))

    async with await Bus.connect(nats_server.url) as bus:
        await bus.ensure_streams()
        await bus.publish_raw_many([packed([twin(1.0, 1), twin(2.0, 2), twin(3.0, 3)], "twins")])
        async with running(bus, tmp_path / "views.duckdb") as projector:
            assert await projector.wait_for(await stream_ends(bus), 30)
            frame = await aquery(bus, "2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z")
    assert frame["value"].tolist() == [3.0]
