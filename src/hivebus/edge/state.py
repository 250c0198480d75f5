"""The node's durable state: goals, applied to-edge messages, config, registration, sensors.

It lives in ``node.db`` next to the outbox, so a state change and the event that reports it
commit in one transaction (``Outbox.append_many(events, state=...)``): after a crash either
both happened or neither did, and a to-edge message redelivered after a lost ack is
recognised by its id and not applied twice.

Reads happen once, at start (``load``); every change is a ``StateWrite`` built here.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Final

from hivebus.edge.outbox import StateWrite
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS goals (job_id TEXT PRIMARY KEY, event BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS toedge_applied (event_id TEXT PRIMARY KEY, type TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS node_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
CONFIG: Final = "config"
REGISTERED: Final = "registered_digest"
LOST_SENSORS: Final = "lost_sensors"


@dataclass
class NodeState:
    """What ``load`` found: goal events by job id, node-local settings and markers."""

    goals: dict[str, Event] = field(default_factory=dict)
    config: dict[str, object] = field(default_factory=dict)
    registered_digest: str | None = None
    lost_sensors: dict[str, str] = field(default_factory=dict)
    applied: set[str] = field(default_factory=set)


def load(conn: sqlite3.Connection) -> NodeState:
    """Create the tables if needed and read everything (runs on the database thread)."""
    for ddl in _SCHEMA:
        conn.execute(ddl)
    state = NodeState()
    for job_id, body in conn.execute("SELECT job_id, event FROM goals"):
        state.goals[job_id] = codec.decode(body)
    values = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM node_state")}
    state.config = dict(values.get(CONFIG) or {})
    state.registered_digest = values.get(REGISTERED)
    state.lost_sensors = dict(values.get(LOST_SENSORS) or {})
    state.applied = {row[0] for row in conn.execute("SELECT event_id FROM toedge_applied")}
    return state


def put_goal(event: Event) -> StateWrite:
    body = codec.encode(event)

    def write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT OR REPLACE INTO goals VALUES (?, ?)", (event.data.job_id, body))

    return write


def delete_goal(job_id: str) -> StateWrite:
    def write(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM goals WHERE job_id = ?", (job_id,))

    return write


def put_value(key: str, value: object) -> StateWrite:
    text = json.dumps(value, sort_keys=True)

    def write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT OR REPLACE INTO node_state VALUES (?, ?)", (key, text))

    return write


def mark_applied(event: Event) -> StateWrite:
    def write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT OR IGNORE INTO toedge_applied VALUES (?, ?)", (event.id, event.type))

    return write


def both(*writes: StateWrite) -> StateWrite:
    def write(conn: sqlite3.Connection) -> None:
        for w in writes:
            w(conn)

    return write
