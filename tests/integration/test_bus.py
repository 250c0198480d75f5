"""The Bus against a real nats-server: publish, dedup, concurrency, consume, faults."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from hivebus.bus.client import Bus
from hivebus.bus.consumer import DeadLetter
from hivebus.bus.streams import DEADLETTERS, EVENTS, ConsumerSpec, platform_streams
from hivebus.bus.subjects import evt_filter
from hivebus.config import Settings
from hivebus.errors import ConcurrencyConflict, ConnectError, PublishError, RequestTimeout
from hivebus.schemas import Event, Payload, event

pytestmark = pytest.mark.integration


@event("test.bus.counted")
class Counted(Payload):
    n: int


def counted(n: int, key: str = "agg") -> Event:
    return Event.new(Counted(n=n), source="user/test", subject=key)


@pytest.fixture
async def bus(nats_server):
    b = await Bus.connect(nats_server.url, connect_timeout=5)
    await b.ensure_streams()
    yield b
    await b.close()


async def drain(bus: Bus, stream: str = EVENTS, **kw) -> list[tuple[int, Event]]:
    return [item async for item in bus.events(stream, stop_at_end=True, **kw)]


async def test_streams_are_created_once_and_updated_when_settings_change(bus: Bus) -> None:
    assert set((await bus.ensure_streams()).values()) == {"unchanged"}
    longer = Settings(data_max_age=Settings().data_max_age * 2)
    result = await bus.ensure_streams(platform_streams(longer))
    assert result["DATA"] == "updated" and result["EVENTS"] == "unchanged"


async def test_publish_then_consume_round_trip(bus: Bus) -> None:
    sent = counted(1)
    seq = await bus.publish(sent)
    spec = ConsumerSpec(
        stream=EVENTS, durable="t-roundtrip", filter_subjects=(evt_filter("test.bus.>"),)
    )
    async for d in bus.consume(spec):
        assert (d.seq, d.event) == (seq, sent)
        assert d.event.data == Counted(n=1)
        await d.ack()
        break


async def test_same_event_id_is_stored_once(bus: Bus) -> None:
    e, other = counted(7), counted(8)
    first = await bus.publish(e)
    assert await bus.publish(e) == first
    assert await bus.publish_many([e, e, other]) == [first, first, first + 1]
    assert [ev.id for _, ev in await drain(bus)] == [e.id, other.id]


async def test_wrong_expected_sequence_is_rejected(bus: Bus) -> None:
    s1 = await bus.publish(counted(1, "order-1"))
    with pytest.raises(ConcurrencyConflict):
        await bus.publish(counted(2, "order-1"), expected_last_subject_seq=s1 + 10)
    s2 = await bus.publish(counted(2, "order-1"), expected_last_subject_seq=s1)
    # another aggregate's writes do not disturb this one's expectation
    await bus.publish(counted(3, "order-2"))
    await bus.publish(counted(3, "order-1"), expected_last_subject_seq=s2)
    with pytest.raises(ConcurrencyConflict):
        await bus.publish(counted(4, "order-1"), expected_last_subject_seq=s2)


async def test_expected_sequence_over_all_event_types_of_one_aggregate(bus: Bus) -> None:
    """nats-server >= 2.11: the expectation may name a wildcard over one aggregate's subjects."""
    over_aggregate = evt_filter("*.*.*", key="job-9")
    s1 = await bus.publish(counted(1, "job-9"))
    with pytest.raises(ConcurrencyConflict):
        await bus.publish(
            counted(2, "job-9"), expected_last_subject_seq=s1 - 1, expected_subject=over_aggregate
        )
    await bus.publish(
        counted(2, "job-9"), expected_last_subject_seq=s1, expected_subject=over_aggregate
    )


async def test_publish_to_a_subject_no_stream_holds_is_an_error(bus: Bus) -> None:
    with pytest.raises(PublishError, match="no stream"):
        await bus._publish_one("nowhere.at.all", b"{}", {"Nats-Msg-Id": "x"}, timeout=2, retries=0)


async def test_consumer_restarted_mid_stream_resumes_without_loss(nats_server) -> None:
    spec = ConsumerSpec(
        stream=EVENTS,
        durable="t-resume",
        filter_subjects=(evt_filter("test.bus.>"),),
        ack_wait=timedelta(seconds=1),
    )
    async with await Bus.connect(nats_server.url) as bus:
        await bus.ensure_streams()
        await bus.publish_many([counted(i) for i in range(100)])
        acked: set[int] = set()
        async for d in bus.consume(spec, batch=10):
            if len(acked) < 40:
                await d.ack()
                acked.add(d.event.data.n)
            else:  # received, never acked: the consumer "crashes" holding these
                break
    async with await Bus.connect(nats_server.url) as bus:
        after: list[int] = []
        async for d in bus.consume(spec, batch=10):
            after.append(d.event.data.n)
            await d.ack()
            if acked | set(after) == set(range(100)):
                break
    assert acked == set(range(40))
    assert not acked & set(after), "an acknowledged event was delivered again"
    assert set(after) == set(range(40, 100))


