"""``hivebus.storage.upload.<node>``: the hub side of a node's uploads, decided as storage facts.

A node's uploads land in its own SAGE bucket of type ``upload``, id and name
``upload-<node>`` (``bucket_for``), decided by the storage decider (``handlers.storage``)
exactly as a user's HTTP upload is, so the ``buckets`` / ``objects`` views and
``GET /api/v1/objects/upload-<node>/...`` see them with the ACL enforced:

- the bucket is created the first time the node ships a file (``storage.bucket.created``),
  owned by the node's identity ``node-<node>`` (the writer of every object in it);
- the submitter of a job whose plugin uploads is granted READ on the bucket (one
  ``storage.acl.changed``, once per user): the bucket is per node, so such a user reads every
  upload of that node, as on Sage, where a node's uploads are readable by the users whose
  jobs run there; an object-level ACL does not exist;
- each file is a ``storage.object.put`` whose digest the hub computed from the stored chunks.

The node speaks JSON requests (only its own subject: ``auth.permissions``):

    {"op": "open"}  -> {"bucket_id", "store"}                 bucket and object store exist
    {"op": "put", "key", "nuid", "size", "chunks", "sha256", "content_type", "job", "discard"}
                    -> {"ref", "size", "digest"}              or {"error", "kind"}

(``discard``: the chunk ids of earlier attempts at the same file, dropped unless one is what the
object is now, so attempts cut off mid-way leave no orphaned chunks.)

``put`` names chunks the node already published on ``$O.<store>.C.<nuid>``; the hub reads
them back, checks count, size and SHA-256, decides the put, and only then publishes the
object's info, so a refused or corrupt upload is never visible. Asking again after a crash is
safe: an object already stored with that digest is answered as it is, no second fact.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from typing import Any, Final

import structlog
from nats.js import api
from nats.js.errors import BucketNotFoundError

from hivebus.auth.permissions import node_user
from hivebus.bus.client import Bus
from hivebus.bus.streams import EVENTS
from hivebus.bus.subjects import encode_token
from hivebus.errors import HivebusError
from hivebus.handlers import storage as rules
from hivebus.schemas import codec
from hivebus.schemas.storage import UPLOAD_SUBJECT, Grant, upload_bucket
from hivebus.web import objects
from hivebus.web.storage import Refused, Storage

log = structlog.get_logger()

SUBJECT: Final = UPLOAD_SUBJECT
bucket_for = upload_bucket


class UploadRefused(HivebusError):
    """The hub would not record a node's upload."""


