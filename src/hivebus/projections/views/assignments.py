"""``assignments``: which plugin of which job runs on which node, and how it is going.

One row per job x node x plugin. ``state``: ``placed`` (the scheduler chose the node),
``assigned`` (the goal was sent to the node), ``accepted`` / ``refused`` (the node stored and
applied the goal, or refused it with ``reason``), ``removed`` (the goal was withdrawn).
``plugin_state`` is the plugin's latest ``plugin.status`` on that node (queued ... completed
| failed) with its ``run_id``.
"""

from __future__ import annotations

from typing import ClassVar

from hivebus.projections.views.base import EVENTS, FoldView, Item, Row, Scope, Table, utc

SCHEDULED = "ses.job.scheduled"
GOAL_ASSIGNED = "ses.goal.assigned"
GOAL_REMOVED = "ses.goal.removed"
TOEDGE_APPLIED = "node.toedge.applied"
PLUGIN_STATUS = "plugin.status"
TYPES = frozenset({SCHEDULED, GOAL_ASSIGNED, GOAL_REMOVED, TOEDGE_APPLIED, PLUGIN_STATUS})


class AssignmentsView(FoldView):
    name = "assignments"
    version = 1
    stream = EVENTS
    public = ("assignments",)
    scope_columns = ("job_id",)
    table: ClassVar[Table] = Table(
        "assignments",
        """CREATE TABLE {name} (
            job_id VARCHAR NOT NULL,
            node VARCHAR NOT NULL,
            plugin VARCHAR NOT NULL,
            bundle_id VARCHAR,
            state VARCHAR NOT NULL,
            reason VARCHAR,
            score DOUBLE,
            plugin_state VARCHAR,
            run_id VARCHAR,
            placed_at TIMESTAMP,
            assigned_at TIMESTAMP,
            accepted_at TIMESTAMP,
            removed_at TIMESTAMP,
            updated_at TIMESTAMP NOT NULL,
            last_seq BIGINT NOT NULL
        )""",
    )

    def scope(self, item: Item) -> Scope | None:
        event = item.event
        if event.type not in TYPES:
            return None
        if event.type == TOEDGE_APPLIED:
            job_id = getattr(event.data, "job_id", None)
            applied = getattr(event.data, "applied_type", "")
            return (job_id,) if job_id and applied.startswith("ses.goal.") else None
        return (event.data.job_id,)

    def evolve(self, rows: list[Row], item: Item) -> list[Row] | None:
        event = item.event
        data = event.data
        when = utc(event.time)
        by_key = {(r["node"], r["plugin"]): r for r in rows}

        def row(node: str, plugin: str) -> Row:
            if (node, plugin) not in by_key:
                by_key[(node, plugin)] = _blank(data.job_id, node, plugin)
            return by_key[(node, plugin)]

        changed: list[Row] = []
        if event.type == SCHEDULED:
            for placement in data.placements:
                r = row(placement.node, placement.plugin)
                r.update(bundle_id=placement.bundle_id, score=placement.score, placed_at=when)
                if r["state"] in ("new", "removed"):
                    r.update(state="placed", reason=None, removed_at=None)
                changed.append(r)
        elif event.type == GOAL_ASSIGNED:
            for plugin in data.plugins:
                r = row(data.node, plugin.name)
                r.update(bundle_id=plugin.bundle_id, state="assigned", reason=None,
                         assigned_at=when, removed_at=None)
                changed.append(r)
        elif event.type == GOAL_REMOVED:
            for (node, _), r in by_key.items():
                if node == data.node and r["state"] != "removed":
                    r.update(state="removed", reason=data.reason or None, removed_at=when)
                    changed.append(r)
        elif event.type == TOEDGE_APPLIED:
            refused = data.outcome == "refused"
            if data.applied_type == GOAL_ASSIGNED or refused:
                for (node, _), r in by_key.items():
                    if node == data.node and r["state"] in ("assigned", "accepted", "refused"):
                        r.update(state="refused" if refused else "accepted",
                                 reason=data.reason or None, accepted_at=when)
                        changed.append(r)
        elif event.type == PLUGIN_STATUS:
            r = row(data.node, data.plugin)
            if r["state"] == "new":
                r["state"] = "assigned"  # a status from a node we did not see the goal for
            r.update(bundle_id=r["bundle_id"] or data.bundle_id, plugin_state=str(data.state),
                     run_id=data.run_id)
            changed.append(r)
        if not changed:
            return None
        for r in changed:
            r["updated_at"] = when
            r["last_seq"] = item.seq
        return list(by_key.values())


def _blank(job_id: str, node: str, plugin: str) -> Row:
    return {
        "job_id": job_id, "node": node, "plugin": plugin, "bundle_id": None, "state": "new",
        "reason": None, "score": None, "plugin_state": None, "run_id": None,
        "placed_at": None, "assigned_at": None, "accepted_at": None, "removed_at": None,
        "updated_at": None, "last_seq": 0,
    }  # fmt: skip
