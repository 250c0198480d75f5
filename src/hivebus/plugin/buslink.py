"""The plugin's NATS connection: nats-py on a background thread with its own event loop.

pywaggle is synchronous and so is this SDK: the plugin's thread never awaits. ``send`` queues
a message and returns; the sender task publishes in order once connected, reconnecting as
nats-py does; ``close`` delivers what is queued, flushes, and returns what could not be sent
in time (the plugin writes it to its offline log). nats-py is imported only here, when a bus
is used.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from hivebus.plugin.config import PluginConfig


class BusLink:
    """A nats-py client on its own thread and event loop; the plugin's thread never awaits.

    ``send`` queues a message (blocking only when ``max_pending`` are queued); the sender
    task publishes them in order once connected, reconnecting as nats-py does. ``close``
    delivers what is queued, flushes, and returns what could not be sent in time.
    """

    def __init__(self, url: str, config: PluginConfig, *, name: str) -> None:
        self.url, self.config, self.name = url, config, name
        self._loop: Any = None
        self._thread = threading.Thread(target=self._main, name="hivebus-plugin-bus", daemon=True)
        self._out: deque[tuple[str, bytes]] = deque()
        self._cv = threading.Condition()
        self._signalled = False
        self._closing = False
        self._deadline = float("inf")
        self._connected = threading.Event()
        self._subscriptions: list[tuple[str, Callable[[str, bytes], None]]] = []
        self._subscribed = 0
        self._nc: Any = None
        self._wake: Any = None
        self._stop: Any = None
        self._live: Any = None
        self._failure: str | None = None

    def start(self) -> None:
        import asyncio

        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()  # something to send, or closing
        self._stop = asyncio.Event()  # closing
        self._live = asyncio.Event()  # connected and subscribed
        self._thread.start()

    # called from the plugin's threads

    def send(self, subject: str, body: bytes, timeout: float | None) -> None:
        with self._cv:
            if not self._cv.wait_for(lambda: len(self._out) < self.config.max_pending, timeout):
                raise TimeoutError(f"publish timed out: {len(self._out)} messages wait for the local bus")
            self._out.append((subject, body))
            if not self._signalled:
                self._signalled = True
                with contextlib.suppress(RuntimeError):  # thread gone: close() logs it offline
                    self._loop.call_soon_threadsafe(self._wake.set)

    def subscribe(self, pairs: list[tuple[str, Callable[[str, bytes], None]]]) -> None:
        """Subscribe, waiting (up to the flush timeout) until the subscriptions are live."""
        import asyncio
        import concurrent.futures

        future = asyncio.run_coroutine_threadsafe(self._subscribe(pairs), self._loop)
        try:
            future.result(self.config.flush_timeout)
        except concurrent.futures.TimeoutError:
            print(f"hivebus.plugin: not connected to {self.url} yet; subscribing when it answers", file=sys.stderr)

    def request(self, subject: str, body: bytes, timeout: float) -> bytes:
        import asyncio

        if not self._connected.wait(timeout):
            raise TimeoutError(f"not connected to the local bus at {self.url} ({self._failure})")
        future = asyncio.run_coroutine_threadsafe(self._request(subject, body, timeout), self._loop)
        return future.result(timeout + 1.0)

    def close(self, timeout: float) -> list[bytes]:
        with self._cv:
            self._closing = True
            self._deadline = time.monotonic() + timeout
        with contextlib.suppress(RuntimeError):  # the thread may have finished and closed its loop
            self._loop.call_soon_threadsafe(self._closing_now)
        self._thread.join(timeout + 3.0)
        with self._cv:
            unsent = [body for _, body in self._out]
            self._out.clear()
        return unsent

    # on the bus thread

    def _closing_now(self) -> None:
        self._stop.set()
        self._wake.set()

    def _main(self) -> None:
        import asyncio

        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._run())
        except Exception as exc:  # keep the plugin running; what is queued goes to the offline log
            print(f"hivebus.plugin: the local bus connection failed: {exc!r}", file=sys.stderr)
        finally:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _run(self) -> None:
        if not await self._connect():
            return
        try:
            await self._send_until_closed()
        finally:
            await self._finish()

    async def _connect(self) -> bool:
        """Connect, nats-py retrying for as long as the plugin runs; once it is closing,
        only until the flush deadline. False if it never connected."""
        import asyncio

        import nats

        async def remember(exc: Exception) -> None:
            self._failure = str(exc) or type(exc).__name__

        backoff = 0.1
        while True:
            nc = nats.NATS()
            attempt = asyncio.ensure_future(
                nc.connect(
                    self.url, name=self.name, allow_reconnect=True, max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5, connect_timeout=2, error_cb=remember,  # type: ignore[arg-type]
                )
            )
            closing = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({attempt, closing}, return_when=asyncio.FIRST_COMPLETED)
            closing.cancel()
            if not attempt.done():  # closing while still unreachable: wait until the deadline
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, self._deadline - time.monotonic())):
                        await asyncio.shield(attempt)
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(BaseException):
                    await attempt
                with contextlib.suppress(Exception):
                    await nc.close()
                return False
            if attempt.exception() is None:
                break
            self._failure = str(attempt.exception()) or type(attempt.exception()).__name__
            if self._closing and time.monotonic() >= self._deadline:
                return False
            await asyncio.sleep(min(backoff, max(0.0, self._deadline - time.monotonic())))
            backoff = min(backoff * 2, 2.0)
        self._nc = nc
        await self._subscribe_pending()
        self._live.set()
        self._connected.set()
        return True

    async def _send_until_closed(self) -> None:
        import asyncio

        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._cv:
                batch = list(self._out)
                self._signalled = False
                closing = self._closing
            sent = 0
            try:
                for subject, body in batch:
                    await self._nc.publish(subject, body)
                    sent += 1
            except Exception as exc:  # e.g. nats-py's reconnect buffer is full: retry shortly
                self._failure = str(exc) or type(exc).__name__
                await asyncio.sleep(0.2)
                self._wake.set()
            with self._cv:
                for _ in range(sent):
                    self._out.popleft()
                self._cv.notify_all()
                done = closing and not self._out
            if done or (closing and time.monotonic() >= self._deadline):
                return

    async def _finish(self) -> None:
        import asyncio

        remaining = max(0.1, self._deadline - time.monotonic())
        try:
            async with asyncio.timeout(remaining):
                await self._nc.flush()
        except Exception as exc:
            detail = str(exc) or type(exc).__name__
            print(f"hivebus.plugin: could not confirm delivery to {self.url}: {detail}", file=sys.stderr)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self._nc.close()

    async def _subscribe(self, pairs: list[tuple[str, Callable[[str, bytes], None]]]) -> None:
        self._subscriptions += pairs
        await self._live.wait()
        await self._subscribe_pending()

    async def _subscribe_pending(self) -> None:
        """Subscribe what is not subscribed yet; the index moves first, so nothing twice."""
        while self._subscribed < len(self._subscriptions):
            subject, handler = self._subscriptions[self._subscribed]
            self._subscribed += 1
            await self._nc.subscribe(subject, cb=_deliver_to(handler))
        await self._nc.flush()

    async def _request(self, subject: str, body: bytes, timeout: float) -> bytes:
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        try:
            reply = await self._nc.request(subject, body, timeout=timeout)
        except NoRespondersError:
            raise ConnectionError(f"nothing answers {subject} on the local bus (is the node's upload service running?)") from None
        except NatsTimeout:
            raise TimeoutError(f"no answer on {subject} within {timeout:g}s") from None
        return bytes(reply.data)


def _deliver_to(handler: Callable[[str, bytes], None]) -> Callable[[Any], Any]:
    async def deliver(msg: Any) -> None:
        handler(msg.subject, msg.data)

    return deliver