async def test_undecodable_messages_go_to_the_dead_letter_stream(bus: Bus) -> None:
    await bus.publish(counted(1))
    await bus.nc.publish("evt.test.bus.counted.agg", b"{not json")
    await bus.nc.publish(
        "evt.test.bus.counted.agg", json.dumps({"type": "test.bus.counted", "id": "x"}).encode()
    )
    await bus.publish(counted(2))
    spec = ConsumerSpec(stream=EVENTS, durable="t-dlq", filter_subjects=(evt_filter("test.bus.>"),))
    got = []
    async for d in bus.consume(spec):
        got.append(d.event.data.n)
        await d.ack()
        if len(got) == 2:
            break
    assert got == [1, 2]
    letters = [
        DeadLetter.model_validate_json(m.data)
        for b in [x async for x in bus.read(DEADLETTERS, stop_at_end=True)]
        for m in b
    ]
    assert [(dl.seq, dl.consumer) for dl in letters] == [(2, "t-dlq"), (3, "t-dlq")]
    assert "JSON" in letters[0].reason and letters[0].payload == b"{not json"
    assert letters[1].field in {"source", "subject", "time", "data"}


async def test_request_reply_survives_a_failing_handler(bus: Bus) -> None:
    async def handler(body: bytes) -> bytes:
        if body == b"boom":
            raise ValueError("bad request body")
        return body.upper()

    await bus.serve("test.echo", handler)
    assert await bus.request("test.echo", b"hi") == b"HI"
    assert json.loads(await bus.request("test.echo", b"boom"))["error"] == "bad request body"
    assert await bus.request("test.echo", b"again") == b"AGAIN"
    with pytest.raises(RequestTimeout):
        await bus.request("test.nobody", b"x", timeout=1)


async def test_unreachable_server_is_a_clear_error(nats_server) -> None:
    url = nats_server.url
    nats_server.stop()
    with pytest.raises(ConnectError, match="cannot reach NATS"):
        await Bus.connect(url, connect_timeout=1.5)


@pytest.mark.slow
async def test_sigkill_loses_no_acknowledged_event(nats_server) -> None:
    async with await Bus.connect(nats_server.url) as bus:
        await bus.ensure_streams()
        events = [counted(i) for i in range(5000)]
        seqs = await bus.publish_many(events)
    nats_server.kill()
    nats_server.restart()
    async with await Bus.connect(nats_server.url) as bus:
        stored = await drain(bus)
    assert [s for s, _ in stored] == seqs
    assert [e.id for _, e in stored] == [e.id for e in events]


@pytest.mark.slow
async def test_publish_many_through_a_server_restart_stores_each_event_once(nats_server) -> None:
    async with await Bus.connect(nats_server.url) as bus:
        await bus.ensure_streams()
        events = [counted(i) for i in range(4_000)]
        killed_at: list[int] = []

        async def bounce() -> None:
            # Kill as soon as the first events are stored, not after a guessed sleep: the
            # restart then lands mid-publish however fast this machine publishes.
            while (stored := await bus.last_seq(EVENTS)) == 0:
                await asyncio.sleep(0.005)
            killed_at.append(stored)
            await asyncio.to_thread(nats_server.kill)
            await asyncio.to_thread(nats_server.restart)

        bouncer = asyncio.create_task(bounce())
        seqs = await bus.publish_many(events, timeout=2.0)
        await bouncer
        stored = await drain(bus)
    assert 0 < killed_at[0] < len(events)  # the server died with part of the batch stored
    ids = [e.id for _, e in stored]
    assert len(ids) == len(set(ids)) == len(events)
    assert set(ids) == {e.id for e in events}
    assert sorted(seqs) == [s for s, _ in stored]


@pytest.mark.cluster
@pytest.mark.slow
async def test_cluster_keeps_accepting_publishes_with_one_server_down(nats_cluster) -> None:
    settings = Settings(replicas=3)
    async with await Bus.connect(nats_cluster.urls, settings=settings) as bus:
        await bus.ensure_streams()
        first = await bus.publish_many([counted(i) for i in range(500)])
        nats_cluster.servers[0].kill()
        second = await bus.publish_many([counted(i) for i in range(500, 1000)], timeout=3.0)
        nats_cluster.servers[0].restart()
        stored = await drain(bus)
    assert [e.data.n for _, e in stored] == list(range(1000))
    assert [s for s, _ in stored] == first + second
