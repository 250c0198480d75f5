"""``jobs``: one row per SES job, its state and targets.

Only what the scheduler decided shows: a job appears when it is scheduled (the
``ses.job.scheduled`` fact carries the submission), then follows the facts: ``Running``,
``Suspended``, ``Running`` again once resumed, ``Completed``, ``Removed``. A refused command (a
submission on an unapproved bundle, a suspend by someone else) changes nothing here: it is a
row of ``rejections``. ``bundles`` are the ECR bundles the job's plugins run.

Logs written before commands existed hold users' ``ses.job.submitted`` requests: such a job
shows as ``Submitted`` until the scheduler's answer (``causationid`` = the request's id)
runs it, or disappears when the answer is ``ses.job.rejected`` (or ``ses.command.rejected``).
Users' suspend/resume/remove requests of such logs are not facts: the scheduler decides them
again and appends what it decides. Job ids are unique: the first submission owns the row.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from hivebus.projections.views.base import EVENTS, FoldView, Item, Row, Scope, Table, utc
from hivebus.schemas.commands import is_decided

SUBMITTED = "ses.job.submitted"
SCHEDULED = "ses.job.scheduled"
REJECTED = "ses.job.rejected"
SUSPENDED = "ses.job.suspended"
RESUMED = "ses.job.resumed"
REMOVED = "ses.job.removed"
COMPLETED = "ses.job.completed"
COMMAND_REJECTED = "ses.command.rejected"
TYPES = frozenset(
    {SUBMITTED, SCHEDULED, REJECTED, SUSPENDED, RESUMED, REMOVED, COMPLETED, COMMAND_REJECTED}
)


class JobsView(FoldView):
    name = "jobs"
    version = 3
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
        if kind == SUBMITTED and (row["submission_id"] is not None or is_decided(event)):
            return None  # the id is taken: the scheduler rejects this submission
        if kind == SCHEDULED and row["submission_id"] is None and data.spec is not None:
            row["submission_id"] = event.causationid
            _submission_columns(row, data.user, data.spec, when)
        if kind in (SCHEDULED, REJECTED, COMMAND_REJECTED) and event.causationid != row["submission_id"]:
            return None  # an answer to another submission of this id, or to another command
        if kind in (REJECTED, COMMAND_REJECTED):
            return [] if rows and row["state"] == "Submitted" else None  # never happened
        if kind not in (SUBMITTED, SCHEDULED, COMPLETED) and not is_decided(event):
            return None  # a user's request of an old log, not a fact
        if kind == SUBMITTED:
            row["submission_id"] = event.id
            _submission_columns(row, data.user, data.spec, when)
        elif kind == SCHEDULED:
            row.update(
                state="Running",
                policy=data.policy,
                placed_nodes=sorted({p.node for p in data.placements}),
                scheduled_at=when,
            )
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


def _submission_columns(row: Row, user: str | None, spec: Any, when: Any) -> None:
    row.update(
        name=spec.name,
        user=user,
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
