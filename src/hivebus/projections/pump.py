"""The loop that moves messages from the streams into a store, shared by the live projector and
by rebuilds: readers -> merge in stored-time order -> batches -> prepare, dead-letter, commit.

Readers keep no durable consumer: each reads its stream with ``bus.read`` from the store's
checkpoint + 1 (position lives in DuckDB, committed with the rows). A batch is taken as soon
as no stream could still deliver an earlier message (each has messages buffered, or has been
quiet for ``quiet_after``), and at the latest ``max_wait`` after its first message arrived: so
under light load a message waits about ``max_wait`` plus one commit, and under heavy load a
batch is what arrived during the previous commit, up to ``batch_size``. A stream with
``buffer_limit`` messages waiting pauses its reader (back-pressure). A reader that stops
delivering while its stream has more (its ephemeral consumer vanished with a server restart)
is restarted from the last message it handed over.

What the batch could not use is dead-lettered *before* the commit that moves the checkpoint
past it (publishing is idempotent per stream/seq), so a crash in between loses no dead letter.
A batch the store cannot write (a bug, or data a view did not expect) is split in halves and
retried, down to the one message at fault, which is dead-lettered; the rest is applied.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from hivebus.bus import batch as wire
from hivebus.bus.client import Bus
from hivebus.bus.consumer import dead_letter
from hivebus.errors import HivebusError, ProjectionError
from hivebus.projections.decode import Message, Rejected
from hivebus.projections.merge import Merger
from hivebus.projections.store import Decoding, Prepared, Slice, Store
from hivebus.projections.views.base import STREAMS

log = structlog.get_logger()

T = TypeVar("T")
CONSUMER = "projector"
SLOW_S = 0.5
"""A batch that takes longer to apply is logged (``projector.slow_batch``, where the time went)."""
Ahead = tuple[list[Slice], "asyncio.Future[Decoding]"]
"""The next batch, taken while the current one commits, and its decoding (``Store.decode``)."""


def _weight(m: Message) -> int:
    """The work in one message: the readings a packed DATA message carries, else 1."""
    return wire.count(m.data)


def _weigh(msgs: Sequence[Message]) -> int:
    return sum(map(_weight, msgs))


@dataclass(frozen=True, kw_only=True)
class PumpConfig:
    batch_size: int = 10_000
    """Most events in one transaction (a packed DATA message counts its readings; a message
    carrying more is one transaction of its own)."""
    max_wait: float = 0.05
    """Most seconds a message waits for its batch to fill before it is committed."""
    read_batch: int = 2000
    quiet_after: float = 0.2
    """A stream that delivered nothing this long does not hold the others back."""
    buffer_limit: int = 50_000
    """Events (as ``batch_size`` counts them) a stream may have buffered before its reader pauses."""
    stall_after: float = 5.0
    """Seconds without a message while the stream has more: the reader is restarted."""
    decode_ahead: bool = True
    """Decode the next batch (if one is ready) while the current one commits (False: in turn)."""


class Pump:
    """Apply ``streams`` to ``store`` until ``stop`` is set, or until ``targets`` are reached."""

    def __init__(
        self,
        bus: Bus,
        store: Store,
        writer: concurrent.futures.Executor,
        *,
        config: PumpConfig | None = None,
        streams: Sequence[str] = STREAMS,
        targets: dict[str, int] | None = None,
        dead_letters: bool = True,
        on_commit: Callable[[Prepared], None] | None = None,
    ) -> None:
        self.bus = bus
        self.store = store
        self.writer = writer
        self.config = config or PumpConfig()
        self.streams = list(streams)
        self.targets = targets
        self.dead_letters = dead_letters
        self.on_commit = on_commit
        self.merger: Merger[Message] = Merger(self.streams, weight=_weight)
        self._inbox: asyncio.Queue[tuple[str, Sequence[Message]]] = asyncio.Queue()
        self._next = {s: store.positions.get(s, 0) + 1 for s in self.streams}
        self._arrived = dict.fromkeys(self.streams, 0.0)
        self._done = dict.fromkeys(self.streams, False)
        self._room = {s: asyncio.Event() for s in self.streams}
        self._waiting = dict.fromkeys(self.streams, False)  # a reader held by back-pressure
        self._queued = dict.fromkeys(self.streams, 0)  # messages in the inbox, per stream
        self._readers: dict[str, asyncio.Task[None]] = {}
        self.paused = asyncio.Event()
        self.paused.set()  # set = running; rebuilds clear it to hold commits
        self.idle = asyncio.Event()  # set while no batch is being applied
        self.idle.set()
        self.committed = 0
        self._decoder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hivebus-decode")
        """Decodes the next batch while the writer commits the current one (see ``_apply``)."""
        self._ahead: Ahead | None = None

    # --- the loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        for stream in self.streams:
            self._room[stream].set()
            if self.targets is not None and self.targets.get(stream, 0) < self._next[stream]:
                self._done[stream] = True
                continue
            self._start_reader(stream)
        watchdog = asyncio.create_task(self._watch(stop))
        try:
            while not stop.is_set() and not self.reached():
                if self._ahead is not None:
                    slices, decoding = self._ahead
                else:
                    slices, decoding = await self._gather(stop), None
                if not slices:
                    continue
                await self.paused.wait()
                self.idle.clear()
                self._ahead = None
                try:
                    self._ahead = await self._apply(slices, decoding, stop)
                finally:
                    self.idle.set()
        finally:
            watchdog.cancel()
            for task in self._readers.values():
                task.cancel()
            await asyncio.gather(watchdog, *self._readers.values(), return_exceptions=True)
            if self._ahead is not None:  # decoded, never applied: read again next time
                await asyncio.gather(self._ahead[1], return_exceptions=True)
            self._decoder.shutdown(wait=False)

    def reached(self) -> bool:
        """With targets: every stream is applied up to its target."""
        if self.targets is None:
            return False
        if all(self.store.positions.get(s, 0) >= self.targets.get(s, 0) for s in self.streams):
            return True
        # A stream whose last messages were deleted (retention) ends below its target.
        return self._ahead is None and self._inbox.empty() and all(
            self.store.positions.get(s, 0) >= self.targets.get(s, 0) or (self._done[s] and not self.merger.pending(s))
            for s in self.streams
        )

    async def _gather(self, stop: asyncio.Event) -> list[Slice]:
        """Messages for one batch, in stored-time order across streams."""
        config = self.config
        first_wait: float | None = None
        while not stop.is_set():
            self._drain_inbox()
            self._update_quiet()
            pending = self.merger.pending()
            now = time.monotonic()
            if pending:
                first_wait = first_wait or now
                if pending >= config.batch_size or now - first_wait >= config.max_wait or self._all_quiet_or_full():
                    taken = self.merger.take(config.batch_size)
                    self._update_room()
                    if taken:
                        return [Slice(s, msgs) for s, msgs in taken]
            if self.reached():
                return []
            timeout = config.max_wait if pending else config.quiet_after
            try:
                async with asyncio.timeout(timeout):
                    stream, msgs = await self._inbox.get()
            except TimeoutError:
                continue
            self._queued[stream] -= _weigh(msgs)
            self.merger.push(stream, msgs)
        return []

    def _drain_inbox(self) -> None:
        while not self._inbox.empty():
            stream, msgs = self._inbox.get_nowait()
            self._queued[stream] -= _weigh(msgs)
            self.merger.push(stream, msgs)

    def _buffered(self, stream: str) -> int:
        return self._queued[stream] + self.merger.pending(stream)

    def _update_quiet(self) -> None:
        now = time.monotonic()
        for s in self.streams:
            self.merger.quiet[s] = self._done[s] or now - self._arrived[s] >= self.config.quiet_after

    def _all_quiet_or_full(self) -> bool:
        return all(self.merger.quiet[s] or self.merger.pending(s) for s in self.merger.ordered)

    def _update_room(self) -> None:
        for s in self.streams:
            if self._buffered(s) < self.config.buffer_limit:
                self._room[s].set()
            else:
                self._room[s].clear()

    # --- readers --------------------------------------------------------------------------

    def _start_reader(self, stream: str) -> None:
        self._arrived[stream] = time.monotonic()
        self._readers[stream] = asyncio.create_task(self._read(stream), name=f"projector-read-{stream}")

    async def _read(self, stream: str) -> None:
        target = None if self.targets is None else self.targets.get(stream, 0)
        delay = 0.2
        empty_reads = 0
        while True:
            try:
                got = 0
                async for msgs in self.bus.read(
                    stream, start_seq=self._next[stream], batch=self.config.read_batch,
                    idle=0.5, stop_at_end=target is not None,
                ):
                    if target is not None:
                        msgs = [m for m in msgs if m.seq <= target]
                    if msgs:
                        got += len(msgs)
                        # Queued and counted with no await in between: a restart (cancel) can
                        # never lose messages this reader already took from the server.
                        self._inbox.put_nowait((stream, msgs))
                        self._queued[stream] += _weigh(msgs)
                        self._next[stream] = msgs[-1].seq + 1
                        self._arrived[stream] = time.monotonic()
                        if self._buffered(stream) >= self.config.buffer_limit:
                            self._room[stream].clear()
                        if not self._room[stream].is_set():  # back-pressure: ask for more later
                            self._waiting[stream] = True
                            await self._room[stream].wait()
                            self._waiting[stream] = False
                            self._arrived[stream] = time.monotonic()
                    if target is not None and self._next[stream] > target:
                        break
                if target is not None:
                    # A read that ends short of the target may have met a consumer not ready
                    # yet: read again; only repeated empty reads mean the rest is gone
                    # (deleted by the stream's limits).
                    empty_reads = 0 if got else empty_reads + 1
                    if self._next[stream] > target or empty_reads >= 3:
                        if self._next[stream] <= target:
                            log.warning("projector.read_short", stream=stream, next_seq=self._next[stream], target=target)
                        self._done[stream] = True
                        return
                    await asyncio.sleep(0.05 * empty_reads)
                    continue
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # server gone, stream missing, consumer lost: read again
                log.warning("projector.read_failed", stream=stream, error=str(exc) or type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _watch(self, stop: asyncio.Event) -> None:
        """Restart a reader that stopped delivering while its stream has more to give."""
        while not stop.is_set():
            await asyncio.sleep(self.config.stall_after / 2)
            for stream, task in list(self._readers.items()):
                if self._done[stream] or (task.done() and not task.cancelled() and task.exception() is None):
                    continue
                if time.monotonic() - self._arrived[stream] < self.config.stall_after:
                    continue
                if self._waiting[stream]:
                    continue  # held by back-pressure, not stalled
                try:
                    last = await self.bus.last_seq(stream)
                except Exception:
                    continue
                if last >= self._next[stream]:
                    log.warning("projector.reader_restarted", stream=stream, next_seq=self._next[stream], last_seq=last)
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                    self._start_reader(stream)

    # --- applying a batch -----------------------------------------------------------------

    async def _in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.writer, fn, *args)

    def _take_ready(self) -> list[Slice]:
        """The next batch, if one may be taken now without waiting (a full one, or every
        stream quiet or with messages buffered): what ``_gather`` would return at once."""
        self._drain_inbox()
        self._update_quiet()
        pending = self.merger.pending()
        if not pending or not (pending >= self.config.batch_size or self._all_quiet_or_full()):
            return []
        taken = self.merger.take(self.config.batch_size)
        self._update_room()
        return [Slice(s, msgs) for s, msgs in taken]

    async def _decoded(self, decoding: asyncio.Future[Decoding] | None) -> Decoding | None:
        """The batch decoded ahead, or None if that failed (``prepare`` decodes it again and
        meets the failure where it is handled)."""
        if decoding is None:
            return None
        try:
            return await decoding
        except Exception:
            return None

    async def _apply(self, slices: list[Slice], decoding: asyncio.Future[Decoding] | None = None,
                     stop: asyncio.Event | None = None) -> Ahead | None:
        """Prepare and commit ``slices``. With ``stop`` (the main loop), the next batch, if one
        is ready, is taken while this one commits and decoded on the decoder's thread
        meanwhile (DuckDB's insert and Arrow's kernels leave the GIL): it is returned, for
        the next call. ``_split`` applies without looking ahead."""
        began = time.monotonic()
        decoded = await self._decoded(decoding)
        waited = time.monotonic()
        try:
            prepared = await self._in_writer(self.store.prepare, slices, decoded)
        except Exception as exc:  # a view or the store failed outside the per-message guards
            await self._in_writer(self.store.seen.rollback)
            await self._split(slices, ProjectionError(f"cannot prepare the batch: {type(exc).__name__}: {exc}"))
            return None
        await self._dead_letter(prepared.rejected)
        ahead: Ahead | None = None
        committing = time.monotonic()
        commit = asyncio.ensure_future(self._in_writer(self.store.commit, prepared))
        if stop is not None and not stop.is_set() and self.config.decode_ahead:
            nxt = self._take_ready()
            if nxt:
                loop = asyncio.get_running_loop()
                ahead = (nxt, loop.run_in_executor(self._decoder, self.store.decode, nxt, prepared.positions))
        try:
            await commit
        except ProjectionError as exc:
            await self._split(slices, exc)
            return ahead
        self.committed += prepared.messages
        done = time.monotonic()
        if done - began > SLOW_S:
            log.info("projector.slow_batch", messages=prepared.messages, rows=prepared.rows,
                     decoded_ahead=decoded is not None, wait_decode_s=round(waited - began, 3),
                     prepare_s=round(committing - waited, 3), commit_s=round(done - committing, 3))
        if prepared.rejected or prepared.duplicates:
            log.info("projector.batch", messages=prepared.messages, rows=prepared.rows,
                     rejected=len(prepared.rejected), duplicates=prepared.duplicates, positions=prepared.positions)
        if self.on_commit is not None:
            self.on_commit(prepared)
        return ahead

    async def _split(self, slices: list[Slice], error: ProjectionError) -> None:
        flat = [(s.stream, m) for s in slices for m in s.messages]
        if len(flat) == 1:
            stream, message = flat[0]
            log.error("projector.unwritable", stream=stream, seq=message.seq, error=str(error))
            await self._dead_letter([Rejected(stream, message.seq, message.subject, bytes(message.data),
                                              f"the projector could not write it: {error}")])
            await self._in_writer(self.store.skip, stream, message.seq)  # raises if the store is broken
            return
        log.warning("projector.batch_split", messages=len(flat), error=str(error))
        half = len(flat) // 2
        for part in (flat[:half], flat[half:]):
            grouped: dict[str, list[Message]] = {}
            for stream, message in part:
                grouped.setdefault(stream, []).append(message)
            await self._apply([Slice(s, msgs) for s, msgs in grouped.items()])

    async def _dead_letter(self, rejected: list[Rejected]) -> None:
        if not rejected or not self.dead_letters:
            return
        limit = max(1024, (self.bus.nc.max_payload - 8192) * 3 // 4)
        for r in rejected:
            data, reason = r.data, r.reason
            if len(data) > limit:
                data, reason = data[:limit], f"{reason} (payload cut to {limit} of {len(r.data)} bytes)"
            log.warning("projector.dead_letter", stream=r.stream, seq=r.seq, index=r.index, subject=r.subject, reason=reason)
            delay = 0.2
            while True:  # a dead letter is data too: never skip it silently
                try:
                    await dead_letter(self.bus, stream=r.stream, consumer=CONSUMER, seq=r.seq, subject=r.subject,
                                      data=data, reason=reason, field=r.field, index=r.index)
                    break
                except HivebusError as exc:
                    log.warning("projector.dead_letter_failed", stream=r.stream, seq=r.seq, error=str(exc), retry_in=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
