"""The forwarder's side of the outbox: reading a batch, deleting what the hub holds, parking
what it refuses, and the bounds of the packed messages in flight.

Every function runs on the database thread (the caller's transaction where one is named).

The bounds in flight (table ``inflight``: first nodeseq -> last of each packed message of the
batch being sent) are stored before the batch is published, so a forwarder that starts again
after a crash re-forms the messages of that batch exactly (same readings, same
``Nats-Msg-Id``): if the hub stores a copy it was still receiving when the agent died (after
the new run's reconciliation looked), JetStream's duplicate window drops the second one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping

from hivebus.edge import outbox_counters as counters
from hivebus.edge.outbox_counters import REFUSED
from hivebus.edge.outbox_store import TABLES, Entry


def read_batch(conn: sqlite3.Connection, limit: int) -> list[Entry]:
    """The oldest ``limit`` events of both tables, in nodeseq order."""
    rows = conn.execute(
        "SELECT * FROM (SELECT nodeseq, subject, msg_id, body, size, t FROM readings "
        "ORDER BY nodeseq LIMIT :n) UNION ALL SELECT * FROM (SELECT nodeseq, subject, "
        "msg_id, body, size, t FROM lifecycle ORDER BY nodeseq LIMIT :n) ORDER BY 1 LIMIT :n",
        {"n": limit},
    ).fetchall()
    return [Entry(*row) for row in rows]


def delete_range(conn: sqlite3.Connection, lo: int, hi: int) -> None:
    """Delete the acknowledged events ``lo..hi`` and the bounds of messages among them."""
    for table in TABLES:
        conn.execute(f"DELETE FROM {table} WHERE nodeseq BETWEEN ? AND ?", (lo, hi))
    conn.execute("DELETE FROM inflight WHERE first BETWEEN ? AND ?", (lo, hi))


def delete_published(conn: sqlite3.Connection, pairs: Iterable[tuple[int, str]]) -> list[tuple[str, int]]:
    """Delete the events found in the hub's streams (``(nodeseq, event id)``); (table, size)
    of each that was still here."""
    gone: list[tuple[str, int]] = []
    pairs = list(pairs)
    for table in TABLES:
        for seq, msg_id in pairs:
            row = conn.execute(
                f"SELECT size FROM {table} WHERE nodeseq = ? AND msg_id = ?", (seq, msg_id)
            ).fetchone()
            if row is not None:
                conn.execute(f"DELETE FROM {table} WHERE nodeseq = ?", (seq,))
                gone.append((table, row[0]))
    return gone


def park(conn: sqlite3.Connection, entry: Entry, reason: str) -> None:
    """Move ``entry`` to table ``parked`` with ``reason``, counted as ``refused_by_hub``."""
    conn.execute(
        f"INSERT OR REPLACE INTO parked SELECT nodeseq, t, subject, msg_id, body, ? FROM {entry.table} "
        "WHERE nodeseq = ?",
        (reason, entry.nodeseq),
    )
    conn.execute(f"DELETE FROM {entry.table} WHERE nodeseq = ?", (entry.nodeseq,))
    counters.add(conn, {REFUSED: 1})


def save_bounds(conn: sqlite3.Connection, bounds: Mapping[int, int]) -> None:
    """The bounds of the packed messages about to be sent replace those stored."""
    conn.execute("DELETE FROM inflight")
    conn.executemany("INSERT INTO inflight VALUES (?, ?)", sorted(bounds.items()))
