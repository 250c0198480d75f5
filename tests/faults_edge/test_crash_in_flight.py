"""An agent SIGKILLed with a packed batch still on its way to the hub: no reading twice.

The agent reaches the hub through a proxy that, at a chosen moment, holds back what the agent
sends (its publishes reach neither the hub nor, so, any ack). Once a packed batch (``HBB1``)
is held, the agent is SIGKILLed and started again on the same data directory, straight to the
hub. Its reconciliation finds nothing of the held batch in DATA (the hub never got it), so it
sends those readings again. Then the proxy lets the old connection's bytes through, as a
network that was still delivering them would: the hub receives the first attempt *after* the
retry. The retry must have been the same message (same readings, same ``Nats-Msg-Id``: the
bounds of the batch in flight are stored in the outbox before it is published), so JetStream
drops the late copy as a duplicate (its acks say so) and every reading is in DATA once.
Before the bounds were stored, the restarted forwarder packed the held readings with those
that arrived since, under another id, and the late copy was stored too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from datetime import timedelta
from pathlib import Path

import pytest

from hivebus.bus.batch import MAGIC
from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import platform_streams
from hivebus.config import Settings
from tests.faults.conftest import until
from tests.faults_edge.conftest import Processes, agent, fresh_outbox, hub_copy, outbox_state

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NODE = "W073"
RATE = 2000  # virtual readings/s: a few dozen per forwarder round trip, so batches are packed


class HoldingProxy:
    """A TCP proxy to the hub that can hold back what clients send (``hold``), and later
    deliver it (``release``) on the same connection to the hub, reading the hub's answers."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.holding = False
        self.held = bytearray()
        self.answers = bytearray()  # what the hub sent on the held connection after release
        self._held_upstream: asyncio.StreamWriter | None = None
        self._held_reader: asyncio.StreamReader | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{port}"

    async def _serve(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.target)
        back = asyncio.create_task(self._pipe(up_r, down_w))
        self._tasks.add(back)
        try:
            while data := await down_r.read(65536):
                if self.holding:
                    self.held += data
                    self._held_upstream, self._held_reader = up_w, up_r
                else:
                    up_w.write(data)
                    await up_w.drain()
        except ConnectionError:
            pass
        if up_w is not self._held_upstream:
            up_w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if reader is self._held_reader and self._held_reader is not None and not self.holding:
                    self.answers += data
                    continue
                if not writer.is_closing():
                    writer.write(data)

    def hold(self) -> None:
        self.holding = True

    async def release(self) -> None:
        """Deliver what was held to the hub, on the connection it came from."""
        self.holding = False
        assert self._held_upstream is not None
        self._held_upstream.write(bytes(self.held))
        await self._held_upstream.drain()

    async def close(self) -> None:
        if self._held_upstream is not None:
            self._held_upstream.close()
        if self.server is not None:
            self.server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def test_a_batch_delivered_late_after_an_agent_crash_is_stored_once(
    tmp_path: Path, nats_server: NatsServer, processes: Processes
) -> None:
    bus = await Bus.connect(nats_server.url)
    # a window longer than the test: the late copy must be caught by its id alone
    await bus.ensure_streams(platform_streams(Settings(duplicate_window=timedelta(minutes=2))))
    host, port = nats_server.url.removeprefix("nats://").split(":")
    proxy = HoldingProxy(host, int(port))
    via_proxy = await proxy.start()
    data_dir = tmp_path / "node"
    first = await fresh_outbox(data_dir, NODE)
    options = ("--virtual-rate", str(RATE), "--virtual-interval", "0.05", "--heartbeat", "0.5")
    node = agent(processes, NODE, via_proxy, data_dir, *options).start()
    try:

        async def forwarding() -> bool:
            node.assert_alive()
            return len((await hub_copy(bus, NODE)).data) > RATE

        await until(forwarding, 30, "the agent to forward through the proxy")
        proxy.hold()

        async def packed_batch_held() -> bool:
            node.assert_alive()
            return MAGIC in proxy.held

        await until(packed_batch_held, 10, "a packed batch to be held")
        await node.kill()
        crashed = outbox_state(data_dir)
        in_flight = set(crashed.readings)
        assert in_flight, "the held batch should still be in the outbox"
        node = agent(processes, NODE, nats_server.url, data_dir, *options).start()

        async def resent() -> bool:
            node.assert_alive()
            return in_flight <= (await hub_copy(bus, NODE)).nodeseqs

        await until(resent, 30, "the restarted agent to send the held readings again")
        publishes = proxy.held.count(b"HPUB ")
        await proxy.release()

        async def answered() -> bool:
            return proxy.answers.count(b'"stream":') >= publishes

        await until(answered, 30, f"the hub to answer the {publishes} late publishes")
        acks = [json.loads(a) for a in re.findall(rb'\{"stream".*?\}', bytes(proxy.answers))]
        assert acks and all(a.get("duplicate") for a in acks), f"late copies stored: {acks}"
        await node.stop()
        copy = await hub_copy(bus, NODE)
        assert copy.twice() == [], f"readings stored twice: {copy.twice()[:10]}"
        assert min(copy.nodeseqs) >= first
    finally:
        await proxy.close()
        await bus.close()
