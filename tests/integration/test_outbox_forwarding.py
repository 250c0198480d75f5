"""Outbox + forwarder against a real nats-server: outages, kills, reconciliation, full buffers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from hivebus.bus import batch as wire
from hivebus.bus.client import Bus
from hivebus.bus.publisher import Outgoing
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import DATA, EVENTS, platform_streams
from hivebus.bus.subjects import data_filter, fromedge_filter
from hivebus.config import Settings
from hivebus.edge.db import NodeDatabase
from hivebus.edge.forwarder import Forwarder, ForwarderOptions, _identity, pack_entries
from hivebus.edge.outbox import DROPPED_FULL, Outbox, OutboxLimits
from hivebus.edge.uplink import Uplink
from hivebus.projections.client import query
from hivebus.projections.runner import running
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import SensorLost

pytestmark = pytest.mark.integration

NODE = "W012"
DUP_WINDOW = timedelta(seconds=1)


def reading(i: int, node: str = NODE) -> Event:
    return Event.new(
        Reading(
            name="env.temperature", value=20.0 + i % 7, timestamp=time.time_ns(), meta={"i": str(i)}
        ),
        source=f"node/{node}",
        subject=node,
    )


def lifecycle(i: int, node: str = NODE) -> Event:
    return Event.new(
        SensorLost(node=node, sensor=f"s{i}", reason="test"), source=f"node/{node}", subject=node
    )


async def stream_identities(bus: Bus, stream: str, subject: str) -> list[tuple[int, str]]:
    """(nodeseq, event id) of every event on ``subject`` in ``stream`` (the readings inside a
    packed message each), in stream order."""
    out: list[tuple[int, str]] = []
    async for batch in bus.read(stream, filter_subjects=[subject], stop_at_end=True):
        for m in batch:
            for body in wire.bodies_of(m.data):
                seq, ident = _identity(body)
                assert seq is not None and ident is not None
                out.append((seq, ident))
    return out


async def stream_messages(bus: Bus, stream: str, subject: str) -> list[str]:
    """The subject of every message on ``subject`` in ``stream``."""
    out: list[str] = []
    async for batch in bus.read(stream, filter_subjects=[subject], stop_at_end=True):
        out += [m.subject for m in batch]
    return out


async def until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@pytest.fixture
async def hub(nats_server: NatsServer) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_server.url)
    await bus.ensure_streams(platform_streams(Settings(duplicate_window=DUP_WINDOW)))
    yield bus
    await bus.close()


class Node:
    """An outbox and its forwarder, as the agent wires them."""

    def __init__(self, path: Path, url: str, limits: OutboxLimits | None = None, pack: int = 1000) -> None:
        self.path, self.url, self.limits, self.pack = path, url, limits, pack
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Node:
        self.db = await NodeDatabase.open(self.path / "node.db")
        self.outbox = await Outbox.open(self.db, NODE, self.limits)
        self.uplink = Uplink(self.url, name=f"test-{NODE}", connect_timeout=1.0, retry_max=0.5)
        self.forwarder = Forwarder(
            self.outbox, self.uplink, ForwarderOptions(batch=2000, pack=self.pack, ack_timeout=2.0, retry_max=0.5)
        )
        return self

    def start_forwarding(self) -> None:
        self.tasks = [
            asyncio.create_task(self.uplink.run(self.stop)),
            asyncio.create_task(self.forwarder.run(self.stop)),
        ]

    async def drained(self) -> bool:
        return self.outbox.backlog_now()[0] == 0

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.uplink.close()
        await self.outbox.close()
        await self.db.close()


async def test_burst_during_an_outage_longer_than_the_duplicate_window_arrives_once_in_order(
    tmp_path: Path, nats_server: NatsServer, hub: Bus
) -> None:
    async with Node(tmp_path, nats_server.url) as node:
        node.start_forwarding()
        appended: list[int] = []
        first = await node.outbox.append_many([reading(i) for i in range(4000)])
        appended += [s for s in first if s is not None]
        # the hub dies while the forwarder is draining (some batches acked, one maybe in flight)
        await until(lambda: _has_data(hub), 20, "the first readings to reach the hub")
        await asyncio.to_thread(nats_server.kill)
        for start in range(4000, 20_000, 1000):
            seqs = await node.outbox.append_many([reading(i) for i in range(start, start + 1000)])
            appended += [s for s in seqs if s is not None]
        await asyncio.sleep(DUP_WINDOW.total_seconds() * 1.5)  # outlast the duplicate window
        await asyncio.to_thread(nats_server.start)
        await until(node.drained, 60, "the outbox to drain")

    assert len(appended) == 20_000
    async with await Bus.connect(nats_server.url) as bus:
        stored = await stream_identities(bus, DATA, data_filter(NODE))
        nodeseqs = [seq for seq, _ in stored]
        assert len(nodeseqs) == len(set(nodeseqs)), "a reading is in the stream twice"
        assert set(nodeseqs) == set(appended), "a reading is missing from the stream"
        assert nodeseqs == sorted(nodeseqs), "per-node order is broken"

        # ... and in the projection: the readings view holds each once, in the node's order
        async with running(bus, tmp_path / "views.duckdb") as projector:
            ends = {DATA: await bus.last_seq(DATA), EVENTS: await bus.last_seq(EVENTS)}
            assert await projector.wait_for(ends, 60), "the projector did not catch up"
            result = await query(
                bus, "SELECT meta FROM readings WHERE node = ? ORDER BY seq", [NODE], limit=50_000
            )
    order = [int(dict(_pairs(row[0]))["i"]) for row in result.rows]
    assert order == list(range(20_000)), "the view lost, repeated or reordered readings"


def _pairs(meta: object) -> list[tuple[str, str]]:
    """A DuckDB MAP as the JSON reply carries it (a dict, or key/value lists)."""
    if isinstance(meta, dict):
        if set(meta) == {"key", "value"}:
            return list(zip(meta["key"], meta["value"], strict=True))
        return list(meta.items())
    return [(k, v) for k, v in meta]  # type: ignore[attr-defined]


async def _has_data(bus: Bus) -> bool:
    return await bus.last_seq(DATA) > 0


async def test_a_crash_between_publish_and_delete_is_reconciled_beyond_the_duplicate_window(
    tmp_path: Path, nats_server: NatsServer, hub: Bus
) -> None:
    async with Node(tmp_path, nats_server.url) as node:
        events = [reading(i) if i % 10 else lifecycle(i) for i in range(3000)]
        appended = await node.outbox.append_many(events)
        # What a crash right after the hub's acks looks like: published, never deleted.
        await node.forwarder.ensure_positions(hub)
        batch = await node.outbox.next_batch(1200)
        await hub.publish_raw_many([Outgoing(e.subject, e.body, e.msg_id) for e in batch])
        node.outbox.release()
    await asyncio.sleep(DUP_WINDOW.total_seconds() * 1.5)  # JetStream would now store copies

    async with Node(tmp_path, nats_server.url) as node:  # "restart"
        node.start_forwarding()
        await until(node.drained, 30, "the outbox to drain")
        assert node.forwarder.stats.reconciled == 1200
        assert node.forwarder.stats.sent == 3000 - 1200

    readings = await stream_identities(hub, DATA, data_filter(NODE))
    others = await stream_identities(hub, EVENTS, fromedge_filter(NODE))
    assert sorted(s for s, _ in readings + others) == sorted(appended)
    assert [s for s, _ in readings] == sorted(s for s, _ in readings)


async def test_a_message_refused_mid_batch_is_parked_and_the_ones_after_it_arrive_once(
    tmp_path: Path, nats_server: NatsServer, hub: Bus
) -> None:
    """JetStream refuses one message in the middle of a pipelined batch (too large for the
    stream) and stores those after it. Nothing is deleted on trust: what was stored is found
    and removed; the refused one, which would block the node forever, is parked and counted."""
    info = await hub.js.stream_info(DATA)
    config = info.config
    config.max_msg_size = 2000
    await hub.js.update_stream(config)
    async with Node(tmp_path, nats_server.url, pack=1) as node:  # one message per reading
        events = [reading(i) for i in range(300)]
        big = Event.new(
            Reading(name="env.blob", value="x" * 3000, timestamp=time.time_ns()),
            source=f"node/{NODE}",
            subject=NODE,
        )
        events.insert(150, big)
        appended = await node.outbox.append_many(events)
        node.start_forwarding()
        await until(node.drained, 20, "the outbox to drain")
        await until(lambda: _count(hub, 300), 20, "the 300 small readings to be stored")
        assert node.forwarder.stats.reconciled >= 150, "what was stored after it was not found"
        assert node.forwarder.stats.parked == 1
        assert node.outbox.dropped()["refused_by_hub"] == 1
        parked = await node.db.call(
            lambda: node.db.conn.execute("SELECT nodeseq, reason FROM parked").fetchall()
        )
    assert [seq for seq, _ in parked] == [appended[150]] and "maximum" in parked[0][1]
    stored = [s for s, _ in await stream_identities(hub, DATA, data_filter(NODE))]
    assert sorted(stored) == sorted(s for s in appended if s != appended[150])
    assert len(stored) == len(set(stored))


async def test_a_missing_stream_is_waited_out_not_blamed_on_the_message(
    tmp_path: Path, nats_server: NatsServer, hub: Bus
) -> None:
    async with Node(tmp_path, nats_server.url) as node:
        appended = await node.outbox.append_many([reading(i) for i in range(50)])
        await node.forwarder.ensure_positions(hub)
        await hub.js.delete_stream(DATA)  # publishes now get "no responders"
        node.start_forwarding()
        await until(lambda: _failed(node), 20, "a failed attempt")
        assert node.forwarder.stats.parked == 0 and node.outbox.backlog_now()[0] == 50
        await hub.ensure_streams(platform_streams(Settings(duplicate_window=DUP_WINDOW)))
        await until(node.drained, 20, "the outbox to drain once the stream is back")
    stored = [s for s, _ in await stream_identities(hub, DATA, data_filter(NODE))]
    assert stored == appended


async def _failed(node: Node) -> bool:
    return node.forwarder.stats.failures > 0


async def _holds(outbox: Outbox, n: int) -> bool:
    return outbox.backlog_now()[0] == n


async def _count(bus: Bus, n: int) -> bool:
    info = await bus.js.stream_info(DATA)
    return info.state.messages >= n


async def test_a_tiny_outbox_drops_oldest_readings_keeps_lifecycle_and_counts_drops(
    tmp_path: Path, nats_server: NatsServer, hub: Bus
) -> None:
    limits = OutboxLimits(max_bytes=64 * 1024)
    async with Node(tmp_path, nats_server.url, limits) as node:
        kept_lifecycle: list[int] = []
        all_readings: list[int] = []
        for i in range(1000):  # the hub is not reached: the forwarder is not started yet
            if i % 50 == 0:
                kept_lifecycle.append(await node.outbox.append(lifecycle(i)))
            seq = await node.outbox.append(reading(i))
            all_readings.append(seq)
        dropped = node.outbox.dropped()[DROPPED_FULL]
        held = node.outbox.backlog_now()
        assert held[1] <= limits.max_bytes
        node.start_forwarding()
        await until(node.drained, 30, "the outbox to drain")

    readings = [s for s, _ in await stream_identities(hub, DATA, data_filter(NODE))]
    others = [s for s, _ in await stream_identities(hub, EVENTS, fromedge_filter(NODE))]
    assert others == kept_lifecycle, "a lifecycle event was dropped"
    assert readings == all_readings[-len(readings) :], "the readings kept are not the newest"
    assert dropped == len(all_readings) - len(readings) > 0


async def test_readings_travel_packed_lifecycle_alone_in_the_nodes_order(
    tmp_path: Path, nats_server: NatsServer, hub: Bus
) -> None:
    async with Node(tmp_path, nats_server.url) as node:
        events = [lifecycle(i) if i % 700 == 0 else reading(i) for i in range(5000)]
        appended = await node.outbox.append_many(events)
        node.start_forwarding()
        await until(node.drained, 30, "the outbox to drain")
        messages = node.forwarder.stats.messages
    readings = await stream_identities(hub, DATA, data_filter(NODE))
    others = await stream_identities(hub, EVENTS, fromedge_filter(NODE))
    subjects = await stream_messages(hub, DATA, data_filter(NODE))
    assert sorted(s for s, _ in readings + others) == sorted(s for s in appended if s is not None)
    assert [s for s, _ in readings] == sorted(s for s, _ in readings), "per-node order is broken"
    assert len(others) == 8 and all(e.type != "data.reading" for e in events[::700])
    # packed: at most 1,000 readings (and 256 KiB) a message, and split at each lifecycle event
    assert set(subjects) == {wire.batch_subject(NODE)}
    assert len(readings) // 1000 < len(subjects) <= messages - len(others)
    async for batch in hub.read(DATA, filter_subjects=[data_filter(NODE)], stop_at_end=True):
        for m in batch:
            assert len(m.data) <= wire.MAX_BATCH_BYTES and len(wire.unpack(m.data)) <= 1000


async def test_a_crash_after_packed_messages_were_stored_is_reconciled_per_reading(
    tmp_path: Path, nats_server: NatsServer, hub: Bus
) -> None:
    """The hub stored packed messages whose acks the node never saw (a crash between publish
    and delete), and the duplicate window is over: after the restart the forwarder unpacks what
    the hub holds and sends only the rest, each reading once."""
    async with Node(tmp_path, nats_server.url) as node:
        events = [reading(i) if i % 10 else lifecycle(i) for i in range(3000)]
        appended = await node.outbox.append_many(events)
        await node.forwarder.ensure_positions(hub)
        batch = await node.outbox.next_batch(1200)
        packed = pack_entries(NODE, batch, pack=1000, pack_bytes=wire.MAX_BATCH_BYTES)
        assert any(len(p.entries) > 1 for p in packed)
        await hub.publish_raw_many([p.outgoing for p in packed])
        node.outbox.release()
    await asyncio.sleep(DUP_WINDOW.total_seconds() * 1.5)  # JetStream would now store copies

    async with Node(tmp_path, nats_server.url) as node:  # "restart"
        node.start_forwarding()
        await until(node.drained, 30, "the outbox to drain")
        assert node.forwarder.stats.reconciled == 1200
        assert node.forwarder.stats.sent == 3000 - 1200

    readings = await stream_identities(hub, DATA, data_filter(NODE))
    others = await stream_identities(hub, EVENTS, fromedge_filter(NODE))
    assert sorted(s for s, _ in readings + others) == sorted(appended)
    assert [s for s, _ in readings] == sorted(s for s, _ in readings)


async def test_a_packed_message_too_large_for_the_hub_is_packed_smaller_and_arrives_once(
    tmp_path: Path, nats_server: NatsServer, hub: Bus
) -> None:
    """A stream whose max_msg_size is below what the node packs: the node packs less (no
    reading is parked for it), and the one reading too large on its own is parked."""
    info = await hub.js.stream_info(DATA)
    config = info.config
    config.max_msg_size = 2000
    await hub.js.update_stream(config)
    async with Node(tmp_path, nats_server.url) as node:
        events = [reading(i) for i in range(300)]
        big = Event.new(Reading(name="env.blob", value="x" * 3000, timestamp=time.time_ns()),
                        source=f"node/{NODE}", subject=NODE)
        events.insert(150, big)
        appended = await node.outbox.append_many(events)
        node.start_forwarding()
        await until(node.drained, 30, "the outbox to drain")
        assert node.forwarder.stats.parked == 1
        assert node.forwarder.stats.messages < 300, "the node stopped packing altogether"
    stored = [s for s, _ in await stream_identities(hub, DATA, data_filter(NODE))]
    assert stored == [s for s in appended if s != appended[150]]
    subjects = await stream_messages(hub, DATA, data_filter(NODE))
    assert wire.batch_subject(NODE) in subjects
