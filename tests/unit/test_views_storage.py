"""The object store's views, folded from the storage decider's facts (no DuckDB)."""

from __future__ import annotations

from hivebus.projections.views.rejections import RejectionsView
from hivebus.projections.views.storage import BucketPermissionsView, BucketsView, ObjectsView
from hivebus.schemas.storage import (
    AclChanged,
    BucketCreated,
    BucketDeleted,
    Grant,
    ObjectDeleted,
    ObjectPut,
    StorageCommandRejected,
)
from tests.unit.test_views import Story

DECIDER = "handler/storage"
DIGEST = "sha256:" + "ab" * 32
PUBLIC = Grant(grantee_type="group", grantee="AllUsers", permission="READ")
BOB_READS = Grant(grantee_type="user", grantee="bob", permission="READ")


def created(public: bool = False) -> BucketCreated:
    return BucketCreated(bucket_id="b1", name="camera7", owner="alice", type="training-data",
                         acl=[PUBLIC] if public else [])


def test_buckets_follow_creation_acl_and_deletion() -> None:
    story = Story(BucketsView())
    story.apply(story.item(created(), source=DECIDER))
    (row,) = story.rows()
    assert (row["bucket_id"], row["name"], row["type"], row["owner"], row["public"]) == (
        "b1", "camera7", "training-data", "alice", False)
    story.apply(story.item(AclChanged(bucket_id="b1", acl=[PUBLIC], by="alice"), source=DECIDER))
    assert story.rows()[0]["public"] is True and story.rows()[0]["seq"] == 2
    story.apply(story.item(BucketDeleted(bucket_id="b1", by="eve")))  # a user's event is no fact
    assert len(story.rows()) == 1
    story.apply(story.item(BucketDeleted(bucket_id="b1", by="alice"), source=DECIDER))
    assert story.rows() == []


def test_objects_are_replaced_by_a_put_of_their_key_and_go_with_their_bucket() -> None:
    story = Story(ObjectsView())

    def put(key: str, size: int) -> ObjectPut:
        return ObjectPut(bucket_id="b1", key=key, size=size, digest=DIGEST, content_type="image/jpeg", by="alice")

    story.apply(story.item(put("a.jpg", 10), source=DECIDER), story.item(put("b.jpg", 20), source=DECIDER),
                story.item(put("a.jpg", 30), source=DECIDER))
    assert sorted((r["key"], r["size"]) for r in story.rows()) == [("a.jpg", 30), ("b.jpg", 20)]
    story.apply(story.item(ObjectDeleted(bucket_id="b1", key="b.jpg", by="alice"), source=DECIDER))
    assert [r["key"] for r in story.rows()] == ["a.jpg"]
    story.apply(story.item(BucketDeleted(bucket_id="b1", by="alice"), source=DECIDER))
    assert story.rows() == []


def test_bucket_permissions_are_the_owner_and_the_acl_in_force() -> None:
    story = Story(BucketPermissionsView())
    story.apply(story.item(created(public=True), source=DECIDER))
    assert {(r["grantee"], r["permission"], r["owner"]) for r in story.rows()} == {
        ("alice", "FULL_CONTROL", True), ("AllUsers", "READ", False)}
    story.apply(story.item(AclChanged(bucket_id="b1", acl=[BOB_READS], by="alice"), source=DECIDER))
    assert {(r["grantee"], r["permission"]) for r in story.rows()} == {("alice", "FULL_CONTROL"), ("bob", "READ")}
    story.apply(story.item(BucketDeleted(bucket_id="b1", by="alice"), source=DECIDER))
    assert story.rows() == []


def test_a_refused_storage_command_is_a_rejection_row() -> None:
    story = Story(RejectionsView())
    refused = StorageCommandRejected(command="storage.put_object", by="bob", bucket_id="b1",
                                     reasons=["bob has no WRITE on bucket b1"])
    story.apply(story.item(refused, source=DECIDER))
    (row,) = story.rows()
    assert (row["command"], row["decider"], row["requested_by"], row["target"], row["reasons"]) == (
        "storage.put_object", "storage", "bob", "b1", ["bob has no WRITE on bucket b1"])
