"""The outbox: every event a node produces, durable on the node until the hub has it.

``append`` assigns the event its per-node ``nodeseq``, encodes it once (the stored bytes are
what the forwarder sends) and returns only after the row is committed (WAL, fsync'ed). Appends
that arrive while a commit is running wait together and go in the next one (group commit), so
one fsync covers thousands of events.

Sequence numbers
    ``nodeseq`` is strictly increasing per node and never reused: the next value is stored
    with every commit, and a fresh outbox starts at the current time in microseconds, so even a
    node whose data directory was wiped continues above every number it used before (unless
    it produced more than a million events a second on average). Uncommitted numbers are never
    published, so a crash before a commit may leave a gap but never a repeat. Every reading
    handed to the outbox takes a number, kept or dropped, so apart from such a crash gap the
    numbers a node skipped are exactly the drops it counted (below).

Limits, and what is dropped
    The outbox holds at most ``max_bytes`` of events (body + subject + id). When an append
    does not fit, the oldest *readings* are dropped until it does (readings already handed to
    the forwarder are not dropped: they are about to be acknowledged). Lifecycle events (plugin
    status, heartbeats, registration, sensor and trigger events) are never dropped: when only
    they remain (or the readings left are the forwarder's), their producers wait until the
    forwarder frees space (back-pressure), and readings that arrive meanwhile are dropped.
    Readings older than ``max_age`` are dropped too. Every drop is counted by reason
    (``readings.outbox_full``, ``readings.expired``, ``readings.disk_full`` below) in a table
    committed with the drop, or with the next commit for a reading refused on arrival; the
    counters are cumulative and go into every heartbeat. A message the hub refuses for what
    it is (see the forwarder) is counted as ``refused_by_hub`` and kept in table ``parked``.

A full disk
    When SQLite cannot write for lack of space (``SQLITE_FULL``: the file system is full, or
    a ``max_page_count`` is reached) nothing already stored is touched: the failed group
    commit is rolled back whole. Its readings are refused (their appends return None, like a
    drop) and counted as ``readings.disk_full``; its lifecycle events and state writes stay
    queued, in order, and their producers wait (as for a full outbox). For a second after a
    failure new readings are refused without trying; then the next group tries again, and so
    does the queue whenever the forwarder frees space. The first commit that succeeds ends the
    episode (logged ``outbox.disk_full`` ... ``outbox.disk_space_back``) and saves the counter
    (counters of refusals are kept in memory until a commit can store them; a crash while the
    disk is full loses those counts, never an event that was stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import structlog

from hivebus.bus.streams import DATA, EVENTS
from hivebus.bus.subjects import subject_for
from hivebus.edge.db import NodeDatabase
from hivebus.errors import OutboxError, SetupError
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event

log = structlog.get_logger()

READING_TYPE: Final = "data.reading"
DROPPED_FULL: Final = "readings.outbox_full"
DROPPED_EXPIRED: Final = "readings.expired"
DISK_FULL: Final = "readings.disk_full"
REFUSED: Final = "refused_by_hub"
MIN_MAX_BYTES: Final = 4096
_MAX_ROWS_PER_COMMIT: Final = 50_000
_EXPIRE_EVERY_S: Final = 5.0
_DISK_RETRY_S: Final = 1.0
_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS readings (
        nodeseq INTEGER PRIMARY KEY, t INTEGER NOT NULL, size INTEGER NOT NULL,
        subject TEXT NOT NULL, msg_id TEXT NOT NULL, body BLOB NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS lifecycle (
        nodeseq INTEGER PRIMARY KEY, t INTEGER NOT NULL, size INTEGER NOT NULL,
        subject TEXT NOT NULL, msg_id TEXT NOT NULL, body BLOB NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS outbox_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS drop_counters (reason TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS parked (
        nodeseq INTEGER PRIMARY KEY, t INTEGER NOT NULL, subject TEXT NOT NULL,
        msg_id TEXT NOT NULL, body BLOB NOT NULL, reason TEXT NOT NULL)""",
)
_TABLES: Final = ("readings", "lifecycle")

