"""The uplink: the node's connection to the hub, made in the background.

A node must start and do its work with the hub unreachable (no network yet, hub down), so the
agent never waits for this connection: ``run`` keeps trying with backoff until the first
connect succeeds; from then on nats-py reconnects by itself forever. Whoever needs the hub
(forwarder, to-edge consumer) awaits ``wait_online``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

import structlog

from hivebus.bus.client import Bus
from hivebus.config import Settings
from hivebus.errors import ConnectError

log = structlog.get_logger()

_POLL: Final = 0.1


class Uplink:
    def __init__(
        self,
        url: str,
        *,
        name: str,
        settings: Settings | None = None,
        connect_timeout: float = 2.0,
        retry_max: float = 5.0,
    ) -> None:
        self.url = url
        self.name = name
        self.settings = settings
        self.connect_timeout = connect_timeout
        self.retry_max = retry_max
        self.bus: Bus | None = None
        self._connected = asyncio.Event()
        self.attempts = 0

    @property
    def online(self) -> bool:
        return self.bus is not None and self.bus.nc.is_connected

    async def run(self, stop: asyncio.Event) -> None:
        """Connect (retrying until it works or ``stop``), then hold the connection until ``stop``."""
        delay = 0.2
        while not stop.is_set() and self.bus is None:
            self.attempts += 1
            try:
                self.bus = await Bus.connect(
                    self.url,
                    name=self.name,
                    settings=self.settings,
                    connect_timeout=self.connect_timeout,
                )
            except ConnectError as exc:
                if self.attempts == 1 or self.attempts % 10 == 0:
                    log.warning(
                        "uplink.unreachable", url=self.url, attempts=self.attempts, error=str(exc)
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, self.retry_max)
                continue
            log.info("uplink.connected", url=self.url, attempts=self.attempts)
            self._connected.set()
        await stop.wait()

    async def wait_online(self, stop: asyncio.Event) -> Bus | None:
        """The bus once it is connected; None if ``stop`` is set first."""
        while not stop.is_set():
            if self.bus is not None and self.bus.nc.is_connected:
                return self.bus
            await asyncio.sleep(_POLL)
        return None

    async def close(self) -> None:
        if self.bus is not None:
            await self.bus.close()
            self.bus = None
