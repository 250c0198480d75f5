"""The object store's decisions: who may do what to a bucket, as a pure fold and decider.

``StorageState`` folds the ``storage.*`` facts (buckets, their owners, ACLs and objects).
``decide(state, command)`` answers a user's storage command with the facts to append, or a
``Refusal`` (its ``kind`` says which: missing, forbidden, conflict, invalid) with every
reason; the caller appends the facts, or a ``storage.command.rejected`` built by
``rejection``. Reads are not commands: ``may(bucket, user, verb)`` answers them.

ACL semantics are S3's, as sage-storage-api uses them: the owner holds FULL_CONTROL; READ
lists and downloads objects, WRITE uploads and deletes them, READ_ACP shows the ACL,
WRITE_ACP changes it, FULL_CONTROL is all of them. ``AllUsers`` (anyone, with or without a
token) may hold READ only, as on Sage; ``AuthenticatedUsers`` is every token holder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

from hivebus.schemas.envelope import Event, Payload
from hivebus.schemas.storage import (
    ALL_USERS,
    AUTHENTICATED_USERS,
    AclChanged,
    AclVerb,
    BucketCreated,
    BucketDeleted,
    BucketType,
    Grant,
    ObjectDeleted,
    ObjectPut,
    StorageCommandRejected,
)

VERBS: Final[tuple[AclVerb, ...]] = ("FULL_CONTROL", "WRITE", "READ", "WRITE_ACP", "READ_ACP")
MAX_KEY: Final = 1024


@dataclass
class StoredObject:
    key: str
    size: int
    digest: str
    content_type: str | None
    by: str
    time: datetime


@dataclass
class Bucket:
    bucket_id: str
    name: str
    owner: str
    type: str
    created: datetime
    updated: datetime
    acl: list[Grant] = field(default_factory=list)
    objects: dict[str, StoredObject] = field(default_factory=dict)
    last_seq: int = 0

    @property
    def public(self) -> bool:
        return any(g.grantee == ALL_USERS for g in self.acl)


@dataclass
class StorageState:
    buckets: dict[str, Bucket] = field(default_factory=dict)


def evolve(state: StorageState, event: Event, seq: int = 0) -> None:
    """Fold one ``storage.*`` fact (others are ignored)."""
    data = event.data
    if isinstance(data, BucketCreated):
        state.buckets[data.bucket_id] = Bucket(
            data.bucket_id, data.name, data.owner, data.type, event.time, event.time, list(data.acl), last_seq=seq,
        )
        return
    bucket = state.buckets.get(getattr(data, "bucket_id", ""))
    if bucket is None:
        return
    if isinstance(data, ObjectPut):
        bucket.objects[data.key] = StoredObject(data.key, data.size, data.digest, data.content_type, data.by, event.time)
    elif isinstance(data, ObjectDeleted):
        bucket.objects.pop(data.key, None)
    elif isinstance(data, AclChanged):
        bucket.acl = list(data.acl)
    elif isinstance(data, BucketDeleted):
        del state.buckets[data.bucket_id]
        return
    else:
        return
    bucket.updated = event.time
    bucket.last_seq = max(bucket.last_seq, seq)


# --- who may ------------------------------------------------------------------------------


def verbs_of(bucket: Bucket, user: str | None) -> set[str]:
    """The verbs ``user`` (None: anonymous) holds on ``bucket``."""
    if user is not None and user == bucket.owner:
        return set(VERBS)
    held: set[str] = set()
    for grant in bucket.acl:
        if (
            grant.grantee == ALL_USERS
            or (user is not None and grant.grantee == AUTHENTICATED_USERS)
            or (user is not None and grant.grantee_type == "user" and grant.grantee == user)
        ):
            held.add(grant.permission)
    return set(VERBS) if "FULL_CONTROL" in held else held


def may(bucket: Bucket, user: str | None, verb: AclVerb) -> bool:
    return verb in verbs_of(bucket, user)


def visible(state: StorageState, user: str | None) -> list[Bucket]:
    """Buckets ``user`` owns, was granted anything on, or that are public."""
    return [b for b in state.buckets.values() if verbs_of(b, user)]


# --- commands -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateBucket:
    user: str
    bucket_id: str
    name: str
    type: BucketType
    public: bool = False


@dataclass(frozen=True)
class PutObject:
    user: str
    bucket_id: str
    key: str
    size: int
    digest: str
    content_type: str | None = None


@dataclass(frozen=True)
class DeleteObject:
    user: str
    bucket_id: str
    key: str


@dataclass(frozen=True)
class DeleteBucket:
    user: str
    bucket_id: str


@dataclass(frozen=True)
class GrantAccess:
    user: str
    bucket_id: str
    grant: Grant


@dataclass(frozen=True)
class RevokeAccess:
    user: str
    bucket_id: str
    grantee_type: Literal["user", "group"]
    grantee: str
    permission: AclVerb | None = None  # None: every permission of the grantee


Command = CreateBucket | PutObject | DeleteObject | DeleteBucket | GrantAccess | RevokeAccess
COMMAND_NAMES: Final[dict[type, str]] = {
    CreateBucket: "storage.create_bucket",
    PutObject: "storage.put",
    DeleteObject: "storage.delete_object",
    DeleteBucket: "storage.delete_bucket",
    GrantAccess: "storage.grant",
    RevokeAccess: "storage.revoke",
}


@dataclass(frozen=True)
class Refusal:
    kind: Literal["missing", "forbidden", "conflict", "invalid"]
    reasons: list[str]


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot name an object (None: it can). No traversal, no empty parts."""
    if not key:
        return "the object key is empty"
    if len(key) > MAX_KEY:
        return f"the object key has {len(key)} characters; at most {MAX_KEY}"
    if any(ord(c) < 32 or ord(c) == 127 for c in key) or "\\" in key:
        return "the object key contains control characters or a backslash"
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return f"the object key {key!r} has an empty, '.' or '..' part"
    return None


