"""The projector against a real nats-server and a real DuckDB file."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from hivebus.bus.client import Bus
from hivebus.bus.consumer import DeadLetter
from hivebus.bus.publisher import Outgoing
from hivebus.bus.streams import DATA, DEADLETTERS, EVENTS
from hivebus.bus.subjects import subject_for
from hivebus.projections.client import query
from hivebus.projections.pump import PumpConfig
from hivebus.projections.runner import ProjectorConfig, running
from hivebus.projections.views import all_views
from hivebus.projections.views.base import DATA as DATA_STREAM
from hivebus.projections.views.base import (
    Append,
    AppendView,
    Applied,
    Item,
    Row,
    Scope,
    Table,
    View,
)
from hivebus.replay.build import stream_ends
from hivebus.replay.synthetic import history
from hivebus.schemas import Event, codec
from hivebus.schemas.data import Reading
from hivebus.schemas.node import NodeHeartbeat, NodeResources

pytestmark = pytest.mark.integration


@pytest.fixture
async def bus(nats_server: Any) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_server.url, connect_timeout=5)
    await b.ensure_streams()
    yield b
    await b.close()


async def caught_up(projector: Any, bus: Bus, timeout: float = 30.0) -> dict[str, int]:
    ends = await stream_ends(bus)
    assert await projector.wait_for(ends, timeout), (projector.positions, ends)
    return ends


async def count(bus: Bus, table: str, where: str = "true") -> int:
    return int((await query(bus, f"SELECT count(*) FROM {table} WHERE {where}")).rows[0][0])


def reading(node: str, nodeseq: int, value: float = 1.0, name: str = "env.temperature") -> Event:
    return Event.new(
        Reading(
            name=name,
            value=value,
            timestamp=1_740_000_000_000_000_000 + nodeseq,
            meta={"vsn": node},
        ),
        source=f"node/{node}",
        subject=node,
        nodeseq=nodeseq,
    )


def wire(events: Iterable[Event], msg_id: str | None = None) -> list[Outgoing]:
    """Pre-encoded messages; a fresh ``msg_id`` makes JetStream store a re-send again, as it
    does once the duplicate window has passed."""
    return [
        Outgoing(subject_for(e), codec.encode(e), f"{msg_id}-{e.id}" if msg_id else e.id)
        for e in events
    ]


async def test_a_history_lands_in_every_view(bus: Bus, tmp_path: Path) -> None:
    events = history(nodes=3, readings=3000, jobs=2)
    kinds = Counter(e.type for e in events)
    await bus.publish_many(events)
    async with running(bus, tmp_path / "views.duckdb") as projector:
        ends = await caught_up(projector, bus)
        assert await count(bus, "readings") == kinds["data.reading"] == ends[DATA]
        assert await count(bus, "events") == len(events) - kinds["data.reading"] == ends[EVENTS]
        assert await count(bus, "bundles", "state = 'approved' AND public AND owner = 'ada'") == 2
        assert await count(bus, "bundle_permissions", "grantee = 'AllUsers'") == 2
        assert await count(bus, "jobs", "state = 'Running'") == 2
        assert await count(bus, "assignments", "state = 'assigned'") == 6
        assert (
            await count(bus, "nodes", "status = 'online' AND vsn = node_id AND mem_avail > 0") == 3
        )
        assert await count(bus, "node_sensors") == 6
        assert (
            await count(bus, "plugin_runs", "state IN ('completed', 'failed')")
            == kinds["ecr.profile.recorded"]
        )
        assert await count(bus, "profile_runs") == kinds["ecr.profile.recorded"]
        profiles = (
            await query(
                bus,
                "SELECT sum(runs), bool_and(cpu_seconds_p50 <= cpu_seconds_p95 AND "
                "cpu_seconds_p95 <= cpu_seconds_max), count(*) FROM profiles",
            )
        ).rows
        assert profiles == [[kinds["ecr.profile.recorded"], True, 2]]  # one per bundle x hardware
        assert await count(bus, "triggers") == kinds["trigger.fired"]
        assert await count(bus, "dead_letters") == 0
        checkpoints = dict((await query(bus, "SELECT stream, seq FROM projector.checkpoints")).rows)
        assert checkpoints == {**ends, DEADLETTERS: 0}


async def test_a_new_event_is_visible_within_a_bounded_wait(bus: Bus, tmp_path: Path) -> None:
    """Under light load a batch is committed after a short wait, not when it is full."""
    async with running(bus, tmp_path / "views.duckdb") as projector:
        await caught_up(projector, bus)
        seq = await bus.publish(reading("W001", 1, value=42.0))
        result = await query(bus, "SELECT value FROM readings", min_seq={DATA: seq}, timeout=5)
        assert result.rows == [[42.0]] and result.positions[DATA] >= seq


async def test_a_restart_resumes_after_the_checkpoint_and_applies_nothing_twice(
    bus: Bus, tmp_path: Path
) -> None:
    db = tmp_path / "views.duckdb"
    first = history(nodes=2, readings=800, seed=1)
    await bus.publish_many(first)
    async with running(bus, db) as projector:
        await caught_up(projector, bus)
    second = history(
        nodes=2, readings=700, seed=2, first_node=3
    )  # published while no projector runs
    await bus.publish_many(second)
    async with running(bus, db) as projector:
        ends = await caught_up(projector, bus)
        assert await count(bus, "readings") == ends[DATA] == 1500
        assert await count(bus, "events") == ends[EVENTS]
        dupes = await query(
            bus,
            "SELECT count(*) - count(DISTINCT seq) FROM events UNION ALL "
            "SELECT count(*) - count(DISTINCT seq) FROM readings",
        )
        assert dupes.rows == [[0], [0]]


async def test_a_node_message_stored_twice_is_counted_once_and_a_late_retry_is_counted(
    bus: Bus, tmp_path: Path
) -> None:
    """Guarantee 4 beyond JetStream's duplicate window: re-sends get fresh message ids here, so
    the stream keeps both copies and only the projector's (node, nodeseq) check can tell."""
    node = "W042"
    readings = [reading(node, n, value=float(n)) for n in range(1, 121)]
    beat = Event.new(
        NodeHeartbeat(
            node=node,
            resources=NodeResources(
                cpus=2, mem_total=1, mem_avail=1, disk_total=1, disk_avail=1, load1=0.1
            ),
            uptime_seconds=1.0,
        ),
        source=f"node/{node}",
        subject=node,
        nodeseq=121,
    )
    late = readings[104]  # nodeseq 105 failed and is retried after 106..121
    await bus.publish_raw_many(wire([r for r in readings if r is not late] + [beat]))
    await bus.publish_raw_many(
        wire([*readings[49:60], beat], msg_id="resent")
    )  # after a long outage
    await bus.publish_raw_many(wire([late], msg_id="retry"))
    await bus.publish_raw_many(wire([late], msg_id="retry-again"))
    async with running(bus, tmp_path / "views.duckdb") as projector:
        ends = await caught_up(projector, bus)
        assert ends[DATA] == 119 + 11 + 2
        assert await count(bus, "readings") == 120
        assert (await query(bus, "SELECT sum(value) FROM readings")).rows == [
            [float(sum(range(1, 121)))]
        ]
        assert await count(bus, "events", "type = 'node.heartbeat'") == 1
        seen = await query(
            bus, "SELECT watermark, los, duplicates FROM projector.node_seqs WHERE node = ?", [node]
        )
        assert seen.rows == [[121, [], 11 + 1 + 1]]


