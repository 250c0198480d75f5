"""Object-store events: typed buckets with an owner and S3-style ACL grants, objects put and
deleted, and the storage decider's rejections.

A bucket's owner always has FULL_CONTROL; ``acl`` lists the other grants. ``AllUsers`` (a
group) makes a bucket public, ``AuthenticatedUsers`` opens it to every token holder.
``storage.acl.changed`` carries the bucket's whole new ACL, so a view replaces rather than
merges. The bytes live in a JetStream object store per bucket; the log holds what happened.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, StringConstraints, model_validator

from hivebus.schemas.envelope import Payload
from hivebus.schemas.fields import STRICT, Digest, Key, NonNegInt, Part, UserName
from hivebus.schemas.registry import event

AclVerb = Literal["FULL_CONTROL", "WRITE", "READ", "WRITE_ACP", "READ_ACP"]
BucketType = Literal["training-data", "model", "profile", "upload"]
ALL_USERS = "AllUsers"
AUTHENTICATED_USERS = "AuthenticatedUsers"
GROUPS = (ALL_USERS, AUTHENTICATED_USERS)
UPLOAD_BUCKET_PREFIX = "upload-"
UPLOAD_SUBJECT = "hivebus.storage.upload"  # + ".<node>": a node's uploads, decided on the hub
STORAGE_SCHEME = "storage://"  # storage://<bucket>/<key>: an object named in ECR provenance


def object_ref(text: str) -> tuple[str, str] | None:
    """``(bucket, key)`` of a ``storage://<bucket>/<key>`` reference (``bucket``: the bucket's id
    or its name); None for anything else (a URL, a DOI, free text). ``ValueError`` when it starts
    with ``storage://`` and is not a well-formed reference."""
    if not text.startswith(STORAGE_SCHEME):
        return None
    bucket, _, key = text[len(STORAGE_SCHEME):].partition("/")
    if not bucket or not key:
        raise ValueError(f"{text!r} is not storage://<bucket>/<key>")
    if any(p in ("", ".", "..") for p in key.split("/")) or any(ord(c) < 32 or c == "\\" for c in text):
        raise ValueError(f"{text!r}: the key has an empty, '.' or '..' part, or a control character")
    return bucket, key


def upload_bucket(node: str) -> str:
    """The id (and name) of ``node``'s bucket of plugin uploads (``services.uploads``)."""
    return f"{UPLOAD_BUCKET_PREFIX}{node}"


class Grant(Part):
    grantee_type: Literal["user", "group"]
    grantee: UserName
    permission: AclVerb

    @model_validator(mode="after")
    def _all_users_is_a_group(self) -> Self:
        if self.grantee == ALL_USERS and self.grantee_type != "group":
            raise ValueError(f"{ALL_USERS} is a group (grantee_type: group)")
        return self


@event("storage.bucket.created")
class BucketCreated(Payload):
    model_config = STRICT

    bucket_id: Key
    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    owner: UserName
    type: BucketType
    acl: list[Grant] = Field(default_factory=list)


@event("storage.object.put")
class ObjectPut(Payload):
    model_config = STRICT

    bucket_id: Key
    key: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    size: NonNegInt
    digest: Digest
    content_type: str | None = None
    by: UserName


@event("storage.acl.changed")
class AclChanged(Payload):
    model_config = STRICT

    bucket_id: Key
    acl: list[Grant]
    by: UserName


@event("storage.object.deleted")
class ObjectDeleted(Payload):
    model_config = STRICT

    bucket_id: Key
    key: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    by: UserName


@event("storage.bucket.deleted")
class BucketDeleted(Payload):
    """The bucket and every object in it are gone."""

    model_config = STRICT

    bucket_id: Key
    by: UserName


@event("storage.command.rejected")
class StorageCommandRejected(Payload):
    """The storage decider refused a user's command: who, what, on which bucket, and why."""

    model_config = STRICT

    command: Annotated[str, StringConstraints(pattern=r"^storage\.[a-z_]+$")]
    by: UserName
    bucket_id: Annotated[str, StringConstraints(max_length=256)]
    reasons: Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(min_length=1)]


__all__ = [
    "ALL_USERS", "AUTHENTICATED_USERS", "GROUPS", "STORAGE_SCHEME", "UPLOAD_BUCKET_PREFIX", "UPLOAD_SUBJECT",
    "AclChanged", "AclVerb", "BucketCreated", "BucketDeleted", "BucketType", "Grant", "ObjectDeleted", "ObjectPut",
    "StorageCommandRejected", "object_ref", "upload_bucket",
]
