"""An agent stopped while the hub is away ends cleanly (issue 15, item 5).

It used to end with a ``ConnectionClosedError`` traceback from its to-edge consumer, which
asyncio cancelled only at interpreter shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from tests.integration.test_handlers import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


async def test_an_agent_stopped_while_the_hub_is_away_exits_cleanly(nats_server: NatsServer, tmp_path: Path) -> None:
    async with await Bus.connect(nats_server.url) as bus:
        await bus.ensure_streams()
    env = {**os.environ, "HIVEBUS_LOG_LEVEL": "info", "HIVEBUS_LOG_FORMAT": "json"}
    env.pop("HIVEBUS_NATS_CREDENTIALS", None)
    log = tmp_path / "node.log"
    with log.open("wb") as sink:
        node = subprocess.Popen(
            [sys.executable, "-m", "hivebus", "node", "run", "--virtual", "--node-id", "W001", "--hub", nats_server.url,
             "--data-dir", str(tmp_path / "node"), "--heartbeat", "0.5"],
            env=env, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        await until(lambda: asyncio.sleep(0, '"uplink.connected"' in log.read_text()), 30, "the node online")
        await asyncio.sleep(2)  # its to-edge consumer is fetching
        nats_server.stop()
        await until(lambda: asyncio.sleep(0, '"nats.disconnected"' in log.read_text()), 15, "the node to notice")
        node.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(node.wait, 30)
    finally:
        if node.poll() is None:
            node.kill()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[text.find("Traceback") - 300:][:3000]
    assert '"agent.stopped"' in text
