"""The outbox's group commit: the appends waiting, and the one transaction that stores them.

Appends that arrive while a commit is running wait together (``Pending``, one per
``append_many``/``submit`` call) and go in the next one, so one fsync covers thousands of
events. ``commit`` (on the database thread) makes room as ``outbox_space`` says, inserts what
fits in FIFO order (an append with a state write in a savepoint of its own, so a failing
write undoes its own events and nothing else), saves the drop counters and ``next_nodeseq``,
and reports what it did (``Group``); the outbox applies that to its memory after COMMIT.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from hivebus.edge import outbox_counters as counters
from hivebus.edge import outbox_space as space
from hivebus.edge import outbox_store as store
from hivebus.edge.outbox_counters import DROPPED_FULL
from hivebus.edge.outbox_store import Row, StateWrite


@dataclass(slots=True)
class Pending:
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
class Group:
    """What one group commit did (computed on the database thread, applied after COMMIT)."""

    committed: list[Pending] = field(default_factory=list)
    dropped_incoming: int = 0
    dropped_stored: int = 0
    freed_stored: int = 0
    added: dict[str, tuple[int, int]] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)


def commit(
    conn: sqlite3.Connection,
    items: list[Pending],
    unsaved: dict[str, int],
    *,
    free: Callable[[], int],
    floor: Callable[[], int],
    next_nodeseq: int,
) -> Group:
    """One transaction: make room (``free()`` bytes are left; readings up to ``floor()`` are
    the forwarder's: both asked here, on the database thread, where the forwarder's reads
    run too), insert what fits in FIFO order, save the counters and ``next_nodeseq``."""
    done = Group(drops=dict(unsaved))
    drops = done.drops
    conn.execute("BEGIN IMMEDIATE")
    try:
        needed = sum(item.size for item in items)
        free_now = free()
        if needed > free_now:
            n, freed = space.drop_stored_readings(conn, floor(), needed - free_now)
            done.dropped_stored, done.freed_stored = n, freed
            free_now += freed
            if n:
                drops[DROPPED_FULL] = drops.get(DROPPED_FULL, 0) + n
        if needed > free_now:
            needed -= space.drop_incoming_readings(items, needed - free_now, done)
        pending: dict[str, list[Row]] = {"readings": [], "lifecycle": []}
        for item in items:
            if item.size > free_now:
                break  # FIFO: nothing after a waiting event may overtake it
            free_now -= item.size
            if item.state is None:
                pending["readings"] += item.readings
                pending["lifecycle"] += item.lifecycle
            else:
                store.insert(conn, pending, done.added)
                _insert_with_state(conn, item, done)
            done.committed.append(item)
        store.insert(conn, pending, done.added)
        counters.add(conn, drops)
        store.save_next(conn, next_nodeseq)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back by itself (SQLITE_FULL)
            conn.execute("ROLLBACK")
        raise
    return done


def _insert_with_state(conn: sqlite3.Connection, item: Pending, done: Group) -> None:
    """An append with a state write: both in a savepoint, so a failing write undoes its own
    events and nothing else of the group."""
    assert item.state is not None
    conn.execute("SAVEPOINT item")
    mine: dict[str, list[Row]] = {"readings": list(item.readings), "lifecycle": list(item.lifecycle)}
    added: dict[str, tuple[int, int]] = {}
    try:
        store.insert(conn, mine, added)
        item.state(conn)
    except Exception as exc:
        if store.no_space(exc):
            raise  # not this item's fault: the whole group waits for space
        conn.execute("ROLLBACK TO item")
        conn.execute("RELEASE item")
        item.error = exc
        return
    conn.execute("RELEASE item")
    for table, (n, size) in added.items():
        was_n, was_size = done.added.get(table, (0, 0))
        done.added[table] = (was_n + n, was_size + size)
