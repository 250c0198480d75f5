"""``bundle_permissions``: the grants in force on namespaces and bundles.

One row per (resource, grantee_type, grantee, permission); a revoke removes the row. The
owner's implicit FULL_CONTROL is not a row (see ``bundles.owner``). ``AllUsers`` READ makes a
bundle public. Only grants and revokes the ECR decided count (``source`` ``handler/...``): a
user's request of an old log is not a fact (the ECR decides it again), and a refused command
is a row of ``rejections``, not of this view.
"""

from __future__ import annotations

from typing import ClassVar

from hivebus.projections.views.base import EVENTS, FoldView, Item, Row, Scope, Table, utc
from hivebus.schemas.commands import is_decided

GRANTED = "ecr.permission.granted"
REVOKED = "ecr.permission.revoked"


class BundlePermissionsView(FoldView):
    name = "bundle_permissions"
    version = 2
    stream = EVENTS
    public = ("bundle_permissions",)
    scope_columns = ("resource",)
    table: ClassVar[Table] = Table(
        "bundle_permissions",
        """CREATE TABLE {name} (
            resource VARCHAR NOT NULL,
            resource_kind VARCHAR NOT NULL,
            grantee_type VARCHAR NOT NULL,
            grantee VARCHAR NOT NULL,
            permission VARCHAR NOT NULL,
            granted_by VARCHAR NOT NULL,
            granted_at TIMESTAMP NOT NULL,
            seq BIGINT NOT NULL
        )""",
    )

    def scope(self, item: Item) -> Scope | None:
        if item.event.type not in (GRANTED, REVOKED) or not is_decided(item.event):
            return None
        return (item.event.data.resource,)

    def evolve(self, rows: list[Row], item: Item) -> list[Row] | None:
        data = item.event.data
        key = (data.grantee_type, data.grantee, data.permission)
        kept = [r for r in rows if (r["grantee_type"], r["grantee"], r["permission"]) != key]
        if item.event.type == REVOKED:
            return kept if len(kept) != len(rows) else None
        if len(kept) != len(rows):
            return None  # already granted: the first grant's time and author stay
        kept.append(
            {
                "resource": data.resource,
                "resource_kind": data.resource_kind,
                "grantee_type": data.grantee_type,
                "grantee": data.grantee,
                "permission": data.permission,
                "granted_by": data.by,
                "granted_at": utc(item.event.time),
                "seq": item.seq,
            }
        )
        return kept
