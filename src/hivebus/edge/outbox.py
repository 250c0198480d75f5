"""The outbox: every event a node produces, durable on the node until the hub has it.

``append`` assigns the event its per-node ``nodeseq``, encodes it once (the stored bytes are
what the forwarder sends) and returns only after the row is committed (WAL, fsync'ed). Appends
that arrive while a commit is running wait together and go in the next one (group commit), so
one fsync covers thousands of events.

This module is the outbox as its users see it (the agent's producers, the forwarder, the
heartbeat); its parts, one idea each:

- ``outbox_store``: the tables, the rows as stored, how ``nodeseq`` is numbered;
- ``outbox_commit``: the appends waiting and the group commit's transaction;
- ``outbox_space``: a full outbox, readings too old, a full disk (what is dropped or waits);
- ``outbox_counters``: every reading not kept, counted by reason, into every heartbeat;
- ``outbox_batches``: the forwarder's side (a batch read, deleted once acked, parked when the
  hub refuses it, the bounds of the packed messages in flight).

Their public names (``OutboxLimits``, ``Entry``, ``Backlog``, ``StateWrite``, the drop
reasons) are importable from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

import structlog

from hivebus.bus.subjects import subject_for
from hivebus.edge import outbox_batches as batches
from hivebus.edge import outbox_space as space
from hivebus.edge import outbox_store as store
from hivebus.edge.db import NodeDatabase
from hivebus.edge.outbox_commit import Group, Pending, commit
from hivebus.edge.outbox_counters import (
    DISK_FULL,
    DROPPED_EXPIRED,
    DROPPED_FULL,
    REFUSED,
    DropCounters,
)
from hivebus.edge.outbox_store import (
    MIN_MAX_BYTES,
    READING_TYPE,
    SEQ,
    SIZE,
    Backlog,
    Entry,
    OutboxLimits,
    Row,
    StateWrite,
)
from hivebus.errors import OutboxError
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event

__all__ = [
    "DISK_FULL",
    "DROPPED_EXPIRED",
    "DROPPED_FULL",
    "MIN_MAX_BYTES",
    "READING_TYPE",
    "REFUSED",
    "Backlog",
    "Entry",
    "Outbox",
    "OutboxLimits",
    "Row",
    "StateWrite",
]

log = structlog.get_logger()

_MAX_ROWS_PER_COMMIT: Final = 50_000
_EXPIRE_EVERY_S: Final = 5.0
_DISK_RETRY_S: Final = 1.0


class Outbox:
    """The durable queue between a node's producers and the hub (see the module docstring)."""

    def __init__(self, db: NodeDatabase, node: str, limits: OutboxLimits) -> None:
        self.db = db
        self.node = node
        self.limits = limits
        self._source = f"node/{node}"
        self._next = 0
        self._pending: deque[Pending] = deque()
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._appended = asyncio.Event()
        self._blocked = False
        self._disk_full = False
        self._disk_retry_at = 0.0
        self._closed = False
        self._committer: asyncio.Task[None] | None = None
        self._counts = {"readings": 0, "lifecycle": 0}
        self._bytes = {"readings": 0, "lifecycle": 0}
        self._drops = DropCounters()
        self._positions: dict[str, int] = {}
        self._bounds: dict[int, int] = {}  # the packed messages in flight, as stored
        self._inflight_hi = 0  # rows with nodeseq <= this are being published: never dropped
        self._last_expiry = 0.0
        self.clock_ns: Callable[[], int] = time.time_ns

    # --- opening and closing ---------------------------------------------------------------

    @classmethod
    async def open(cls, db: NodeDatabase, node: str, limits: OutboxLimits | None = None) -> Outbox:
        """The node's outbox in ``db`` (created if new); resumes exactly where it was."""
        outbox = cls(db, node, limits or OutboxLimits())
        loaded = await db.call(lambda: store.create_and_load(db.conn))
        outbox._next = loaded.next_nodeseq
        outbox._positions = loaded.positions
        outbox._counts, outbox._bytes = loaded.counts, loaded.bytes
        outbox._drops = DropCounters(loaded.dropped)
        outbox._bounds = loaded.bounds
        outbox._committer = asyncio.create_task(outbox._commit_loop(), name="outbox-committer")
        log.info("outbox.opened", node=node, next_nodeseq=outbox._next, **outbox._counts)
        return outbox

    async def close(self) -> None:
        """Commit what is pending (unless blocked on a full outbox), then stop."""
        self._closed = True
        self._wake.set()
        self._space.set()
        if self._committer is not None:
            try:
                async with asyncio.timeout(5.0):
                    await asyncio.shield(self._committer)
            except TimeoutError:
                self._committer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._committer
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(
                    OutboxError("the outbox closed before it had room for these events")
                )
        self._pending.clear()

    # --- appending -------------------------------------------------------------------------

    async def append(self, event: Event) -> int | None:
        """Store ``event``; its nodeseq once it is on disk (None: a reading dropped as full)."""
        return (await self.submit([event]))[0]

    async def append_many(
        self, events: Sequence[Event], *, state: StateWrite | None = None
    ) -> list[int | None]:
        """Store ``events`` and run ``state`` in the same transaction; their nodeseqs."""
        return await self.submit(events, state=state)

    def submit(
        self, events: Iterable[Event], *, state: StateWrite | None = None
    ) -> asyncio.Future[list[int | None]]:
        """Queue ``events`` for the next group commit without waiting for it.

        The future resolves once they are on disk; a producer that does not need to hear
        back (a plugin's fire-and-forget publish) need not await it.
        """
        if self._closed:
            raise OutboxError("the outbox is closed")
        readings: list[Row] = []
        lifecycle: list[Row] = []
        result: list[int | None] = []
        size = 0
        now = self.clock_ns()
        no_disk = self._disk_full and time.monotonic() < self._disk_retry_at
        for event in events:
            if event.type != READING_TYPE:
                row = self._row(event, now)
                lifecycle.append(row)
            elif no_disk or self._blocked:
                self._drops.count(DISK_FULL if no_disk else DROPPED_FULL, 1, saved=False)
                self._next += 1  # its number stays unused, like any dropped reading's
                result.append(None)
                continue
            else:
                row = self._row(event, now)
                readings.append(row)
            result.append(row[SEQ])
            size += row[SIZE]
        future: asyncio.Future[list[int | None]] = asyncio.get_running_loop().create_future()
        if not readings and not lifecycle and state is None:
            future.set_result(result)
            return future
        self._pending.append(Pending(readings, lifecycle, size, result, state, future))
        self._wake.set()
        return future

    def _row(self, event: Event, now: int) -> Row:
        if event.source != self._source:
            raise OutboxError(f"event {event.id} comes from {event.source!r}, not {self._source!r}")
        if event.nodeseq is not None:
            raise OutboxError(f"event {event.id} already has nodeseq {event.nodeseq}")
        subject = subject_for(event)
        seq = self._next
        # The envelope encoded once, with the nodeseq spliced in as its first attribute.
        body = b'{"nodeseq":%d,' % seq + codec.encode(event)[1:]
        size = len(body) + len(subject) + len(event.id)
        if len(body) > codec.MAX_EVENT_BYTES or size > self.limits.max_bytes:
            raise OutboxError(
                f"{event.type} event {event.id} is {len(body)} bytes: larger than "
                f"{min(codec.MAX_EVENT_BYTES, self.limits.max_bytes)}, it could never be sent"
            )
        self._next = seq + 1
        return (seq, now, size, subject, event.id, body)

    # --- the group committer ---------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            if not self._pending:
                if self._closed:
                    if self._drops.unsaved:  # counted since the last commit: keep them
                        await self._commit_group([])
                    return
                await self._wait(self._wake, _EXPIRE_EVERY_S)
                self._wake.clear()
            await self._maybe_expire()
            if not self._pending:
                if self._drops.unsaved:
                    await self._commit_group([])
                continue
            items = self._take()
            waiting = await self._commit_group(items)
            if waiting:  # back-pressure: lifecycle events that do not fit yet
                self._pending.extendleft(reversed(waiting))
                self._blocked = not self._disk_full  # (a full disk refuses readings itself)
                if self._closed:
                    return
                self._space.clear()
                await self._wait(self._space, _DISK_RETRY_S if self._disk_full else _EXPIRE_EVERY_S)
            else:
                self._blocked = False

    def _take(self) -> list[Pending]:
        items: list[Pending] = []
        rows = 0
        while self._pending and rows < _MAX_ROWS_PER_COMMIT:
            item = self._pending.popleft()
            items.append(item)
            rows += item.rows
        return items

    def _free(self) -> int:
        return self.limits.max_bytes - self._bytes["readings"] - self._bytes["lifecycle"]

    async def _commit_group(self, items: list[Pending]) -> list[Pending]:
        """Commit ``items`` (dropping readings as needed); returns those that must wait."""
        unsaved = self._drops.take_unsaved()
        dropped_before = [len(item.dropped) for item in items]
        try:
            done = await self.db.call(
                lambda: commit(self.db.conn, items, unsaved, free=self._free,
                               floor=lambda: self._inflight_hi, next_nodeseq=self._next)
            )
        except Exception as exc:
            self._drops.failed(unsaved)
            if store.no_space(exc):
                return self._refuse_for_space(items, dropped_before, exc)
            log.error("outbox.commit_failed", error=str(exc), items=len(items))
            for item in items:
                if not item.future.done():
                    item.future.set_exception(OutboxError(f"cannot store events: {exc}"))
            return []
        if self._disk_full and done.committed:
            self._disk_full = False
            log.info("outbox.disk_space_back", refused_so_far=self.dropped().get(DISK_FULL, 0))
        self._applied(done)
        committed = {id(item) for item in done.committed}
        return [item for item in items if id(item) not in committed]

    def _applied(self, done: Group) -> None:
        """After COMMIT: the counts in memory, the counters, the appends answered."""
        for table, (n, size) in done.added.items():
            self._counts[table] += n
            self._bytes[table] += size
        self._counts["readings"] -= done.dropped_stored
        self._bytes["readings"] -= done.freed_stored
        self._drops.committed(done.drops)
        if done.dropped_stored or done.dropped_incoming:
            log.warning(
                "outbox.full_dropped_readings",
                stored=done.dropped_stored,
                incoming=done.dropped_incoming,
            )
        for item in done.committed:
            if item.future.done():
                continue
            if item.error is not None:
                item.future.set_exception(item.error)
                continue
            if item.dropped:
                item.result = [None if seq in item.dropped else seq for seq in item.result]
            item.future.set_result(item.result)
        if done.committed:
            self._appended.set()

    def _refuse_for_space(
        self, items: list[Pending], dropped_before: list[int], exc: Exception
    ) -> list[Pending]:
        """The disk is full: refuse the readings of ``items`` (counted), keep their lifecycle
        events (and state writes) waiting for the next try; returns the items that wait."""
        waiting, refused = space.refuse_for_space(items, dropped_before)
        if refused:
            self._drops.count(DISK_FULL, refused, saved=False)
        if not self._disk_full:
            log.error(
                "outbox.disk_full",
                error=str(exc),
                path=str(self.db.path),
                hint="free space on the node's disk: readings are refused (counted as "
                f"{DISK_FULL}) and lifecycle events wait until it is there",
            )
        self._disk_full = True
        self._disk_retry_at = time.monotonic() + _DISK_RETRY_S
        return waiting

    async def _maybe_expire(self) -> None:
        now = time.monotonic()
        if now - self._last_expiry < _EXPIRE_EVERY_S:
            return
        self._last_expiry = now
        cutoff = self.clock_ns() - int(self.limits.max_age_seconds * 1e9)
        try:
            n, freed = await self.db.call(
                self.db.in_transaction, lambda c: space.expire(c, self._inflight_hi, cutoff)
            )
        except Exception as exc:
            log.error("outbox.expire_failed", error=str(exc))
            return
        if n:
            self._counts["readings"] -= n
            self._bytes["readings"] -= freed
            self._drops.count(DROPPED_EXPIRED, n, saved=True)
            self._space.set()
            log.warning("outbox.expired", readings=n, bytes=freed)

    # --- the forwarder's side --------------------------------------------------------------

    async def next_batch(self, limit: int) -> list[Entry]:
        """The oldest ``limit`` events, in nodeseq order; they are protected from drops
        until ``remove``/``release`` (the forwarder has one batch in flight at a time)."""
        return await self.db.call(self._read_batch, limit)

    def _read_batch(self, limit: int) -> list[Entry]:
        # On the database thread, so no commit can drop a row between this read and the mark.
        entries = batches.read_batch(self.db.conn, limit)
        if entries:
            self._inflight_hi = entries[-1].nodeseq
        return entries

    @property
    def inflight_bounds(self) -> dict[int, int]:
        """The bounds (first nodeseq -> last) of the packed messages of the batch last sent
        and not yet acknowledged, as stored (they outlive a crash: ``outbox_batches``)."""
        return dict(self._bounds)

    async def hold_bounds(self, bounds: Mapping[int, int]) -> None:
        """Store the bounds of the packed messages about to be published (before they are),
        replacing those stored, so a forwarder started after a crash forms the same ones."""
        await self.db.transaction(lambda conn: batches.save_bounds(conn, bounds))
        self._bounds = dict(bounds)

    def release(self) -> None:
        """The batch in flight failed: its readings may be dropped again if space runs out."""
        self._inflight_hi = 0

    async def remove(self, entries: Sequence[Entry], positions: Mapping[str, int]) -> None:
        """The hub acknowledged ``entries`` (one batch from ``next_batch``): delete them and
        record how far each stream is known to hold everything this node sent."""
        if not entries:
            return
        lo, hi = entries[0].nodeseq, entries[-1].nodeseq

        def delete(conn: sqlite3.Connection) -> None:
            batches.delete_range(conn, lo, hi)
            store.save_positions(conn, self._positions, positions)

        await self.db.transaction(delete)
        self._bounds = {first: last for first, last in self._bounds.items() if not lo <= first <= hi}
        for entry in entries:
            self._counts[entry.table] -= 1
            self._bytes[entry.table] -= entry.size
        self._inflight_hi = 0
        self._space.set()

    async def remove_published(
        self, published: Iterable[tuple[int, str]], positions: Mapping[str, int]
    ) -> int:
        """Delete the events found in the hub's streams (``(nodeseq, event id)`` pairs, after
        a failure or a crash left it unknown what arrived); how many were still here."""
        pairs = list(published)

        def delete(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            gone = batches.delete_published(conn, pairs)
            store.save_positions(conn, self._positions, positions)
            return gone

        gone = await self.db.transaction(delete)
        for table, size in gone:
            self._counts[table] -= 1
            self._bytes[table] -= size
        if gone:
            self._space.set()
        return len(gone)

    async def park(self, entry: Entry, reason: str) -> None:
        """The hub refuses ``entry`` itself (not for a while: for what it is, e.g. larger than
        the stream allows). Move it aside, counted as ``refused_by_hub``, so it no longer
        blocks everything behind it; it stays on the node (table ``parked``) for an operator."""
        await self.db.transaction(lambda conn: batches.park(conn, entry, reason))
        self._counts[entry.table] -= 1
        self._bytes[entry.table] -= entry.size
        self._drops.count(REFUSED, 1, saved=True)
        self._inflight_hi = 0
        self._space.set()

    async def save_positions(self, positions: Mapping[str, int]) -> None:
        await self.db.transaction(lambda conn: store.save_positions(conn, self._positions, positions))

    @property
    def positions(self) -> dict[str, int]:
        """Per stream, a sequence up to which every event of this node there is not here."""
        return dict(self._positions)

    async def wait_appended(self, timeout: float) -> None:
        """Wait until something was committed (or ``timeout`` passed)."""
        await self._wait(self._appended, timeout)
        self._appended.clear()

    # --- what a heartbeat reports ----------------------------------------------------------

    def dropped(self) -> dict[str, int]:
        """Cumulative drop counters by reason (including drops not yet on disk)."""
        return self._drops.totals()

    def count_drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` events refused before they reached the outbox (``readings.invalid``)."""
        self._drops.count(reason, n, saved=False)
        self._wake.set()

    @property
    def blocked(self) -> bool:
        """Full of lifecycle events: producers of lifecycle events are waiting."""
        return self._blocked

    @property
    def next_nodeseq(self) -> int:
        return self._next

    def backlog_now(self) -> tuple[int, int]:
        """(messages, bytes) held right now, without touching the disk."""
        return sum(self._counts.values()), sum(self._bytes.values())

    async def backlog(self) -> Backlog:
        first = await self.db.call(lambda: store.oldest_time(self.db.conn))
        age = None if first is None else max(0.0, (self.clock_ns() - first) / 1e9)
        return Backlog(
            readings=self._counts["readings"],
            lifecycle=self._counts["lifecycle"],
            bytes=sum(self._bytes.values()),
            oldest_age_seconds=age,
        )

    @staticmethod
    async def _wait(event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
