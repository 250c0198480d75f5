"""``node_sensors``: every sensor of every node and whether it works (``ok``) or is ``lost``.

The set of sensors comes from the node's manifest (``node.registered``, or a
``node.config.updated`` that lists sensors); a sensor no longer listed is dropped, one still
listed keeps its status. ``node.sensor.lost`` / ``node.sensor.restored`` flip the status
(``lost_count`` counts the losses); a loss of a sensor the manifest never listed adds it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hivebus.projections.views.base import EVENTS, FoldView, Item, Row, Scope, Table, utc

REGISTERED = "node.registered"
CONFIG_UPDATED = "node.config.updated"
LOST = "node.sensor.lost"
RESTORED = "node.sensor.restored"
TYPES = frozenset({REGISTERED, CONFIG_UPDATED, LOST, RESTORED})


class NodeSensorsView(FoldView):
    name = "node_sensors"
    version = 1
    stream = EVENTS
    public = ("node_sensors",)
    scope_columns = ("node",)
    table: ClassVar[Table] = Table(
        "node_sensors",
        """CREATE TABLE {name} (
            node VARCHAR NOT NULL,
            sensor VARCHAR NOT NULL,
            kind VARCHAR,
            device VARCHAR,
            expects VARCHAR[],
            max_silence_seconds DOUBLE,
            status VARCHAR NOT NULL,
            reason VARCHAR,
            since TIMESTAMP,
            lost_count INTEGER NOT NULL,
            updated_at TIMESTAMP NOT NULL,
            last_seq BIGINT NOT NULL
        )""",
    )

    def scope(self, item: Item) -> Scope | None:
        event = item.event
        if event.type not in TYPES:
            return None
        if event.type == REGISTERED:
            return (event.data.manifest.node_id,)
        if event.type == CONFIG_UPDATED and event.data.sensors is None:
            return None
        return (event.data.node,)

    def evolve(self, rows: list[Row], item: Item) -> list[Row] | None:
        event = item.event
        data = event.data
        when = utc(event.time)
        by_name = {r["sensor"]: r for r in rows}
        if event.type in (REGISTERED, CONFIG_UPDATED):
            node = self.scope(item)[0]  # type: ignore[index]
            specs = data.manifest.sensors if event.type == REGISTERED else data.sensors
            out = []
            for spec in specs:
                listed = by_name.get(spec.name) or _blank(node, spec.name, when)
                listed.update(_spec(spec), updated_at=when, last_seq=item.seq)
                out.append(listed)
            return out
        row = by_name.get(data.sensor)
        if row is None:
            row = _blank(data.node, data.sensor, when)
            rows.append(row)
        if event.type == LOST:
            if row["status"] != "lost":
                row["lost_count"] += 1
            row.update(status="lost", reason=data.reason, since=when)
        else:
            row.update(status="ok", reason=data.reason or None, since=when)
        row.update(updated_at=when, last_seq=item.seq)
        return rows


def _spec(spec: Any) -> Row:
    return {
        "kind": spec.kind,
        "device": spec.device,
        "expects": list(spec.expects),
        "max_silence_seconds": spec.max_silence,
    }


def _blank(node: str, sensor: str, when: Any) -> Row:
    return {
        "node": node, "sensor": sensor, "kind": None, "device": None, "expects": None,
        "max_silence_seconds": None, "status": "ok", "reason": None, "since": when,
        "lost_count": 0, "updated_at": when, "last_seq": 0,
    }  # fmt: skip
