"""What the outbox keeps in ``node.db``: its tables, the rows as stored, and reading them back.

Tables: ``readings`` and ``lifecycle`` (one row per event: ``nodeseq``, append time, size,
subject, ``Nats-Msg-Id``, the encoded body the forwarder sends as is), ``outbox_meta``
(``next_nodeseq`` and, per stream, ``pos.<stream>``: how far the hub is known to hold all of
this node's events), ``drop_counters`` (``outbox_counters``), ``parked`` (events the hub
refuses for what they are) and ``inflight`` (``outbox_batches``: the bounds of the packed
messages being sent).

Sequence numbers
    ``nodeseq`` is strictly increasing per node and never reused: the next value is stored
    with every commit, and a fresh outbox starts at the current time in microseconds, so even a
    node whose data directory was wiped continues above every number it used before (unless
    it produced more than a million events a second on average). Uncommitted numbers are never
    published, so a crash before a commit may leave a gap but never a repeat. Every reading
    handed to the outbox takes a number, kept or dropped, so apart from such a crash gap the
    numbers a node skipped are exactly the drops it counted (``outbox_counters``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from hivebus.bus.streams import DATA, EVENTS
from hivebus.errors import SetupError

READING_TYPE: Final = "data.reading"
MIN_MAX_BYTES: Final = 4096
TABLES: Final = ("readings", "lifecycle")
SCHEMA: Final = (
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
    "CREATE TABLE IF NOT EXISTS inflight (first INTEGER PRIMARY KEY, last INTEGER NOT NULL)",
)

StateWrite = Callable[[sqlite3.Connection], None]
"""A state change committed in the same transaction as the events appended with it."""

Row = tuple[int, int, int, str, str, bytes]
"""(nodeseq, t, size, subject, msg_id, body): a row exactly as it is inserted."""
SEQ: Final = 0
SIZE: Final = 2


@dataclass(frozen=True, kw_only=True)
class OutboxLimits:
    """How much a node keeps while the hub is out of reach (see ``outbox_space``)."""

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

    @property
    def table(self) -> str:
        return "readings" if self.stream == DATA else "lifecycle"


@dataclass(frozen=True, kw_only=True)
class Backlog:
    readings: int
    lifecycle: int
    bytes: int
    oldest_age_seconds: float | None

    @property
    def messages(self) -> int:
        return self.readings + self.lifecycle


@dataclass(frozen=True, kw_only=True)
class Stored:
    """What an opened outbox file holds, as the in-memory state starts from."""

    next_nodeseq: int
    positions: dict[str, int]
    counts: dict[str, int]
    bytes: dict[str, int]
    dropped: dict[str, int]
    bounds: dict[int, int]


def create_and_load(conn: sqlite3.Connection) -> Stored:
    """Create the tables if new and read where the outbox was (see the module docstring)."""
    for ddl in SCHEMA:
        conn.execute(ddl)
    meta = dict(conn.execute("SELECT key, value FROM outbox_meta").fetchall())
    highest = max(
        (conn.execute(f"SELECT max(nodeseq) FROM {t}").fetchone()[0] or 0 for t in TABLES),
        default=0,
    )
    next_nodeseq = max(int(meta.get("next_nodeseq", 0)), highest + 1)
    if next_nodeseq <= 1:
        next_nodeseq = time.time_ns() // 1000
        save_next(conn, next_nodeseq)
    counts: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for table in TABLES:
        n, size = conn.execute(f"SELECT count(*), total(size) FROM {table}").fetchone()
        counts[table], sizes[table] = int(n), int(size)
    return Stored(
        next_nodeseq=next_nodeseq,
        positions={key[4:]: int(v) for key, v in meta.items() if key.startswith("pos.")},
        counts=counts,
        bytes=sizes,
        dropped=dict(conn.execute("SELECT reason, n FROM drop_counters").fetchall()),
        bounds=dict(conn.execute("SELECT first, last FROM inflight").fetchall()),
    )


def save_next(conn: sqlite3.Connection, next_nodeseq: int) -> None:
    conn.execute("INSERT OR REPLACE INTO outbox_meta VALUES ('next_nodeseq', ?)", (next_nodeseq,))


def insert(conn: sqlite3.Connection, rows: dict[str, list[Row]], added: dict[str, tuple[int, int]]) -> None:
    """Insert (and then forget) the rows gathered per table; ``added`` counts them."""
    for table, values in rows.items():
        if values:
            conn.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?)", values)
            n, size = added.get(table, (0, 0))
            added[table] = (n + len(values), size + sum(r[SIZE] for r in values))
            values.clear()


def save_positions(conn: sqlite3.Connection, known: dict[str, int], positions: Mapping[str, int]) -> None:
    """Store the positions that move ``known`` forward (and update ``known``)."""
    for stream, seq in positions.items():
        if stream not in known or seq > known[stream]:
            conn.execute("INSERT OR REPLACE INTO outbox_meta VALUES (?, ?)", (f"pos.{stream}", seq))
            known[stream] = seq


def oldest_time(conn: sqlite3.Connection) -> int | None:
    """When the oldest event held was appended (ns), or None when empty."""
    row = conn.execute(
        "SELECT min(t) FROM (SELECT t FROM (SELECT t FROM readings ORDER BY nodeseq LIMIT 1) "
        "UNION ALL SELECT t FROM (SELECT t FROM lifecycle ORDER BY nodeseq LIMIT 1))"
    ).fetchone()
    return None if row[0] is None else int(row[0])


def no_space(exc: BaseException) -> bool:
    """SQLite could not write for lack of space (the disk, or a ``max_page_count`` limit)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF == sqlite3.SQLITE_FULL
