"""``Bus.events`` reads packed DATA messages reading by reading (issue 18): what ``hub.tail``
style readers and the parity tests use."""

from __future__ import annotations

import pytest

from hivebus.bus import batch
from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import DATA
from hivebus.bus.subjects import subject_for
from hivebus.schemas import codec
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event

pytestmark = pytest.mark.integration


async def test_events_unpacks_a_packed_message_and_reads_a_single_one(nats_server: NatsServer) -> None:
    readings = [Event.new(Reading(name="env.temperature", value=20.0 + i, timestamp=1_700_000_000_000_000_000 + i),
                          source="node/W001", subject="W001", nodeseq=i + 1) for i in range(3)]
    async with await Bus.connect(nats_server.url) as bus:
        await bus.ensure_streams()
        packed = await bus.js.publish(batch.batch_subject("W001"), batch.pack([codec.encode(e) for e in readings[:2]]))
        single = await bus.js.publish(subject_for(readings[2]), codec.encode(readings[2]))
        got = [(seq, event.id) async for seq, event in bus.events(DATA, stop_at_end=True)]
    assert got == [(packed.seq, readings[0].id), (packed.seq, readings[1].id), (single.seq, readings[2].id)]
