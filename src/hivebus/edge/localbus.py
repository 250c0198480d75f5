"""The node-local bus: a nats-server on loopback that plugins on this node talk to.

It runs whether or not the hub is reachable, so node-local subscriptions and triggers keep
working offline (protocol: docs/node-local-bus.md). The agent starts the server from its main
thread (so the kernel stops it if the agent is killed) and reuses the port of its previous run
when that port is free, so plugins that outlived an agent crash reconnect to the new one.
Core NATS only: nothing is stored on it, so its fsync policy is irrelevant.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from hivebus.bus.server import NatsServer, ServerConfig
from hivebus.errors import ConnectError

log = structlog.get_logger()

PORT_FILE = "port"


class LocalBus:
    def __init__(self, store_dir: Path, *, port: int = 0, name: str = "node-local") -> None:
        self.store_dir = Path(store_dir)
        self._port = port
        self._name = name
        self.server: NatsServer | None = None
        self.nc: NATS | None = None

    @property
    def url(self) -> str:
        if self.server is None:
            raise ConnectError("the node-local bus is not started")
        return self.server.url

    def start(self) -> str:
        """Start the server (blocking until it answers); its URL."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        port = self._port or self._previous_port()
        self.server = NatsServer(
            ServerConfig(
                store_dir=self.store_dir, port=port, server_name=self._name, fsync="interval"
            )
        )
        self.server.start()
        (self.store_dir / PORT_FILE).write_text(str(self.server.port))
        log.info("localbus.started", url=self.server.url)
        return self.server.url

    def _previous_port(self) -> int:
        try:
            port = int((self.store_dir / PORT_FILE).read_text())
        except (OSError, ValueError):
            return 0
        return port if 0 < port < 65536 and _bindable(port) else 0

    async def connect(self) -> NATS:
        async def on_error(exc: Exception) -> None:
            log.warning("localbus.error", error=str(exc) or type(exc).__name__)

        self.nc = await nats.connect(
            self.url,
            name=f"{self._name}-agent",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            error_cb=on_error,
            pending_size=64 * 1024 * 1024,
        )
        return self.nc

    async def subscribe(self, subject: str, cb: Callable[[Msg], Awaitable[None]]) -> Any:
        assert self.nc is not None
        return await self.nc.subscribe(
            subject, cb=cb, pending_msgs_limit=1_000_000, pending_bytes_limit=512 * 1024 * 1024
        )

    async def publish(self, subject: str, body: bytes) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.publish(subject, body)

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
            self.nc = None
        if self.server is not None:
            self.server.stop()
            self.server = None


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
