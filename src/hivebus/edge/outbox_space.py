"""Making room in the outbox: a full outbox, readings too old, a full disk.

A full outbox
    The outbox holds at most ``max_bytes`` of events (body + subject + id). When an append
    does not fit, the oldest *readings* are dropped until it does (readings already handed to
    the forwarder are not dropped: they are about to be acknowledged). Lifecycle events (plugin
    status, heartbeats, registration, sensor and trigger events) are never dropped: when only
    they remain (or the readings left are the forwarder's), their producers wait until the
    forwarder frees space (back-pressure), and readings that arrive meanwhile are dropped.
    Readings older than ``max_age`` are dropped too. Every drop is counted by reason
    (``outbox_counters``).

A full disk
    When SQLite cannot write for lack of space (``SQLITE_FULL``: the file system is full, or
    a ``max_page_count`` is reached) nothing already stored is touched: the failed group
    commit is rolled back whole. Its readings are refused (their appends return None, like a
    drop) and counted as ``readings.disk_full``; its lifecycle events and state writes stay
    queued, in order, and their producers wait (as for a full outbox). For a second after a
    failure new readings are refused without trying; then the next group tries again, and so
    does the queue whenever the forwarder frees space. The first commit that succeeds ends the
    episode (logged ``outbox.disk_full`` ... ``outbox.disk_space_back``) and saves the counter.

Every function here runs on the database thread, inside the caller's transaction (or, for
``refuse_for_space``, after a failed one).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from hivebus.edge import outbox_counters as counters
from hivebus.edge.outbox_counters import DROPPED_EXPIRED, DROPPED_FULL
from hivebus.edge.outbox_store import SEQ, SIZE

if TYPE_CHECKING:
    from hivebus.edge.outbox_commit import Group, Pending


def drop_stored_readings(conn: sqlite3.Connection, floor: int, deficit: int) -> tuple[int, int]:
    """Delete the oldest readings above ``floor`` (the forwarder's) until ``deficit`` bytes
    are freed; (how many, bytes freed)."""
    last = floor
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


def drop_incoming_readings(items: list[Pending], deficit: int, done: Group) -> int:
    """Drop the oldest readings of the appends being committed until ``deficit`` bytes are
    freed (or none is left); the bytes freed. Dropped rows leave their item for good."""
    freed = 0
    for item in items:
        if freed >= deficit:
            break
        kept = []
        for row in item.readings:
            if freed < deficit:
                freed += row[SIZE]
                item.size -= row[SIZE]
                item.dropped.add(row[SEQ])
                done.dropped_incoming += 1
            else:
                kept.append(row)
        item.readings = kept
    if done.dropped_incoming:
        done.drops[DROPPED_FULL] = done.drops.get(DROPPED_FULL, 0) + done.dropped_incoming
    return freed


def expire(conn: sqlite3.Connection, floor: int, cutoff_ns: int) -> tuple[int, int]:
    """Drop readings above ``floor`` older than the cutoff, oldest first (stops at the first
    young one), counted as ``readings.expired``; (how many, bytes freed)."""
    last = floor
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
        counters.add(conn, {DROPPED_EXPIRED: n})
    return n, freed


def refuse_for_space(items: list[Pending], dropped_before: list[int]) -> tuple[list[Pending], int]:
    """The disk is full: refuse the readings of ``items``, keep their lifecycle events (and
    state writes) for the next try. (The items that wait, how many readings were refused.)
    Appends left with nothing to store are answered here."""
    waiting: list[Pending] = []
    refused = 0
    for item, before in zip(items, dropped_before, strict=True):
        item.dropped.update(row[SEQ] for row in item.readings)
        refused += len(item.dropped) - before  # with those dropped in the failed attempt
        item.readings = []
        item.size = sum(row[SIZE] for row in item.lifecycle)
        if item.lifecycle or item.state is not None:
            waiting.append(item)
        elif not item.future.done():
            item.future.set_result([None if s in item.dropped else s for s in item.result])
    return waiting, refused
