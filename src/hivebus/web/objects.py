"""Objects in JetStream object stores, streamed: never a whole file in memory.

nats-py's ``ObjectStore.put`` reads a file-like object on a thread and ``get`` gathers the
whole object; an HTTP upload is an async stream and a download must be one. These functions
write and read the object store's own layout (chunks on ``$O.<store>.C.<nuid>``, the
``ObjectInfo`` on ``$O.<store>.M.<base64 name>`` with a rollup), so nats-py and the ``nats``
CLI read what they write and the other way round. Chunks go out pipelined, a few at a time
(``WINDOW``): in flight at most ``WINDOW * CHUNK`` bytes.

One object store per SAGE bucket (``store_name``), so deleting a bucket drops its stream.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from nats.js import api
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

from hivebus.bus.client import Bus
from hivebus.bus.publisher import Outgoing

CHUNK: Final = 128 * 1024
WINDOW: Final = 8
FETCH: Final = 16


def store_name(bucket_id: str) -> str:
    return f"sage-{bucket_id}"


@dataclass(frozen=True)
class Stored:
    size: int
    sha256: str  # hex

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"


async def ensure_store(bus: Bus, bucket_id: str, *, replicas: int = 1) -> Any:
    try:
        return await bus.js.object_store(store_name(bucket_id))
    except BucketNotFoundError:
        config = api.ObjectStoreConfig(description=f"SAGE bucket {bucket_id}", storage=api.StorageType.FILE, replicas=replicas)
        return await bus.js.create_object_store(store_name(bucket_id), config=config)


async def drop_store(bus: Bus, bucket_id: str) -> None:
    with contextlib.suppress(NotFoundError, BucketNotFoundError):
        await bus.js.delete_object_store(store_name(bucket_id))


@dataclass(frozen=True)
class Staged:
    """An upload's chunks, stored but not yet visible: no ``ObjectInfo`` names them."""

    bucket_id: str
    nuid: str
    size: int
    chunks: int
    sha256: bytes

    @property
    def stored(self) -> Stored:
        return Stored(self.size, self.sha256.hex())


async def stage_stream(bus: Bus, bucket_id: str, chunks: AsyncIterator[bytes], *,
                       max_bytes: int | None = None, replicas: int = 1) -> Staged:
    """Store ``chunks`` under a fresh nuid; ``TooLarge`` past ``max_bytes`` (nothing is kept).

    Staging first and publishing the object's info only once the decider has accepted the put
    (``publish_staged``) means a refused overwrite leaves the older object exactly as it was.
    """
    await ensure_store(bus, bucket_id, replicas=replicas)
    name = store_name(bucket_id)
    nuid = bus.nc._nuid.next().decode()
    chunk_subject = f"$O.{name}.C.{nuid}"
    sha = hashlib.sha256()
    total = sent = 0
    pending: list[Outgoing] = []
    buffer = bytearray()
    try:
        async for piece in _rechunked(chunks, buffer):
            total += len(piece)
            if max_bytes is not None and total > max_bytes:
                raise TooLarge(max_bytes)
            sha.update(piece)
            pending.append(Outgoing(chunk_subject, piece, f"{nuid}.{sent}"))
            sent += 1
            if len(pending) >= WINDOW:
                await bus.publish_raw_many(pending, timeout=30)
                pending = []
        if pending:
            await bus.publish_raw_many(pending, timeout=30)
    except BaseException:
        await discard(bus, Staged(bucket_id, nuid, total, sent, b""))
        raise
    return Staged(bucket_id, nuid, total, sent, sha.digest())


async def publish_staged(bus: Bus, staged: Staged, key: str) -> None:
    """Make ``staged`` the object ``key``, then drop the chunks of the version it replaces."""
    store = await ensure_store(bus, staged.bucket_id)
    name = store_name(staged.bucket_id)
    try:
        old = await store.get_info(key)
    except (NotFoundError, ObjectNotFoundError):
        old = None
    info = api.ObjectInfo(
        name=key, bucket=name, nuid=staged.nuid, size=staged.size, chunks=staged.chunks,
        mtime=datetime.now(UTC).isoformat(),
        digest=f"SHA-256={base64.urlsafe_b64encode(staged.sha256).decode()}",
        options=api.ObjectMetaOptions(max_chunk_size=CHUNK),
    )
    meta_subject = f"$O.{name}.M.{base64.urlsafe_b64encode(key.encode()).decode()}"
    await bus.js.publish(meta_subject, json.dumps(info.as_dict()).encode(), headers={"Nats-Rollup": "sub"})
    if old is not None and not old.deleted and old.nuid and old.nuid != staged.nuid:
        with contextlib.suppress(Exception):
            await bus.js.purge_stream(f"OBJ_{name}", subject=f"$O.{name}.C.{old.nuid}")


async def discard(bus: Bus, staged: Staged) -> None:
    """Drop a staged upload's chunks (refused, too large or cut off)."""
    name = store_name(staged.bucket_id)
    with contextlib.suppress(Exception):
        await bus.js.purge_stream(f"OBJ_{name}", subject=f"$O.{name}.C.{staged.nuid}")


async def _rechunked(chunks: AsyncIterator[bytes], buffer: bytearray) -> AsyncIterator[bytes]:
    async for piece in chunks:
        buffer += piece
        while len(buffer) >= CHUNK:
            yield bytes(buffer[:CHUNK])
            del buffer[:CHUNK]
    if buffer:
        yield bytes(buffer)


async def info_of(bus: Bus, bucket_id: str, key: str) -> api.ObjectInfo | None:
    try:
        store = await bus.js.object_store(store_name(bucket_id))
        info = await store.get_info(key)
    except (NotFoundError, ObjectNotFoundError, BucketNotFoundError):
        return None
    return None if info.deleted else info


async def get_stream(bus: Bus, bucket_id: str, info: api.ObjectInfo) -> AsyncIterator[bytes]:
    """The object's bytes, ``FETCH`` chunks at a time from an ephemeral pull consumer."""
    chunks = info.chunks or 0
    if chunks == 0:
        return
    name = store_name(bucket_id)
    config = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL,
                                inactive_threshold=30.0, max_waiting=4)
    sub = await bus.js.pull_subscribe(f"$O.{name}.C.{info.nuid}", stream=f"OBJ_{name}", config=config)
    received = 0
    try:
        while received < chunks:
            for msg in await sub.fetch(min(FETCH, chunks - received), timeout=30):
                received += 1
                yield msg.data
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def delete_object(bus: Bus, bucket_id: str, key: str) -> None:
    with contextlib.suppress(NotFoundError, ObjectNotFoundError, BucketNotFoundError):
        store = await bus.js.object_store(store_name(bucket_id))
        await store.delete(key)


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload is larger than {limit} bytes")
        self.limit = limit
