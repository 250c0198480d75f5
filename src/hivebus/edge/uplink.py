"""The uplink: the node's connection to the hub, made in the background.

A node must start and do its work with the hub unreachable (no network yet, hub down), so the
agent never waits for this connection: ``run`` keeps trying with backoff until the first
connect succeeds; from then on nats-py reconnects by itself forever. Whoever needs the hub
(forwarder, to-edge consumer) awaits ``wait_online``.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Final

import structlog

from hivebus.auth.credentials import Credential
from hivebus.bus.client import Bus
from hivebus.config import Settings
from hivebus.edge import refusal
from hivebus.errors import ConnectError, CredentialRefused, SetupError

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
        node: str | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.url = url
        self.name = name
        self.settings = settings
        self.connect_timeout = connect_timeout
        self.retry_max = retry_max
        self.bus: Bus | None = None
        self._connected = asyncio.Event()
        self.attempts = 0
        self.node = node
        self.data_dir = data_dir  # where a refusal is recorded for the operator (edge.refusal)
        self.refused: str | None = None  # why the hub refuses the credential, while it does
        self.connected_url: str | None = None  # the node listener with a certificate (urls)

    @property
    def online(self) -> bool:
        return self.bus is not None and self.bus.nc.is_connected

    async def run(self, stop: asyncio.Event) -> None:
        """Connect (retrying until it works or ``stop``), then hold the connection until ``stop``."""
        delay = 0.2
        while not stop.is_set() and self.bus is None:
            self.attempts += 1
            try:
                self.bus = await self._connect()
            except CredentialRefused as exc:
                self._refused(exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
                delay = min(delay * 2, self.retry_max)
                continue
            except ConnectError as exc:
                if self.attempts == 1 or self.attempts % 10 == 0:
                    log.warning(
                        "uplink.unreachable", url=self.url, attempts=self.attempts, error=str(exc)
                    )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
                delay = min(delay * 2, self.retry_max)
                continue
            log.info("uplink.connected", url=self.connected_url, attempts=self.attempts)
            self.refused = None
            if self.data_dir is not None:  # accepted now (events refused are the forwarder's to end)
                refusal.end(self.data_dir, "credential")
            self._connected.set()
        await stop.wait()

    async def _connect(self) -> Bus:
        """The first of ``urls()`` that answers; a refusal ends the round (it is the hub's word)."""
        urls = self.urls()
        missed: list[str] = []  # the node listener, when it did not answer
        for i, url in enumerate(urls):
            try:
                bus = await Bus.connect(url, name=self.name, settings=self.settings, connect_timeout=self.connect_timeout)
            except CredentialRefused as exc:
                if not missed:
                    raise
                # the hub lets a node holding a certificate in on its node listener only: say so
                raise CredentialRefused(
                    f"{exc.args[0]}; first the hub's node listener did not answer ({'; '.join(missed)}), and a node "
                    "whose credential carries a client certificate is let in only there",
                    hint=f"open the node listener's port from this machine to the hub; {exc.hint or ''}".rstrip("; "),
                ) from None
            except ConnectError as exc:
                if i == len(urls) - 1:
                    raise
                missed.append(f"{url}: {exc.args[0]}")
                log.debug("uplink.trying_next", url=url, error=str(exc))
                continue
            self.connected_url = url
            return bus
        raise AssertionError("urls() is never empty")

    def urls(self) -> list[str]:
        """Where to connect, in order: with a client certificate in the credential, the hub's node
        listener first (``Credential.node_urls``); read again on every attempt."""
        path = self.settings.credentials_file() if self.settings is not None else None
        if path is None or not path.exists():
            return [self.url]
        try:
            return Credential.load(path).node_urls(self.url)
        except SetupError:
            return [self.url]  # Bus.connect says what is wrong with it

    def _refused(self, exc: CredentialRefused) -> None:
        """Said once, loudly, with what to do; recorded for ``hivebus node outbox``. The next
        attempts read the credentials file again, so a new file is taken without a restart."""
        first = self.refused is None
        self.refused = str(exc)
        hint = refusal.what_to_do(self.node) if self.node else (exc.hint or "")
        if first:
            log.error("uplink.credential_refused", url=self.url, error=str(exc), hint=hint)
        else:
            log.debug("uplink.credential_refused", attempts=self.attempts)
        if self.data_dir is not None and first:
            refusal.record(self.data_dir, "credential", str(exc), hint)

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
