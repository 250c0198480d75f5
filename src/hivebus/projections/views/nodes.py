"""``nodes``: every node, online or offline, with its hardware and latest resources.

``status`` is ``online`` or ``offline``: a registration, a heartbeat or ``node.online`` makes
a node online, ``node.offline`` (emitted by the hub when heartbeats stop) makes it offline.
Events are ordered by their own time, so a heartbeat a node buffered while disconnected and
sent after it went offline does not bring it back online; ``status_since`` says since when.
Resource columns come from the latest heartbeat (the offer placement reads); hardware,
executors, sensors and class from the manifest, also kept whole in ``attributes``;
``devices`` is the manifest's devices as JSON (``[{"name", "type", "path", "exclusive",
"attributes"}]``, ``[]`` for a node that lists none; docs/scheduling.md).

``refusal`` (``credential`` or ``events``), ``refusal_reason``, ``refused_since`` and
``refused_until`` are the hub's latest refusal of the node as its heartbeats reported it
(docs/security.md): ``refused_until`` is NULL while the node still reported it as lasting.
They stay after the node stops carrying it (once its end was reported), so the view keeps
the last refusal; a heartbeat of an older refusal, or an older report of this one, changes
nothing.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, ClassVar

from hivebus.projections.views.base import EVENTS, FoldView, Item, Row, Scope, Table, later, utc

REGISTERED = "node.registered"
HEARTBEAT = "node.heartbeat"
ONLINE = "node.online"
OFFLINE = "node.offline"
CONFIG_UPDATED = "node.config.updated"
TYPES = frozenset({REGISTERED, HEARTBEAT, ONLINE, OFFLINE, CONFIG_UPDATED})


class NodesView(FoldView):
    name = "nodes"
    version = 3  # 3: the hub's latest refusal of the node (refusal, refused_since...)
    stream = EVENTS
    public = ("nodes",)
    scope_columns = ("node_id",)
    table: ClassVar[Table] = Table(
        "nodes",
        """CREATE TABLE {name} (
            node_id VARCHAR NOT NULL,
            vsn VARCHAR,
            status VARCHAR NOT NULL,
            status_since TIMESTAMP,
            offline_reason VARCHAR,
            registered_at TIMESTAMP,
            last_heartbeat TIMESTAMP,
            last_seen TIMESTAMP,
            tags VARCHAR[],
            node_class VARCHAR,
            arch VARCHAR,
            cpus INTEGER,
            memory BIGINT,
            disk BIGINT,
            gpu VARCHAR,
            executors VARCHAR[],
            agent_version VARCHAR,
            mem_total BIGINT,
            mem_avail BIGINT,
            disk_total BIGINT,
            disk_avail BIGINT,
            load1 DOUBLE,
            has_gpu BOOLEAN,
            uptime_seconds DOUBLE,
            backlog_messages BIGINT,
            backlog_bytes BIGINT,
            backlog_oldest_age_seconds DOUBLE,
            dropped MAP(VARCHAR, BIGINT),
            attributes JSON,
            devices JSON,
            refusal VARCHAR,
            refusal_reason VARCHAR,
            refused_since TIMESTAMP,
            refused_until TIMESTAMP,
            updated_at TIMESTAMP NOT NULL,
            last_seq BIGINT NOT NULL
        )""",
    )

    def scope(self, item: Item) -> Scope | None:
        event = item.event
        if event.type not in TYPES:
            return None
        data = event.data
        return (data.manifest.node_id if event.type == REGISTERED else data.node,)

    def evolve(self, rows: list[Row], item: Item) -> list[Row] | None:
        event = item.event
        data = event.data
        when = utc(event.time)
        row = rows[0] if rows else _blank(self.scope(item)[0])  # type: ignore[index]
        kind = event.type
        if kind == REGISTERED:
            manifest = data.manifest
            hardware = manifest.hardware
            row.update(
                vsn=manifest.vsn,
                tags=list(manifest.tags),
                node_class=manifest.node_class,
                arch=hardware.arch,
                cpus=hardware.cpus,
                memory=hardware.memory,
                disk=hardware.disk,
                gpu=hardware.gpu,
                executors=list(manifest.executors),
                agent_version=data.agent_version,
                attributes=json.dumps(manifest.model_dump(mode="json"), sort_keys=True),
                devices=json.dumps([d.model_dump(mode="json") for d in manifest.devices]),
                registered_at=when,
            )
            _seen(row, when, online=True)
        elif kind == HEARTBEAT:
            if row["last_heartbeat"] is None or when >= row["last_heartbeat"]:
                _resources(row, data)
                row["last_heartbeat"] = when
            if data.refusal is not None:
                _refusal(row, data.refusal)
            _seen(row, when, online=True)
        elif kind == ONLINE:
            _seen(row, when, online=True)
        elif kind == OFFLINE:
            if row["status_since"] is None or when >= row["status_since"]:
                row.update(status="offline", status_since=when, offline_reason=data.reason or None)
            if data.last_seen is not None:
                row["last_seen"] = later(row["last_seen"], utc(data.last_seen))
        elif kind == CONFIG_UPDATED and data.tags is not None:
            row["tags"] = list(data.tags)
        row["updated_at"] = later(row["updated_at"], when)
        row["last_seq"] = item.seq
        return [row]


def _seen(row: Row, when: datetime, *, online: bool) -> None:
    """A sign of life at ``when``: online unless an offline verdict came later than it."""
    row["last_seen"] = later(row["last_seen"], when)
    if online and (row["status"] != "online") and (row["status_since"] is None or when >= row["status_since"]):
        row.update(status="online", status_since=when, offline_reason=None)


def _resources(row: Row, beat: Any) -> None:
    res = beat.resources
    backlog = beat.backlog
    row.update(
        mem_total=res.mem_total,
        mem_avail=res.mem_avail,
        disk_total=res.disk_total,
        disk_avail=res.disk_avail,
        load1=res.load1,
        has_gpu=res.gpu,
        uptime_seconds=beat.uptime_seconds,
        backlog_messages=backlog.messages,
        backlog_bytes=backlog.bytes,
        backlog_oldest_age_seconds=backlog.oldest_age_seconds,
        dropped=sorted(beat.dropped.items()),
    )
    if row["cpus"] is None:
        row["cpus"] = res.cpus


def _refusal(row: Row, refusal: Any) -> None:
    """The latest refusal: a later one replaces it; its end, once reported, is kept."""
    since, until = utc(refusal.since), utc(refusal.until)
    held = row["refused_since"]
    if held is not None and since < held:
        return  # an older refusal, reported late
    if held is not None and since == held and until is None and row["refused_until"] is not None:
        return  # an older report of this refusal, from before it ended
    row.update(refusal=refusal.kind, refusal_reason=refusal.reason, refused_since=since, refused_until=until)


def _blank(node_id: str) -> Row:
    row: Row = {
        "node_id": node_id, "vsn": None, "status": "offline", "status_since": None,
        "offline_reason": None, "registered_at": None, "last_heartbeat": None, "last_seen": None,
        "tags": None, "node_class": None, "arch": None, "cpus": None, "memory": None,
        "disk": None, "gpu": None, "executors": None, "agent_version": None, "mem_total": None,
        "mem_avail": None, "disk_total": None, "disk_avail": None, "load1": None,
        "has_gpu": None, "uptime_seconds": None, "backlog_messages": None, "backlog_bytes": None,
        "backlog_oldest_age_seconds": None, "dropped": None, "attributes": None,
        "devices": None, "refusal": None, "refusal_reason": None, "refused_since": None,
        "refused_until": None, "updated_at": None, "last_seq": 0,
    }  # fmt: skip
    return row
