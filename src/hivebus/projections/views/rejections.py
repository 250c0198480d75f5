"""``rejections``: users' commands the ECR or the scheduler refused, with every reason.

One row per refused command (keyed by its id, ``command_id``; the facts it caused carry it as
``causationid``): ``ecr.command.rejected`` and ``ses.command.rejected``, the object store's ``storage.command.rejected`` (``target``: the
bucket; its ``data`` is NULL), and from logs written
before commands existed the answers that refused a request, ``ecr.bundle.rejected`` (a push)
and ``ses.job.rejected`` (a submission; who asked is not in it, ``requested_by`` is NULL). ``target`` is
the bundle, namespace or job the command was about. Audit only: no state view changes with a
rejection.
"""

from __future__ import annotations

import json
from typing import ClassVar

from hivebus.projections.views.base import EVENTS, FoldView, Item, Row, Scope, Table, utc

ECR_REJECTED = "ecr.command.rejected"
SES_REJECTED = "ses.command.rejected"
PUSH_REJECTED = "ecr.bundle.rejected"
SUBMIT_REJECTED = "ses.job.rejected"
STORAGE_REJECTED = "storage.command.rejected"
TYPES = frozenset({ECR_REJECTED, SES_REJECTED, PUSH_REJECTED, SUBMIT_REJECTED, STORAGE_REJECTED})


class RejectionsView(FoldView):
    name = "rejections"
    version = 2
    stream = EVENTS
    public = ("rejections",)
    scope_columns = ("command_id",)
    table: ClassVar[Table] = Table(
        "rejections",
        """CREATE TABLE {name} (
            command_id VARCHAR NOT NULL,
            command VARCHAR NOT NULL,
            decider VARCHAR NOT NULL,
            requested_by VARCHAR,
            target VARCHAR NOT NULL,
            reasons VARCHAR[] NOT NULL,
            data JSON,
            time TIMESTAMP NOT NULL,
            event_id VARCHAR NOT NULL,
            seq BIGINT NOT NULL
        )""",
    )

    def scope(self, item: Item) -> Scope | None:
        event = item.event
        if event.type not in TYPES:
            return None
        return (event.causationid or event.id,)

    def evolve(self, rows: list[Row], item: Item) -> list[Row] | None:
        if rows:
            return None  # one row per command: the first rejection of it
        event = item.event
        data = event.data
        kind = event.type
        if kind in (ECR_REJECTED, SES_REJECTED):
            command, by, payload = data.command, data.by, json.dumps(data.data, sort_keys=True)
            target = data.target if kind == ECR_REJECTED else data.job_id
        elif kind == STORAGE_REJECTED:
            command, by, payload, target = data.command, data.by, None, data.bucket_id
        elif kind == PUSH_REJECTED:
            command, by, payload, target = "ecr.push", data.pusher, None, data.bundle_id
        else:
            command, by, payload, target = "ses.submit", None, None, data.job_id
        return [
            {
                "command_id": event.causationid or event.id,
                "command": command,
                "decider": command.split(".", 1)[0],
                "requested_by": by,
                "target": target,
                "reasons": list(data.reasons),
                "data": payload,
                "time": utc(event.time),
                "event_id": event.id,
                "seq": item.seq,
            }
        ]
