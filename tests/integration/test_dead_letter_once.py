"""A dead letter is stored once, however late it is sent again (issue 15).

A consumer that crashes after dead-lettering a message but before acknowledging it (or, for
the projector, before committing its position) sends the same letter again when it comes
back. The stream's duplicate window (2 minutes on the platform, 1 s here) drops a resend only
within the window; each letter's own subject (``dlq.<stream>.<consumer>.<seq>[.<index>]``),
published only while empty, drops it at any time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from hivebus.bus.client import Bus
from hivebus.bus.consumer import DeadLetter, dead_letter
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import DATA, DEADLETTERS, EVENTS, platform_streams
from hivebus.bus.subjects import dlq_filters
from hivebus.config import Settings
from hivebus.projections.runner import running
from hivebus.replay.build import stream_ends

pytestmark = pytest.mark.integration

WINDOW = timedelta(seconds=1)


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_server.url, settings=Settings(duplicate_window=WINDOW))
    await bus.ensure_streams(platform_streams(Settings(duplicate_window=WINDOW)))
    yield bus
    await bus.close()


async def letters(bus: Bus, filters: list[str] | None = None) -> list[tuple[str, DeadLetter]]:
    out: list[tuple[str, DeadLetter]] = []
    async for batch in bus.read(DEADLETTERS, filter_subjects=filters or ["dlq.>"], stop_at_end=True):
        out.extend((m.subject, DeadLetter.model_validate_json(m.data)) for m in batch)
    return out


async def past_the_window() -> None:
    await asyncio.sleep(WINDOW.total_seconds() * 1.5)


async def test_a_letter_sent_again_after_the_duplicate_window_is_stored_once(bus: Bus) -> None:
    for _ in range(2):
        await dead_letter(bus, stream=EVENTS, consumer="handler-ecr", seq=7, subject="evt.x", data=b"junk",
                          reason="not JSON")
        await dead_letter(bus, stream=DATA, consumer="projector", seq=9, subject="data.W1.BATCH", data=b"{}",
                          reason="no name", index=3)
        await past_the_window()
    stored = await letters(bus)
    assert [(s, lt.stream, lt.seq, lt.index) for s, lt in stored] == [
        ("dlq.EVENTS.handler-ecr.7", EVENTS, 7, None),
        ("dlq.DATA.projector.9.3", DATA, 9, 3),
    ]
    # the gateway's answer reader finds letters of both forms: one subject each, and older logs'
    assert [s for s, _ in await letters(bus, dlq_filters(EVENTS, "handler-ecr"))] == ["dlq.EVENTS.handler-ecr.7"]


async def test_other_readings_of_one_message_and_other_consumers_each_get_their_letter(bus: Bus) -> None:
    for index in (0, 1):
        await dead_letter(bus, stream=DATA, consumer="projector", seq=4, subject="s", data=b"", reason="r", index=index)
    await dead_letter(bus, stream=DATA, consumer="projector", seq=4, subject="s", data=b"", reason="r")
    await dead_letter(bus, stream=DATA, consumer="replica", seq=4, subject="s", data=b"", reason="r")
    assert sorted(s for s, _ in await letters(bus)) == [
        "dlq.DATA.projector.4", "dlq.DATA.projector.4.0", "dlq.DATA.projector.4.1", "dlq.DATA.replica.4",
    ]


async def test_a_projector_starting_over_after_a_crash_stores_its_dead_letters_once(bus: Bus, tmp_path: Path) -> None:
    """Two projectors over fresh files, past the window: what the second sees as a first time
    (it committed nothing, as after a crash before its first commit) adds no letter."""
    await bus.js.publish("evt.junk.key", b"this is no event")
    await bus.js.publish("data.W900.env.temperature", b'{"neither": "is this"}')
    for run in ("first", "second"):
        async with running(bus, tmp_path / f"{run}.duckdb") as projector:
            assert await projector.wait_for(await stream_ends(bus), 30)
            # the letters are published before the position is committed; wait for them
            for _ in range(100):
                if len(await letters(bus)) >= 2:
                    break
                await asyncio.sleep(0.05)
        await past_the_window()
    stored = await letters(bus)
    assert sorted((lt.stream, lt.consumer) for _, lt in stored) == [(DATA, "projector"), (EVENTS, "projector")]
