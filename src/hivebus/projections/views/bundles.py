"""``bundles``: one row per ECR bundle ``namespace/name:version`` and where it stands.

Only what the ECR decided shows: a bundle appears when it is registered (the fact carries the
app), then ``state`` follows the facts: registered, approved, frozen, deleted (the ECR emits
``ecr.bundle.frozen`` for an app whose spec says frozen; the view does not guess it from the
push). ``approved`` and ``frozen`` are kept as flags too, since a frozen bundle can be approved
and the other way round. A new registration of the same version (a re-push) replaces the
metadata and clears the approval. Refused commands change nothing here: they are rows of
``rejections``. ``public`` is true when the group ``AllUsers`` may READ it (a grant on the
bundle or on its namespace, from ``bundle_permissions``), so ``bundles`` is a SQL view over
``projector.bundles``.

Logs written before commands existed hold users' ``ecr.bundle.pushed`` requests, answered by
a registration without the app (``causationid``) or ``ecr.bundle.rejected``: the view keeps a
push aside (``pending_push``, in a row of state ``pending`` that ``bundles`` does not show) until
its answer comes, and forgets it when it was rejected. Users' approvals, freezes and deletions
of such logs are requests, not facts: the ECR decides them again and appends what it decides.
``reasons`` is always NULL now (it showed a refused push; see ``rejections``).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from hivebus.projections.views.base import EVENTS, FoldView, Item, Row, Scope, Table, utc
from hivebus.schemas.commands import is_decided
from hivebus.schemas.ecr import BundlePushed, parse_bundle_id

PUSHED = "ecr.bundle.pushed"
REGISTERED = "ecr.bundle.registered"
REJECTED = "ecr.bundle.rejected"
APPROVED = "ecr.bundle.approved"
FROZEN = "ecr.bundle.frozen"
DELETED = "ecr.bundle.deleted"
TYPES = frozenset({PUSHED, REGISTERED, REJECTED, APPROVED, FROZEN, DELETED})


class BundlesView(FoldView):
    name = "bundles"
    version = 2
    stream = EVENTS
    public = ("bundles",)
    scope_columns = ("bundle_id",)
    table: ClassVar[Table] = Table(
        "projector.bundles",
        """CREATE TABLE {name} (
            bundle_id VARCHAR NOT NULL,
            namespace VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            version VARCHAR NOT NULL,
            state VARCHAR NOT NULL,
            owner VARCHAR,
            pusher VARCHAR,
            description VARCHAR,
            keywords VARCHAR[],
            authors VARCHAR[],
            license VARCHAR,
            homepage VARCHAR,
            source_url VARCHAR,
            source_branch VARCHAR,
            source_tag VARCHAR,
            git_commit VARCHAR,
            architectures VARCHAR[],
            inputs JSON,
            resources_cpu DOUBLE,
            resources_memory BIGINT,
            resources_gpu BIGINT,
            metadata JSON,
            artifacts JSON,
            provenance JSON,
            approved BOOLEAN NOT NULL,
            approved_by VARCHAR,
            frozen BOOLEAN NOT NULL,
            reasons VARCHAR[],
            pushed_at TIMESTAMP,
            registered_at TIMESTAMP,
            approved_at TIMESTAMP,
            frozen_at TIMESTAMP,
            deleted_at TIMESTAMP,
            updated_at TIMESTAMP NOT NULL,
            last_seq BIGINT NOT NULL,
            pending_id VARCHAR,
            pending_push JSON
        )""",
    )
    sql_views = (
        """CREATE OR REPLACE VIEW bundles AS
        SELECT b.*,
               EXISTS (
                   SELECT 1 FROM bundle_permissions p
                   WHERE p.grantee_type = 'group' AND p.grantee = 'AllUsers'
                     AND p.permission IN ('READ', 'FULL_CONTROL')
                     AND (p.resource = b.bundle_id OR p.resource = b.namespace)
               ) AS public
        FROM projector.bundles b
        WHERE b.state <> 'pending'""",
    )

    def scope(self, item: Item) -> Scope | None:
        event = item.event
        if event.type not in TYPES:
            return None
        data = event.data
        return (data.bundle_id if event.type != PUSHED else data.app.bundle_id,)

    def evolve(self, rows: list[Row], item: Item) -> list[Row] | None:
        event = item.event
        data = event.data
        when = utc(event.time)
        row = rows[0] if rows else _blank(self.scope(item)[0])  # type: ignore[index]
        if event.type == PUSHED:  # a request of an old log: kept aside until answered
            if is_decided(event):
                return None
            row.update(pending_id=event.id, pending_push=data.model_dump_json())
            if not rows:
                row.update(state="pending", pusher=data.pusher, pushed_at=when)
        elif event.type == REGISTERED:
            if data.app is not None:
                pushed = BundlePushed(app=data.app, pusher=data.pusher or data.owner,
                                      artifacts=data.artifacts, provenance=data.provenance)
            elif row["pending_id"] is not None and row["pending_id"] == event.causationid:
                pushed = BundlePushed.model_validate_json(row["pending_push"])
            else:
                pushed = None
            if pushed is not None:
                row.update(_spec_columns(pushed))
                row.update(pusher=pushed.pusher, pushed_at=when)
            row.update(state="registered", owner=data.owner, registered_at=when, reasons=None,
                       approved=False, approved_by=None, approved_at=None, deleted_at=None,
                       pending_id=None, pending_push=None)
        elif event.type == REJECTED:  # an old log's answer to a push: the push never happened
            if row["pending_id"] is None or row["pending_id"] != event.causationid:
                return None
            if row["state"] == "pending":
                return []
            row.update(pending_id=None, pending_push=None)
            return [row]
        elif not is_decided(event):
            return None  # a user's request of an old log, not a fact
        elif event.type == APPROVED:
            row.update(state="approved", approved=True, approved_by=data.by, approved_at=when)
        elif event.type == FROZEN:
            row.update(state="frozen", frozen=True, frozen_at=when)
        elif event.type == DELETED:
            row.update(state="deleted", deleted_at=when)
        row["updated_at"] = when
        row["last_seq"] = item.seq
        return [row]


def _blank(bundle_id: str) -> Row:
    namespace, name, version = parse_bundle_id(bundle_id)
    return {
        "bundle_id": bundle_id, "namespace": namespace, "name": name, "version": version,
        "state": "unknown", "owner": None, "pusher": None, "description": None,
        "keywords": None, "authors": None, "license": None, "homepage": None,
        "source_url": None, "source_branch": None, "source_tag": None, "git_commit": None,
        "architectures": None, "inputs": None, "resources_cpu": None, "resources_memory": None,
        "resources_gpu": None, "metadata": None, "artifacts": None, "provenance": None,
        "approved": False, "approved_by": None, "frozen": False, "reasons": None,
        "pushed_at": None, "registered_at": None, "approved_at": None, "frozen_at": None,
        "deleted_at": None, "updated_at": None, "last_seq": 0, "pending_id": None,
        "pending_push": None,
    }  # fmt: skip


def _spec_columns(pushed: Any) -> Row:
    app = pushed.app
    source = app.source
    return {
        "description": app.description,
        "keywords": list(app.keywords),
        "authors": list(app.authors),
        "license": app.license,
        "homepage": app.homepage,
        "source_url": source.url,
        "source_branch": source.branch,
        "source_tag": source.tag,
        "git_commit": source.git_commit,
        "architectures": list(source.architectures),
        "inputs": json.dumps([i.model_dump(mode="json") for i in app.inputs]),
        "resources_cpu": app.resources.cpu,
        "resources_memory": app.resources.memory,
        "resources_gpu": app.resources.gpu,
        "metadata": json.dumps(app.metadata, sort_keys=True),
        "artifacts": json.dumps([a.model_dump(mode="json") for a in pushed.artifacts]),
        "provenance": pushed.provenance.model_dump_json() if pushed.provenance else None,
    }
