"""The node's SQLite database, driven from asyncio through one dedicated thread.

One file (``<data-dir>/node.db``) holds the outbox and the node's durable state (goals,
config, sensor states, counters), so an event and the state change that produced it commit
in one transaction. Every statement runs on a single worker thread with one connection:
SQLite allows one writer anyway, the event loop never waits on an fsync, and one connection
means WAL checkpoints are never starved by a reader that is always open.

``synchronous=FULL`` in WAL mode fsyncs the log at every commit: a commit that returned is on
disk and survives a power cut, which is what "appended before it is acknowledged" promises.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import structlog

from hivebus.errors import SetupError

log = structlog.get_logger()

T = TypeVar("T")

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA journal_size_limit=67108864",  # truncate the WAL back to 64 MiB after checkpoints
    "PRAGMA cache_size=-8192",  # 8 MiB page cache: memory stays flat however large the backlog
    "PRAGMA temp_store=MEMORY",
)


class NodeDatabase:
    """A SQLite file whose every call runs on one worker thread, in order of submission."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="node-db")
        self._conn: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: Path) -> NodeDatabase:
        db = cls(path)
        await db.call(db._connect)
        return db

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
            for pragma in _PRAGMAS:
                conn.execute(pragma)
        except sqlite3.Error as exc:
            raise SetupError(f"cannot open the node database {self.path}: {exc}") from None
        self._conn = conn

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection; only valid inside a function passed to ``call``."""
        if self._conn is None:
            raise SetupError(f"node database {self.path} is not open")
        return self._conn

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on the database thread and return its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, fn, *args)

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` inside ``BEGIN IMMEDIATE ... COMMIT`` (rolled back if it raises)."""
        return await self.call(self.in_transaction, fn)

    def in_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """The body of ``transaction``, for code already on the database thread."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back by itself (SQLITE_FULL, IOERR)
                conn.execute("ROLLBACK")
            raise
        return result

    async def close(self) -> None:
        if self._conn is not None:
            await self.call(self._close)
        self._thread.shutdown(wait=True)

    def _close(self) -> None:
        assert self._conn is not None
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # still consistent: the WAL is replayed on the next open
            log.warning("node_db.checkpoint_failed", error=str(exc))
        self._conn.close()
        self._conn = None
