"""``hub.tail`` goes on after a hub restart from the last event it yielded (issue 15, item 5)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from hivebus.api import Hub
from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.handlers.testing import resources
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import NodeHeartbeat
from tests.integration.test_handlers import by, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def beat(i: int) -> Event:
    payload = NodeHeartbeat(node="W001", resources=resources(cpus=2), uptime_seconds=float(i))
    return by("node/W001", payload, "W001")


async def test_tail_resumes_after_a_hub_restart_from_the_last_event_it_yielded(
    nats_server: NatsServer,
) -> None:
    seen: list[float] = []
    async with await Bus.connect(nats_server.url) as bus:
        await bus.ensure_streams()
        hub = Hub(bus)

        async def follow() -> None:
            async for event in hub.tail(from_edge="*", type="node.heartbeat"):
                seen.append(event.data.uptime_seconds)  # type: ignore[attr-defined]

        follower = asyncio.create_task(follow())
        await asyncio.sleep(1.0)  # the reader is in place (new events only)
        for i in range(5):
            await bus.publish(beat(i))
        await until(lambda: asyncio.sleep(0, len(seen) >= 5), 10, "the first events")
        nats_server.restart()  # same store dir and port
        for i in range(5, 10):
            await bus.publish(beat(i))
        try:
            await until(
                lambda: asyncio.sleep(0, len(seen) >= 10 or follower.done()),
                30,
                "after the restart",
            )
            assert not follower.done(), f"tail ended: {follower.exception()!r}"
            await asyncio.sleep(1.0)  # no duplicate arrives late
        finally:
            follower.cancel()
    counts = Counter(seen)
    assert sorted(counts) == [float(i) for i in range(10)]
    assert [u for u, n in counts.items() if n > 1] == []


async def test_the_tail_command_resumes_after_a_hub_restart(nats_server: NatsServer, tmp_path: Path) -> None:
    """``hivebus tail`` as a user runs it: one process across the restart, each event printed once."""
    async with await Bus.connect(nats_server.url) as bus:
        await bus.ensure_streams()
    env = {**os.environ, "HIVEBUS_DATA_DIR": str(tmp_path / ".hivebus"), "HIVEBUS_LOG_LEVEL": "warning"}
    env.pop("HIVEBUS_NATS_CREDENTIALS", None)
    tail = subprocess.Popen(
        [sys.executable, "-m", "hivebus", "tail", "--from-edge", "*", "--type", "node.heartbeat", "--json",
         "--since", "-1h", "--hub", nats_server.url],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )
    lines: list[dict] = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(line) for line in tail.stdout or ()), daemon=True)
    reader.start()
    try:
        async with await Bus.connect(nats_server.url) as bus:
            for i in range(5):
                await bus.publish(beat(i))
        await until(lambda: asyncio.sleep(0, len(lines) >= 5), 30, "the first events printed")
        await asyncio.to_thread(nats_server.restart)
        async with await Bus.connect(nats_server.url) as bus:
            for i in range(5, 10):
                await bus.publish(beat(i))
        await until(lambda: asyncio.sleep(0, len(lines) >= 10 or tail.poll() is not None), 30, "after the restart")
        assert tail.poll() is None, f"hivebus tail ended: {tail.stderr.read() if tail.stderr else ''}"
        await asyncio.sleep(1.0)  # no duplicate arrives late
    finally:
        tail.terminate()
        _, stderr = tail.communicate(timeout=15)
    assert "Traceback" not in stderr, stderr
    uptimes = Counter(line["data"]["uptime_seconds"] for line in lines)
    assert sorted(uptimes) == [float(i) for i in range(10)]
    assert [u for u, n in uptimes.items() if n > 1] == []
    assert [line["seq"] for line in lines] == sorted(line["seq"] for line in lines)
