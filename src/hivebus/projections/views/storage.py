"""The object store's views: ``buckets``, ``objects`` and ``bucket_permissions``.

Folded from the storage decider's facts (``storage.*``, source ``handler/storage``): a user's
event of the same type is not a fact. Each view's scope is a bucket, so ``storage.bucket.deleted``
removes the bucket's rows from all three in one replace. ``storage.acl.changed`` carries the
whole new ACL, so ``bucket_permissions`` is replaced, never merged. The bytes are in the
bucket's JetStream object store (``sage-<bucket id>``); these views say what the log says is there.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hivebus.projections.views.base import EVENTS, FoldView, Item, Row, Scope, Table, utc
from hivebus.schemas.commands import is_decided
from hivebus.schemas.storage import ALL_USERS

CREATED = "storage.bucket.created"
DELETED = "storage.bucket.deleted"
PUT = "storage.object.put"
REMOVED = "storage.object.deleted"
ACL = "storage.acl.changed"


def _public(acl: list[Any]) -> bool:
    return any(g.grantee == ALL_USERS and g.permission == "READ" for g in acl)


class _BucketFold(FoldView):
    stream = EVENTS
    scope_columns = ("bucket_id",)
    types: ClassVar[frozenset[str]]

    def scope(self, item: Item) -> Scope | None:
        event = item.event
        if event.type not in self.types or not is_decided(event):
            return None
        return (event.data.bucket_id,)


class BucketsView(_BucketFold):
    name = "buckets"
    version = 1
    public = ("buckets",)
    types = frozenset({CREATED, DELETED, ACL})
    table: ClassVar[Table] = Table(
        "buckets",
        """CREATE TABLE {name} (
            bucket_id VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            type VARCHAR NOT NULL,
            owner VARCHAR NOT NULL,
            public BOOLEAN NOT NULL,
            created_at TIMESTAMP NOT NULL,
            updated_at TIMESTAMP NOT NULL,
            seq BIGINT NOT NULL
        )""",
    )

    def evolve(self, rows: list[Row], item: Item) -> list[Row] | None:
        event, data = item.event, item.event.data
        when = utc(event.time)
        if event.type == CREATED:
            if rows:
                return None
            public = _public(data.acl)
            return [{"bucket_id": data.bucket_id, "name": data.name, "type": data.type, "owner": data.owner,
                     "public": public, "created_at": when, "updated_at": when,
                     "seq": item.seq}]
        if not rows:
            return None
        if event.type == DELETED:
            return []
        row = rows[0]
        row["public"] = _public(data.acl)
        row["updated_at"], row["seq"] = when, item.seq
        return [row]


class ObjectsView(_BucketFold):
    """One row per object in a bucket (``group by bucket_id`` gives a bucket's count and bytes)."""

    name = "objects"
    version = 1
    public = ("objects",)
    types = frozenset({DELETED, PUT, REMOVED})
    table: ClassVar[Table] = Table(
        "objects",
        """CREATE TABLE {name} (
            bucket_id VARCHAR NOT NULL,
            key VARCHAR NOT NULL,
            size BIGINT NOT NULL,
            digest VARCHAR NOT NULL,
            content_type VARCHAR,
            put_by VARCHAR NOT NULL,
            put_at TIMESTAMP NOT NULL,
            seq BIGINT NOT NULL
        )""",
    )

    def evolve(self, rows: list[Row], item: Item) -> list[Row] | None:
        event, data = item.event, item.event.data
        if event.type == DELETED:
            return [] if rows else None
        kept = [r for r in rows if r["key"] != data.key]
        if event.type == REMOVED:
            return kept if len(kept) != len(rows) else None
        kept.append({"bucket_id": data.bucket_id, "key": data.key, "size": data.size, "digest": data.digest,
                     "content_type": data.content_type, "put_by": data.by, "put_at": utc(event.time), "seq": item.seq})
        return kept


class BucketPermissionsView(_BucketFold):
    """The grants in force per bucket; the owner's implicit FULL_CONTROL is a row too (``owner``)."""

    name = "bucket_permissions"
    version = 1
    public = ("bucket_permissions",)
    types = frozenset({CREATED, DELETED, ACL})
    table: ClassVar[Table] = Table(
        "bucket_permissions",
        """CREATE TABLE {name} (
            bucket_id VARCHAR NOT NULL,
            grantee_type VARCHAR NOT NULL,
            grantee VARCHAR NOT NULL,
            permission VARCHAR NOT NULL,
            owner BOOLEAN NOT NULL,
            changed_by VARCHAR NOT NULL,
            changed_at TIMESTAMP NOT NULL,
            seq BIGINT NOT NULL
        )""",
    )

    def evolve(self, rows: list[Row], item: Item) -> list[Row] | None:
        event, data = item.event, item.event.data
        if event.type == DELETED:
            return [] if rows else None
        when = utc(event.time)
        if event.type == CREATED:
            if rows:
                return None
            owner = {"bucket_id": data.bucket_id, "grantee_type": "user", "grantee": data.owner,
                     "permission": "FULL_CONTROL", "owner": True, "changed_by": data.owner,
                     "changed_at": when, "seq": item.seq}
            return [owner, *(self._grant(data.bucket_id, g, data.owner, when, item.seq) for g in data.acl)]
        owners = [r for r in rows if r["owner"]]
        if not owners:
            return None  # a change to a bucket this view never saw created
        return [*owners, *(self._grant(data.bucket_id, g, data.by, when, item.seq) for g in data.acl)]

    @staticmethod
    def _grant(bucket_id: str, grant: Any, by: str, when: Any, seq: int) -> Row:
        return {"bucket_id": bucket_id, "grantee_type": grant.grantee_type, "grantee": grant.grantee,
                "permission": grant.permission, "owner": False, "changed_by": by, "changed_at": when, "seq": seq}
