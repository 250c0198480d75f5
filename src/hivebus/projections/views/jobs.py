"""``jobs``: one row per SES job, its state and targets.

States follow the scheduler (``Submitted``, ``Running`` once scheduled or resumed,
``Suspended``, ``Completed``, ``Removed``) plus ``Rejected`` for a submission the scheduler
refused (``reasons`` says why). ``bundles`` are the ECR bundles the job's plugins run.

Job ids are unique, as the scheduler keeps them: the first submission of an id owns the row,
and only the scheduler's answers to that submission (``causationid`` = its event id) change
it. A later submission reusing the id is rejected by the scheduler and leaves the job alone.
"""

from __future__ import annotations

import json
from typing import ClassVar

from hivebus.projections.views.base import EVENTS, FoldView, Item, Row, Scope, Table, utc

SUBMITTED = "ses.job.submitted"
SCHEDULED = "ses.job.scheduled"
REJECTED = "ses.job.rejected"
SUSPENDED = "ses.job.suspended"
RESUMED = "ses.job.resumed"
REMOVED = "ses.job.removed"
COMPLETED = "ses.job.completed"
TYPES = frozenset({SUBMITTED, SCHEDULED, REJECTED, SUSPENDED, RESUMED, REMOVED, COMPLETED})


class JobsView(FoldView):
    name = "jobs"
    version = 2
    stream = EVENTS
    public = ("jobs",)
    scope_columns = ("job_id",)
    table: ClassVar[Table] = Table(
        "jobs",
        """CREATE TABLE {name} (
            job_id VARCHAR NOT NULL,
            name VARCHAR,
            user VARCHAR,
            state VARCHAR NOT NULL,
            nodes VARCHAR[],
            node_tags VARCHAR[],
            plugins VARCHAR[],
            bundles VARCHAR[],
            science_rules VARCHAR[],
            success_criteria VARCHAR[],
            spec JSON,
            policy VARCHAR,
            placed_nodes VARCHAR[],
            reasons VARCHAR[],
            criterion VARCHAR,
            submitted_at TIMESTAMP,
            scheduled_at TIMESTAMP,
            suspended_at TIMESTAMP,
            completed_at TIMESTAMP,
            removed_at TIMESTAMP,
            updated_at TIMESTAMP NOT NULL,
            last_seq BIGINT NOT NULL,
            submission_id VARCHAR
        )""",
    )

    def scope(self, item: Item) -> Scope | None:
        if item.event.type not in TYPES:
            return None
        return (item.event.data.job_id,)

    def evolve(self, rows: list[Row], item: Item) -> list[Row] | None:
        event = item.event
        data = event.data
        when = utc(event.time)
        row = rows[0] if rows else _blank(data.job_id)
        kind = event.type
        if kind == SUBMITTED and row["submission_id"] is not None:
            return None  # the id is taken: the scheduler rejects this submission
        if kind in (SCHEDULED, REJECTED) and event.causationid != row["submission_id"]:
            return None  # an answer to another submission of this id
        if kind == SUBMITTED:
            spec = data.spec
            row["submission_id"] = event.id
            row.update(
                name=spec.name,
                user=data.user,
                state="Submitted",
                nodes=list(spec.nodes),
                node_tags=list(spec.node_tags),
                plugins=[p.name for p in spec.plugins],
                bundles=[p.plugin_spec.bundle_id for p in spec.plugins],
                science_rules=list(spec.science_rules),
                success_criteria=list(spec.success_criteria),
                spec=json.dumps(spec.model_dump(mode="json"), sort_keys=True),
                submitted_at=when,
                reasons=None,
            )
        elif kind == SCHEDULED:
            row.update(
                state="Running",
                policy=data.policy,
                placed_nodes=sorted({p.node for p in data.placements}),
                scheduled_at=when,
            )
        elif kind == REJECTED:
            row.update(state="Rejected", reasons=list(data.reasons))
        elif kind == SUSPENDED:
            row.update(state="Suspended", suspended_at=when, reasons=_reason(data.reason))
        elif kind == RESUMED:
            row.update(state="Running", suspended_at=None)
        elif kind == REMOVED:
            row.update(state="Removed", removed_at=when, reasons=_reason(data.reason))
        elif kind == COMPLETED:
            row.update(state="Completed", completed_at=when, criterion=data.criterion or None)
        row["updated_at"] = when
        row["last_seq"] = item.seq
        return [row]


def _reason(text: str) -> list[str] | None:
    return [text] if text else None


def _blank(job_id: str) -> Row:
    return {
        "job_id": job_id, "name": None, "user": None, "state": "Created", "nodes": None,
        "node_tags": None, "plugins": None, "bundles": None, "science_rules": None,
        "success_criteria": None, "spec": None, "policy": None, "placed_nodes": None,
        "reasons": None, "criterion": None, "submitted_at": None, "scheduled_at": None,
        "suspended_at": None, "completed_at": None, "removed_at": None, "updated_at": None,
        "last_seq": 0, "submission_id": None,
    }  # fmt: skip