StateWrite = Callable[[sqlite3.Connection], None]
"""A state change committed in the same transaction as the events appended with it."""


@dataclass(frozen=True, kw_only=True)
class OutboxLimits:
    """How much a node keeps while the hub is out of reach (see the module docstring)."""

    max_bytes: int = 1 << 30
    max_age_seconds: float = 7 * 86400.0  # readings only; lifecycle events never expire

    def __post_init__(self) -> None:
        if self.max_bytes < MIN_MAX_BYTES:
            raise SetupError(f"outbox max_bytes {self.max_bytes} is below {MIN_MAX_BYTES}")
        if not self.max_age_seconds > 0:
            raise SetupError(f"outbox max_age_seconds {self.max_age_seconds} must be > 0")


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored event as the forwarder sends it."""

    nodeseq: int
    subject: str
    msg_id: str
    body: bytes
    size: int
    t: int = 0  # when it was appended (ns since the epoch, the outbox's clock)

    @property
    def stream(self) -> str:
        return DATA if self.subject.startswith("data.") else EVENTS


@dataclass(frozen=True, kw_only=True)
class Backlog:
    readings: int
    lifecycle: int
    bytes: int
    oldest_age_seconds: float | None

    @property
    def messages(self) -> int:
        return self.readings + self.lifecycle


Row = tuple[int, int, int, str, str, bytes]
"""(nodeseq, t, size, subject, msg_id, body): a row exactly as it is inserted."""
_SEQ: Final = 0
_SIZE: Final = 2


@dataclass(slots=True)
class _Item:
    """One ``append_many`` call waiting for its commit, its rows already split by table."""

    readings: list[Row]
    lifecycle: list[Row]
    size: int
    result: list[int | None]
    state: StateWrite | None
    future: asyncio.Future[list[int | None]]
    dropped: set[int] = field(default_factory=set)
    error: BaseException | None = None

    @property
    def rows(self) -> int:
        return len(self.readings) + len(self.lifecycle)


@dataclass(slots=True)
class _Commit:
    """What one group commit did (computed on the database thread, applied after COMMIT)."""

    committed: list[_Item] = field(default_factory=list)
    dropped_incoming: int = 0
    dropped_stored: int = 0
    freed_stored: int = 0
    added: dict[str, tuple[int, int]] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)


class Outbox:
    """The durable queue between a node's producers and the hub (see the module docstring)."""

    def __init__(self, db: NodeDatabase, node: str, limits: OutboxLimits) -> None:
        self.db = db
        self.node = node
        self.limits = limits
        self._source = f"node/{node}"
        self._next = 0
        self._pending: deque[_Item] = deque()
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
        self._dropped: dict[str, int] = {}
        self._unsaved_drops: dict[str, int] = {}
        self._committing_drops: dict[str, int] = {}  # taken from _unsaved_drops, not yet on disk
        self._positions: dict[str, int] = {}
        self._inflight_hi = 0  # rows with nodeseq <= this are being published: never dropped
        self._last_expiry = 0.0
        self.clock_ns: Callable[[], int] = time.time_ns

    # --- opening and closing ---------------------------------------------------------------

    @classmethod
    async def open(cls, db: NodeDatabase, node: str, limits: OutboxLimits | None = None) -> Outbox:
        """The node's outbox in ``db`` (created if new); resumes exactly where it was."""
        outbox = cls(db, node, limits or OutboxLimits())
        await db.call(outbox._load)
        outbox._committer = asyncio.create_task(outbox._commit_loop(), name="outbox-committer")
        log.info("outbox.opened", node=node, next_nodeseq=outbox._next, **outbox._counts)
        return outbox

    def _load(self) -> None:
        conn = self.db.conn
        for ddl in _SCHEMA:
            conn.execute(ddl)
        meta = dict(conn.execute("SELECT key, value FROM outbox_meta").fetchall())
        highest = max(
            (conn.execute(f"SELECT max(nodeseq) FROM {t}").fetchone()[0] or 0 for t in _TABLES),
            default=0,
        )
        self._next = max(int(meta.get("next_nodeseq", 0)), highest + 1)
        if self._next <= 1:
            self._next = time.time_ns() // 1000
            conn.execute(
                "INSERT OR REPLACE INTO outbox_meta VALUES ('next_nodeseq', ?)", (self._next,)
            )
        self._positions = {
            key[4:]: int(value) for key, value in meta.items() if key.startswith("pos.")
        }
        for table in _TABLES:
            n, size = conn.execute(f"SELECT count(*), total(size) FROM {table}").fetchone()
            self._counts[table], self._bytes[table] = int(n), int(size)
        self._dropped = dict(conn.execute("SELECT reason, n FROM drop_counters").fetchall())

    async def close(self) -> None:
        """Commit what is pending (unless blocked on a full outbox), then stop."""
        self._closed = True
        self._wake.set()
        self._space.set()
        if self._committer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._committer), timeout=5.0)
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
                self._count(DISK_FULL if no_disk else DROPPED_FULL, 1, saved=False)
                self._next += 1  # its number stays unused, like any dropped reading's
                result.append(None)
                continue
            else:
                row = self._row(event, now)
                readings.append(row)
            result.append(row[_SEQ])
            size += row[_SIZE]
        future: asyncio.Future[list[int | None]] = asyncio.get_running_loop().create_future()
        if not readings and not lifecycle and state is None:
            future.set_result(result)
            return future
        self._pending.append(_Item(readings, lifecycle, size, result, state, future))
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
                    if self._unsaved_drops:  # counted since the last commit: keep them
                        await self._commit_group([])
                    return
                await self._wait(self._wake, _EXPIRE_EVERY_S)
                self._wake.clear()
            await self._maybe_expire()
            if not self._pending:
                if self._unsaved_drops:
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

    def _take(self) -> list[_Item]:
        items: list[_Item] = []
        rows = 0
        while self._pending and rows < _MAX_ROWS_PER_COMMIT:
            item = self._pending.popleft()
            items.append(item)
            rows += item.rows
        return items

    async def _commit_group(self, items: list[_Item]) -> list[_Item]:
        """Commit ``items`` (dropping readings as needed); returns those that must wait."""
        unsaved, self._unsaved_drops = self._unsaved_drops, {}
        self._committing_drops = unsaved
        dropped_before = [len(item.dropped) for item in items]
        try:
            done = await self.db.call(self._commit, items, unsaved)
        except Exception as exc:
            self._committing_drops = {}
            for reason, n in unsaved.items():
                self._count(reason, n, saved=False)
            if _no_space(exc):
                return self._refuse_for_space(items, dropped_before, exc)
            log.error("outbox.commit_failed", error=str(exc), items=len(items))
            for item in items:
                if not item.future.done():
                    item.future.set_exception(OutboxError(f"cannot store events: {exc}"))
            return []
        if self._disk_full and done.committed:
            self._disk_full = False
            log.info("outbox.disk_space_back", refused_so_far=self.dropped().get(DISK_FULL, 0))
        for table, (n, size) in done.added.items():
            self._counts[table] += n
            self._bytes[table] += size
        self._counts["readings"] -= done.dropped_stored
        self._bytes["readings"] -= done.freed_stored
        self._committing_drops = {}
        for reason, n in done.drops.items():
            self._count(reason, n, saved=True)
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
        committed = {id(item) for item in done.committed}
        return [item for item in items if id(item) not in committed]

    def _refuse_for_space(
        self, items: list[_Item], dropped_before: list[int], exc: Exception
    ) -> list[_Item]:
        """The disk is full: refuse the readings of ``items`` (counted), keep their lifecycle
        events (and state writes) waiting for the next try; returns the items that wait."""
        waiting: list[_Item] = []
        refused = 0
        for item, before in zip(items, dropped_before, strict=True):
            item.dropped.update(row[_SEQ] for row in item.readings)
            refused += len(item.dropped) - before  # with those dropped in the failed attempt
            item.readings = []
            item.size = sum(row[_SIZE] for row in item.lifecycle)
            if item.lifecycle or item.state is not None:
                waiting.append(item)
            elif not item.future.done():
                item.future.set_result([None if s in item.dropped else s for s in item.result])
        if refused:
            self._count(DISK_FULL, refused, saved=False)
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

    def _commit(self, items: list[_Item], unsaved: dict[str, int]) -> _Commit:
        """One transaction: make room, insert what fits in FIFO order, save counters."""
        done = _Commit(drops=dict(unsaved))
        drops = done.drops
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            free = self.limits.max_bytes - self._bytes["readings"] - self._bytes["lifecycle"]
            needed = sum(item.size for item in items)
            if needed > free:
                n, freed = self._drop_stored_readings(conn, needed - free)
                done.dropped_stored, done.freed_stored = n, freed
                free += freed
                if n:
                    drops[DROPPED_FULL] = drops.get(DROPPED_FULL, 0) + n
            if needed > free:
                needed -= self._drop_incoming_readings(items, needed - free, done)
            pending: dict[str, list[Row]] = {"readings": [], "lifecycle": []}
            for item in items:
                if item.size > free:
                    break  # FIFO: nothing after a waiting event may overtake it
                free -= item.size
                if item.state is None:
                    pending["readings"] += item.readings
                    pending["lifecycle"] += item.lifecycle
                else:
                    self._insert(conn, pending, done)
                    self._insert_with_state(conn, item, done)
                done.committed.append(item)
            self._insert(conn, pending, done)
            for reason, n in drops.items():
                conn.execute(
                    "INSERT INTO drop_counters VALUES (?, ?) "
                    "ON CONFLICT(reason) DO UPDATE SET n = n + excluded.n",
                    (reason, n),
                )
            conn.execute(
                "INSERT OR REPLACE INTO outbox_meta VALUES ('next_nodeseq', ?)", (self._next,)
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back by itself (SQLITE_FULL)
                conn.execute("ROLLBACK")
            raise
        return done

    def _drop_incoming_readings(self, items: list[_Item], deficit: int, done: _Commit) -> int:
        """Drop the oldest readings of the appends being committed until ``deficit`` bytes
        are freed (or none is left); the bytes freed. Dropped rows leave their item for good."""
        freed = 0
        for item in items:
            if freed >= deficit:
                break
            kept: list[Row] = []
            for row in item.readings:
                if freed < deficit:
                    freed += row[_SIZE]
                    item.size -= row[_SIZE]
                    item.dropped.add(row[_SEQ])
                    done.dropped_incoming += 1
                else:
                    kept.append(row)
            item.readings = kept
        if done.dropped_incoming:
            done.drops[DROPPED_FULL] = done.drops.get(DROPPED_FULL, 0) + done.dropped_incoming
        return freed

    @staticmethod
    def _insert(conn: sqlite3.Connection, rows: dict[str, list[Row]], done: _Commit) -> None:
        """Insert (and then forget) the rows gathered per table."""
        for table, values in rows.items():
            if values:
                conn.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?)", values)
                n, size = done.added.get(table, (0, 0))
                done.added[table] = (n + len(values), size + sum(r[_SIZE] for r in values))
                values.clear()

    def _insert_with_state(self, conn: sqlite3.Connection, item: _Item, done: _Commit) -> None:
        """An append with a state write: both in a savepoint, so a failing write undoes
        its own events and nothing else of the group."""
        assert item.state is not None
        conn.execute("SAVEPOINT item")
        mine: dict[str, list[Row]] = {
            "readings": list(item.readings),
            "lifecycle": list(item.lifecycle),
        }
        added = _Commit()
        try:
            self._insert(conn, mine, added)
            item.state(conn)
        except Exception as exc:
            if _no_space(exc):
                raise  # not this item's fault: the whole group waits for space
            conn.execute("ROLLBACK TO item")
            conn.execute("RELEASE item")
            item.error = exc
            return
        conn.execute("RELEASE item")
        for table, (n, size) in added.added.items():
            was_n, was_size = done.added.get(table, (0, 0))
            done.added[table] = (was_n + n, was_size + size)

    def _drop_stored_readings(self, conn: sqlite3.Connection, deficit: int) -> tuple[int, int]:
        """Delete the oldest readings not in flight until ``deficit`` bytes are freed."""
        floor = last = self._inflight_hi
        n = freed = 0
        while freed < deficit:
            rows = conn.execute(
                "SELECT nodeseq, size FROM readings WHERE nodeseq > ? ORDER BY nodeseq LIMIT 2000",
                (last,),
            ).fetchall()
            if not rows:
                break
            for seq, size in rows:
                n, freed, last = n + 1, freed + size, seq
                if freed >= deficit:
                    break
        if n:
            conn.execute("DELETE FROM readings WHERE nodeseq > ? AND nodeseq <= ?", (floor, last))
        return n, freed

    async def _maybe_expire(self) -> None:
        now = time.monotonic()
        if now - self._last_expiry < _EXPIRE_EVERY_S:
            return
        self._last_expiry = now
        cutoff = self.clock_ns() - int(self.limits.max_age_seconds * 1e9)
        try:
            n, freed = await self.db.call(self.db.in_transaction, lambda c: self._expire(c, cutoff))
        except Exception as exc:
            log.error("outbox.expire_failed", error=str(exc))
            return
        if n:
            self._counts["readings"] -= n
            self._bytes["readings"] -= freed
            self._dropped[DROPPED_EXPIRED] = self._dropped.get(DROPPED_EXPIRED, 0) + n
            self._space.set()
            log.warning("outbox.expired", readings=n, bytes=freed)

    def _expire(self, conn: sqlite3.Connection, cutoff_ns: int) -> tuple[int, int]:
        """Drop readings older than the cutoff, oldest first (stops at the first young one)."""
        floor = last = self._inflight_hi
        n = freed = 0
        while True:
            rows = conn.execute(
                "SELECT nodeseq, t, size FROM readings WHERE nodeseq > ? ORDER BY nodeseq LIMIT 2000",
                (last,),
            ).fetchall()
            young = False
            for seq, t, size in rows:
                if t >= cutoff_ns:
                    young = True
                    break
                n, freed, last = n + 1, freed + size, seq
            if young or not rows:
                break
        if n:
            conn.execute("DELETE FROM readings WHERE nodeseq > ? AND nodeseq <= ?", (floor, last))
            conn.execute(
                "INSERT INTO drop_counters VALUES (?, ?) "
                "ON CONFLICT(reason) DO UPDATE SET n = n + excluded.n",
                (DROPPED_EXPIRED, n),
            )
        return n, freed

    # --- the forwarder's side --------------------------------------------------------------

    async def next_batch(self, limit: int) -> list[Entry]:
        """The oldest ``limit`` events, in nodeseq order; they are protected from drops
        until ``remove``/``release`` (the forwarder has one batch in flight at a time)."""
        return await self.db.call(self._read_batch, limit)

    def _read_batch(self, limit: int) -> list[Entry]:
        # On the database thread, so no commit can drop a row between this read and the mark.
        rows = self.db.conn.execute(
            "SELECT * FROM (SELECT nodeseq, subject, msg_id, body, size, t FROM readings "
            "ORDER BY nodeseq LIMIT :n) UNION ALL SELECT * FROM (SELECT nodeseq, subject, "
            "msg_id, body, size, t FROM lifecycle ORDER BY nodeseq LIMIT :n) ORDER BY 1 LIMIT :n",
            {"n": limit},
        ).fetchall()
        if rows:
            self._inflight_hi = rows[-1][0]
        return [Entry(*row) for row in rows]

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
            for table in _TABLES:
                conn.execute(f"DELETE FROM {table} WHERE nodeseq BETWEEN ? AND ?", (lo, hi))
            self._save_positions(conn, positions)

        await self.db.transaction(delete)
        for entry in entries:
            table = "readings" if entry.stream == DATA else "lifecycle"
            self._counts[table] -= 1
            self._bytes[table] -= entry.size
        self._inflight_hi = 0
        self._space.set()

    async def remove_published(
        self, published: Iterable[tuple[int, str]], positions: Mapping[str, int]
    ) -> int:
        """Delete the events found in the hub's streams (``(nodeseq, event id)`` pairs, after
        a failure or a crash left it unknown what arrived); how many were still here."""
        pairs = list(published)

        def delete(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            gone: list[tuple[str, int]] = []
            for table in _TABLES:
                for seq, msg_id in pairs:
                    row = conn.execute(
                        f"SELECT size FROM {table} WHERE nodeseq = ? AND msg_id = ?", (seq, msg_id)
                    ).fetchone()
                    if row is not None:
                        conn.execute(f"DELETE FROM {table} WHERE nodeseq = ?", (seq,))
                        gone.append((table, row[0]))
            self._save_positions(conn, positions)
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
        table = "readings" if entry.stream == DATA else "lifecycle"

        def move(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT OR REPLACE INTO parked SELECT nodeseq, t, subject, msg_id, body, ? FROM {table} "
                "WHERE nodeseq = ?",
                (reason, entry.nodeseq),
            )
            conn.execute(f"DELETE FROM {table} WHERE nodeseq = ?", (entry.nodeseq,))
            conn.execute(
                "INSERT INTO drop_counters VALUES (?, 1) ON CONFLICT(reason) DO UPDATE SET n = n + 1",
                (REFUSED,),
            )

        await self.db.transaction(move)
        self._counts[table] -= 1
        self._bytes[table] -= entry.size
        self._count(REFUSED, 1, saved=True)
        self._inflight_hi = 0
        self._space.set()

    def _save_positions(self, conn: sqlite3.Connection, positions: Mapping[str, int]) -> None:
        for stream, seq in positions.items():
            if stream not in self._positions or seq > self._positions[stream]:
                conn.execute(
                    "INSERT OR REPLACE INTO outbox_meta VALUES (?, ?)", (f"pos.{stream}", seq)
                )
                self._positions[stream] = seq

    async def save_positions(self, positions: Mapping[str, int]) -> None:
        await self.db.transaction(lambda conn: self._save_positions(conn, positions))

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
        out = dict(self._dropped)
        for pending in (self._committing_drops, self._unsaved_drops):
            for reason, n in pending.items():
                out[reason] = out.get(reason, 0) + n
        return out

    def count_drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` events refused before they reached the outbox (``readings.invalid``)."""
        self._count(reason, n, saved=False)
        self._wake.set()

    def _count(self, reason: str, n: int, *, saved: bool) -> None:
        target = self._dropped if saved else self._unsaved_drops
        target[reason] = target.get(reason, 0) + n

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
        def oldest() -> int | None:
            row = self.db.conn.execute(
                "SELECT min(t) FROM (SELECT t FROM (SELECT t FROM readings ORDER BY nodeseq LIMIT 1) "
                "UNION ALL SELECT t FROM (SELECT t FROM lifecycle ORDER BY nodeseq LIMIT 1))"
            ).fetchone()
            return row[0]

        first = await self.db.call(oldest)
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
            await asyncio.wait_for(event.wait(), timeout)


def _no_space(exc: BaseException) -> bool:
    """SQLite could not write for lack of space (the disk, or a ``max_page_count`` limit)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF == sqlite3.SQLITE_FULL
    )