class UploadDecider:
    """Serve ``hivebus.storage.upload.*`` on the hub (the ``service`` identity)."""

    def __init__(self, bus: Bus, *, replicas: int = 1, max_bytes: int = 0) -> None:
        self.bus = bus
        self.storage = Storage(bus)
        self.replicas = replicas
        self.max_bytes = max_bytes  # per node's bucket; 0: no limit
        self._sub: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> UploadDecider:
        self._sub = await self.bus.nc.subscribe(f"{SUBJECT}.*", queue="hivebus-uploads", cb=self._on_message)
        return self

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_message(self, msg: Any) -> None:
        """One task per request: one node's large file read back does not hold up the others
        (decisions still go one at a time through ``Storage``)."""
        task = asyncio.create_task(self._on_request(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_request(self, msg: Any) -> None:
        node = msg.subject.rsplit(".", 1)[-1]
        try:
            request = json.loads(msg.data)
            if not isinstance(request, dict):
                raise UploadRefused("an upload request is a JSON object")
            op = request.get("op")
            if op == "open":
                reply: dict[str, Any] = await self.open(node)
            elif op == "put":
                reply = await self.put(node, request)
            else:
                raise UploadRefused(f"unknown op {op!r} (open or put)")
        except Refused as exc:
            reply = {"error": str(exc), "kind": exc.refusal.kind}
        except (UploadRefused, ValueError, KeyError, TypeError) as exc:
            reply = {"error": str(exc), "kind": "invalid"}
        except Exception as exc:  # the node must get an answer; it retries later
            log.exception("uploads.hub_failed", node=node)
            reply = {"error": f"the hub failed to record the upload: {exc}", "kind": "error"}
        if msg.reply:
            await msg.respond(json.dumps(reply).encode())

    async def open(self, node: str) -> dict[str, str]:
        """The node's bucket (created, owned by ``node-<node>``, if missing) and its store."""
        bucket_id = bucket_for(node)
        state = await self.storage.catch_up()
        if bucket_id not in state.buckets:
            with contextlib.suppress(Refused):  # another replica created it meanwhile: fine
                await self.storage.act(rules.CreateBucket(user=node_user(node), bucket_id=bucket_id, name=bucket_id,
                                                          type="upload"))
            if bucket_id not in (await self.storage.catch_up()).buckets:
                raise UploadRefused(f"bucket {bucket_id} could not be created")
        await self._ensure_store(bucket_id)
        return {"bucket_id": bucket_id, "store": objects.store_name(bucket_id)}

    async def _ensure_store(self, bucket_id: str) -> None:
        """The bucket's object store, with ``max_bytes`` (set on an existing one too). Full, it
        refuses new chunks (discard new): the node keeps its file and retries; nothing stored goes."""
        name = objects.store_name(bucket_id)
        limit = self.max_bytes or -1
        try:
            await self.bus.js.object_store(name)
        except BucketNotFoundError:
            config = api.ObjectStoreConfig(description=f"SAGE bucket {bucket_id}", storage=api.StorageType.FILE,
                                           replicas=self.replicas, max_bytes=self.max_bytes)
            await self.bus.js.create_object_store(name, config=config)
            return
        info = await self.bus.js.stream_info(f"OBJ_{name}")
        if (info.config.max_bytes or -1) != limit:
            info.config.max_bytes = limit
            await self.bus.js.update_stream(info.config)

    async def put(self, node: str, request: dict[str, Any]) -> dict[str, Any]:
        key, nuid = _text(request, "key"), _text(request, "nuid")
        size, chunks, sha = int(request["size"]), int(request["chunks"]), _text(request, "sha256")
        content_type = request.get("content_type") or None
        job = request.get("job") or None
        bucket_id = bucket_for(node)
        if problem := rules.key_problem(key):
            raise UploadRefused(problem)
        if not nuid.isalnum():
            raise UploadRefused(f"nuid {nuid!r} is not a chunk id")
        await self.open(node)
        await self._discard_earlier(bucket_id, key, request.get("discard"), nuid)
        staged = objects.Staged(bucket_id, nuid, size, chunks, b"")
        digest = f"sha256:{sha}"
        bucket = (await self.storage.catch_up()).buckets[bucket_id]
        known = bucket.objects.get(key)
        info = await objects.info_of(self.bus, bucket_id, key)
        if known is not None and known.digest == digest and info is not None and _hex(info.digest) == sha:
            if info.nuid != nuid:
                await objects.discard(self.bus, staged)  # asked again after a crash: already stored
            await self._grant_reader(node, bucket_id, job)
            return {"ref": f"{bucket_id}/{key}", "size": known.size, "digest": known.digest}
        found_size, found_sha = await self._read_back(bucket_id, nuid, chunks)
        if (found_size, found_sha) != (size, sha):
            await objects.discard(self.bus, staged)
            raise UploadRefused(f"the hub holds {found_size} bytes sha256:{found_sha} for {key}; "
                                f"the node sent {size} bytes sha256:{sha}")
        user = node_user(node)
        if known is None or known.digest != digest:
            try:
                await self.storage.act(rules.PutObject(user=user, bucket_id=bucket_id, key=key, size=size, digest=digest,
                                                       content_type=content_type))
            except BaseException:
                await objects.discard(self.bus, staged)
                raise
        await objects.publish_staged(self.bus, objects.Staged(bucket_id, nuid, size, chunks, bytes.fromhex(sha)), key)
        await self._grant_reader(node, bucket_id, job)
        log.info("uploads.recorded", node=node, key=key, size=size)
        return {"ref": f"{bucket_id}/{key}", "size": size, "digest": digest}

    async def _discard_earlier(self, bucket_id: str, key: str, earlier: object, nuid: str) -> None:
        """Drop the chunks earlier attempts at ``key`` sent (they failed, or the node died),
        except what the object is now."""
        if not isinstance(earlier, list):
            return
        info = await objects.info_of(self.bus, bucket_id, key)
        for old in earlier[:64]:
            if isinstance(old, str) and old.isalnum() and old != nuid and (info is None or info.nuid != old):
                await objects.discard(self.bus, objects.Staged(bucket_id, old, 0, 0, b""))

    async def _read_back(self, bucket_id: str, nuid: str, chunks: int) -> tuple[int, str]:
        """Size and SHA-256 of the chunks stored under ``nuid`` (streamed, never whole in memory)."""
        sha = hashlib.sha256()
        size = 0
        if chunks > 0:
            info = api.ObjectInfo(name=nuid, bucket=objects.store_name(bucket_id), nuid=nuid, chunks=chunks)
            try:
                async for piece in objects.get_stream(self.bus, bucket_id, info):
                    sha.update(piece)
                    size += len(piece)
            except Exception as exc:  # fewer chunks than announced: the fetch times out
                raise UploadRefused(f"the hub could not read {chunks} chunks of upload {nuid}: {exc or type(exc).__name__}",
                                    hint="the node sends the file again") from None
        return size, sha.hexdigest()

    async def _grant_reader(self, node: str, bucket_id: str, job: object) -> None:
        """READ on the bucket for the submitter of ``job`` (nothing when unknown or granted)."""
        if not isinstance(job, str) or not job:
            return
        owner = await self._job_owner(job)
        if owner is None:
            return
        bucket = (await self.storage.catch_up()).buckets[bucket_id]
        if rules.may(bucket, owner, "READ"):
            return
        with contextlib.suppress(Refused):
            await self.storage.act(rules.GrantAccess(user=node_user(node), bucket_id=bucket_id,
                                                     grant=Grant(grantee_type="user", grantee=owner, permission="READ")))

    async def _job_owner(self, job: str) -> str | None:
        for kind in ("scheduled", "submitted"):
            with contextlib.suppress(Exception):
                msg = await self.bus.js.get_last_msg(EVENTS, f"evt.ses.job.{kind}.{encode_token(job)}")
                user = getattr(codec.decode(msg.data or b"").data, "user", None)
                if isinstance(user, str) and user:
                    return user
        return None


def _text(request: dict[str, Any], name: str) -> str:
    value = request.get(name)
    if not isinstance(value, str) or not value:
        raise UploadRefused(f"{name} must be a non-empty string")
    return value


def _hex(digest: str | None) -> str:
    """``SHA-256=<url-safe base64>`` (the object store's form) -> lower-case hex."""
    import base64

    if not digest or "=" not in digest:
        return ""
    encoded = digest.split("=", 1)[1]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).hex()
