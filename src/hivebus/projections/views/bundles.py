"""``bundles``: one row per ECR bundle ``namespace/name:version`` and where it stands.

``state`` is the latest lifecycle step: pushed -> registered | rejected, then approved,
frozen, deleted (the ECR emits ``ecr.bundle.frozen`` for an app whose spec says frozen; the
view does not guess it from the push). ``approved`` and ``frozen`` are kept as flags too, since a frozen bundle can
be approved and the other way round. A frozen bundle no longer changes with later pushes (the
ECR refuses them; ``reasons`` shows why the last one was refused). ``public`` is true when the
group ``AllUsers`` may READ it (a grant on the bundle or on its namespace, from
``bundle_permissions``), so ``bundles`` is a SQL view over ``projector.bundles``.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from hivebus.projections.views.base import EVENTS, FoldView, Item, Row, Scope, Table, utc
from hivebus.schemas.ecr import parse_bundle_id

PUSHED = "ecr.bundle.pushed"
REGISTERED = "ecr.bundle.registered"
REJECTED = "ecr.bundle.rejected"
APPROVED = "ecr.bundle.approved"
FROZEN = "ecr.bundle.frozen"
DELETED = "ecr.bundle.deleted"
TYPES = frozenset({PUSHED, REGISTERED, REJECTED, APPROVED, FROZEN, DELETED})


class BundlesView(FoldView):
    name = "bundles"
    version = 1
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
            last_seq BIGINT NOT NULL
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
        FROM projector.bundles b""",
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
        if event.type == PUSHED:
            if row["frozen"] and row["state"] != "deleted":
                return None  # a frozen version never changes; the ECR rejects the push
            row.update(_spec_columns(data))
            row.update(state="pushed", pusher=data.pusher, reasons=None, pushed_at=when,
                       approved=False, approved_by=None, approved_at=None, deleted_at=None)
        elif event.type == REGISTERED:
            row.update(state="registered", owner=data.owner, registered_at=when, reasons=None)
        elif event.type == REJECTED:
            row["reasons"] = list(data.reasons)
            if not row["frozen"] or row["state"] == "deleted":
                row["state"] = "rejected"
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
        "deleted_at": None, "updated_at": None, "last_seq": 0,
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