class CheckedReadings(AppendView):
    """A view whose table refuses large values: DuckDB rejects the batch, not the view."""

    name = "checked_readings"
    version = 1
    stream = DATA_STREAM
    table: ClassVar[Table] = Table(
        "checked_readings", "CREATE TABLE {name} (seq BIGINT, value DOUBLE CHECK (value < 1000))"
    )

    def rows(self, item: Item) -> Iterable[Row]:
        yield {"seq": item.seq, "value": float(item.event.data.value)}


async def test_a_batch_the_database_refuses_is_split_down_to_the_one_bad_message(
    bus: Bus, tmp_path: Path
) -> None:
    values = [1.0, 2.0, 3.0, 5000.0, 4.0, 5.0, 6.0, 7.0]
    seqs = await bus.publish_many([reading("W001", i + 1, value=v) for i, v in enumerate(values)])
    views = [*all_views(), CheckedReadings()]
    async with running(bus, tmp_path / "views.duckdb", views=views) as projector:
        await caught_up(projector, bus)
        assert (await query(bus, "SELECT value FROM checked_readings ORDER BY seq")).rows == [
            [v] for v in values if v < 1000
        ]
        assert await count(bus, "readings") == len(values) - 1  # the same transaction as the check
        letters = await query(
            bus, "SELECT seq, reason FROM dead_letters", min_seq={DEADLETTERS: 1}, timeout=10
        )
        assert [row[0] for row in letters.rows] == [seqs[3]]
        assert "could not write it" in letters.rows[0][1] and "CHECK" in letters.rows[0][1]