def decide(state: StorageState, command: Command) -> list[Payload] | Refusal:
    """The facts ``command`` causes on ``state``, or why it is refused."""
    if isinstance(command, CreateBucket):
        if command.bucket_id in state.buckets:
            return Refusal("conflict", [f"bucket {command.bucket_id} exists"])
        acl = [Grant(grantee_type="group", grantee=ALL_USERS, permission="READ")] if command.public else []
        return [BucketCreated(bucket_id=command.bucket_id, name=command.name, owner=command.user, type=command.type, acl=acl)]
    bucket = state.buckets.get(command.bucket_id)
    if bucket is None:
        return Refusal("missing", [f"no bucket {command.bucket_id}"])
    if isinstance(command, PutObject | DeleteObject):
        problems = [p for p in [key_problem(command.key)] if p]
        if problems:
            return Refusal("invalid", problems)
        if not may(bucket, command.user, "WRITE"):
            return Refusal("forbidden", [f"{command.user} has no WRITE on bucket {bucket.bucket_id}"])
        if isinstance(command, DeleteObject):
            if command.key not in bucket.objects:
                return Refusal("missing", [f"no object {command.key!r} in bucket {bucket.bucket_id}"])
            return [ObjectDeleted(bucket_id=bucket.bucket_id, key=command.key, by=command.user)]
        return [ObjectPut(bucket_id=bucket.bucket_id, key=command.key, size=command.size, digest=command.digest,
                          content_type=command.content_type, by=command.user)]
    if isinstance(command, DeleteBucket):
        if not may(bucket, command.user, "FULL_CONTROL"):
            return Refusal("forbidden", [f"only the owner or FULL_CONTROL may delete bucket {bucket.bucket_id}"])
        return [BucketDeleted(bucket_id=bucket.bucket_id, by=command.user)]
    if not may(bucket, command.user, "WRITE_ACP"):
        return Refusal("forbidden", [f"{command.user} has no WRITE_ACP on bucket {bucket.bucket_id}"])
    if isinstance(command, GrantAccess):
        grant = command.grant
        if grant.grantee == ALL_USERS and grant.permission != "READ":
            return Refusal("invalid", [f"{ALL_USERS} may hold READ only (a public bucket is readable, never writable)"])
        if grant.grantee_type == "user" and grant.grantee == bucket.owner:
            return Refusal("invalid", [f"{grant.grantee} owns the bucket and holds FULL_CONTROL already"])
        if grant in bucket.acl:
            return []
        return [AclChanged(bucket_id=bucket.bucket_id, acl=[*bucket.acl, grant], by=command.user)]
    kept = [
        g for g in bucket.acl
        if not (g.grantee_type == command.grantee_type and g.grantee == command.grantee
                and (command.permission is None or g.permission == command.permission))
    ]
    if len(kept) == len(bucket.acl):
        return []
    return [AclChanged(bucket_id=bucket.bucket_id, acl=kept, by=command.user)]


def rejection(command: Command, refusal: Refusal) -> StorageCommandRejected:
    return StorageCommandRejected(
        command=COMMAND_NAMES[type(command)], by=command.user, bucket_id=command.bucket_id, reasons=refusal.reasons,
    )


__all__ = [
    "VERBS", "Bucket", "Command", "CreateBucket", "DeleteBucket", "DeleteObject", "GrantAccess", "PutObject",
    "Refusal", "RevokeAccess", "StorageState", "StoredObject", "decide", "evolve", "key_problem", "may",
    "rejection", "verbs_of", "visible",
]
