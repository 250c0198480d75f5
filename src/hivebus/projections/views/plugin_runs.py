"""``plugin_runs``: one row per run of a plugin on a node, from its ``plugin.status`` events.

``state`` is the latest state (queued -> scheduled -> initializing -> running -> completed |
failed). A terminal state sticks: a late non-terminal status only fills in its timestamp.
Terminal statuses carry the exit code, the log tail and the measured cost.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hivebus.projections.views.base import EVENTS, FoldView, Item, Row, Scope, Table, bigint, utc

PLUGIN_STATUS = "plugin.status"
TERMINAL = frozenset({"completed", "failed"})
_STAMP = {"queued": "queued_at", "running": "started_at", "completed": "ended_at", "failed": "ended_at"}


class PluginRunsView(FoldView):
    name = "plugin_runs"
    version = 1
    stream = EVENTS
    public = ("plugin_runs",)
    scope_columns = ("run_id",)
    table: ClassVar[Table] = Table(
        "plugin_runs",
        """CREATE TABLE {name} (
            run_id VARCHAR NOT NULL,
            node VARCHAR NOT NULL,
            job_id VARCHAR NOT NULL,
            plugin VARCHAR NOT NULL,
            bundle_id VARCHAR NOT NULL,
            state VARCHAR NOT NULL,
            reason VARCHAR,
            exit_code BIGINT,
            log_tail VARCHAR[],
            cpu_seconds DOUBLE,
            max_rss_bytes BIGINT,
            wall_seconds DOUBLE,
            gpu_percent DOUBLE,
            arch VARCHAR,
            gpu VARCHAR,
            node_class VARCHAR,
            queued_at TIMESTAMP,
            started_at TIMESTAMP,
            ended_at TIMESTAMP,
            updated_at TIMESTAMP NOT NULL,
            transitions INTEGER NOT NULL,
            last_seq BIGINT NOT NULL
        )""",
    )

    def scope(self, item: Item) -> Scope | None:
        if item.event.type != PLUGIN_STATUS:
            return None
        return (item.event.data.run_id,)

    def evolve(self, rows: list[Row], item: Item) -> list[Row] | None:
        data = item.event.data
        when = utc(item.event.time)
        state = str(data.state)
        row = rows[0] if rows else _blank(data, when)
        stamp = _STAMP.get(state)
        if stamp and row[stamp] is None:
            row[stamp] = when
        if row["state"] not in TERMINAL:
            row.update(state=state, reason=data.reason or None)
            if data.exit_code is not None:
                row["exit_code"] = bigint(data.exit_code, "exit_code")
            if data.log_tail:
                row["log_tail"] = list(data.log_tail)
            if data.perf is not None:
                row.update(
                    cpu_seconds=data.perf.cpu_seconds,
                    max_rss_bytes=data.perf.max_rss_bytes,
                    wall_seconds=data.perf.wall_seconds,
                    gpu_percent=data.perf.gpu_percent,
                )
            if data.hardware is not None:
                row.update(arch=data.hardware.arch, gpu=data.hardware.gpu,
                           node_class=data.hardware.node_class)
        row["transitions"] += 1
        row["updated_at"] = when if row["updated_at"] is None else max(row["updated_at"], when)
        row["last_seq"] = item.seq
        return [row]


def _blank(data: Any, when: Any) -> Row:
    return {
        "run_id": data.run_id, "node": data.node, "job_id": data.job_id,
        "plugin": data.plugin, "bundle_id": data.bundle_id,
        "state": "inactive", "reason": None, "exit_code": None, "log_tail": None,
        "cpu_seconds": None, "max_rss_bytes": None, "wall_seconds": None, "gpu_percent": None,
        "arch": None, "gpu": None, "node_class": None, "queued_at": None, "started_at": None,
        "ended_at": None, "updated_at": None, "transitions": 0, "last_seq": 0,
    }  # fmt: skip