class Exploding(View):
    """A view with a bug outside the per-message guards: the whole batch fails to prepare."""

    name = "exploding"
    version = 1
    stream = DATA_STREAM
    tables = (Table("exploding", "CREATE TABLE {name} (seq BIGINT)"),)

    def apply(self, items: Sequence[Item], state: dict[str, dict[Scope, list[Row]]]) -> Applied:
        if any(item.event.data.value == 666.0 for item in items):
            raise RuntimeError("boom")
        return Applied([Append("exploding", {"seq": [item.seq for item in items]})])


async def test_a_batch_a_view_cannot_prepare_is_split_down_to_the_one_bad_message(bus: Bus, tmp_path: Path) -> None:
    values = [1.0, 2.0, 666.0, 3.0, 4.0]
    seqs = await bus.publish_many([reading("W001", i + 1, value=v) for i, v in enumerate(values)])
    async with running(bus, tmp_path / "views.duckdb", views=[*all_views(), Exploding()]) as projector:
        await caught_up(projector, bus)
        assert (await query(bus, "SELECT seq FROM exploding ORDER BY seq")).rows == [[s] for s in seqs if s != seqs[2]]
        assert await count(bus, "readings") == 4
        letters = await query(bus, "SELECT seq, reason FROM dead_letters", min_seq={DEADLETTERS: 1}, timeout=10)
        assert letters.rows == [[seqs[2], letters.rows[0][1]]] and "RuntimeError: boom" in letters.rows[0][1]


async def test_the_projector_rides_out_a_server_restart(
    bus: Bus, nats_server: Any, tmp_path: Path
) -> None:
    config = ProjectorConfig(pump=PumpConfig(stall_after=1.0))
    async with running(bus, tmp_path / "views.duckdb", config=config) as projector:
        await bus.publish_many([reading("W001", n) for n in range(1, 101)])
        await caught_up(projector, bus)
        await asyncio.to_thread(nats_server.restart)
        await bus.publish_many([reading("W001", n) for n in range(101, 201)])
        await caught_up(projector, bus, timeout=60)
        assert await count(bus, "readings") == 200


async def test_an_unreachable_dead_letter_stream_holds_the_batch_until_it_is_back(
    bus: Bus, tmp_path: Path
) -> None:
    """A dead letter is data too: the checkpoint does not move past a bad message before its
    dead letter is stored."""
    await bus.js.delete_stream(DEADLETTERS)
    seq = (await bus.publish_raw_many([Outgoing("evt.x.y", b"{not json", "junk-1")]))[0]
    config = ProjectorConfig(ensure_streams=False)
    async with running(bus, tmp_path / "views.duckdb", config=config) as projector:
        assert not await projector.wait_for({EVENTS: seq}, 1.5)
        await bus.ensure_streams()
        assert await projector.wait_for({EVENTS: seq}, 20)
        letters = await query(
            bus,
            "SELECT stream, seq, subject, reason, field FROM dead_letters",
            min_seq={DEADLETTERS: 1},
            timeout=10,
        )
        assert letters.rows == [[EVENTS, seq, "evt.x.y", letters.rows[0][3], "<body>"]]
        stored = DeadLetter.model_validate_json((await bus.js.get_msg(DEADLETTERS, seq=1)).data)
        assert stored.consumer == "projector" and stored.payload == b"{not json"
        assert "JSON" in json.dumps(letters.rows[0][3])


async def test_a_reader_keeps_reading_past_its_subscriptions_byte_limit(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast reader drains nats-py's queue itself, so it must release the bytes it takes:
    else, past the limit (256 MB in production, 4 MB here), every message is dropped as from a
    slow consumer and the reader stalls (the projector then restarted it every 5 s)."""
    original = bus.nc.subscribe

    async def small_limit(*args: Any, **kwargs: Any) -> Any:
        kwargs["pending_bytes_limit"] = 4 * 2**20
        return await original(*args, **kwargs)

    monkeypatch.setattr(bus.nc, "subscribe", small_limit)
    blob = b'{"x":"' + b"y" * 500_000 + b'"}'
    await bus.publish_raw_many([Outgoing(f"evt.blob.n{i}", blob, f"blob-{i}") for i in range(24)])  # 12 MB

    async def drain() -> int:
        return sum([len(b) async for b in bus.read(EVENTS, batch=4, stop_at_end=True)])

    assert await asyncio.wait_for(drain(), 30) == 24
