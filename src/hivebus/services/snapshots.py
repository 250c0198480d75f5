"""Deciders start from a snapshot and fold only the tail of the log.

A snapshot is a handler's ``Driver`` exactly as resuming left it after folding the log up to
a stream sequence (its ack floor then): the state plus what the fold decided for old requests.
Restoring it and folding from the next sequence on gives what folding from the start gives,
so a start costs the tail, not the history. Snapshots are written when a handler resumes and,
while it runs, again in the background once its floor has moved ``every`` inputs on (the same
fold, on a copy, never touching the live state).

They live in the JetStream object store ``hivebus-snapshots``, one object per durable
consumer. Each carries ``code_version``: a digest of the code that folds (handlers, schemas,
rules) and of the handler's configuration; a snapshot of another version is ignored and
rebuilt from the log, so a new release never starts from a state its code would not build.
The body is a pickle: only the hub's service and admin identities may write the bucket (a
public or node connection cannot publish to ``$O.hivebus-snapshots.>``), and a snapshot is
a cache: deleting the bucket only makes the next start fold the whole log.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

from hivebus.bus.client import Bus
from hivebus.handlers.runtime import Driver
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event

log = structlog.get_logger()

BUCKET: Final = "hivebus-snapshots"
FORMAT: Final = 1
_PACKAGE = Path(__file__).resolve().parents[1]
_FOLDING_CODE = ("handlers", "schemas", "rules")


@functools.cache
def _code_digest() -> str:
    digest = hashlib.sha256(f"format {FORMAT}".encode())
    for part in _FOLDING_CODE:
        for path in sorted((_PACKAGE / part).rglob("*.py")):
            digest.update(path.relative_to(_PACKAGE).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    """A value as JSON whose text is the same in every process (sets sorted: their order
    follows string hashing, which differs per process)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, set | frozenset):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value if isinstance(value, str | int | float | bool | None) else str(value)


def code_version(handler: Any) -> str:
    """What a snapshot of ``handler`` is valid for: the folding code and its configuration."""
    config = json.dumps(_canonical(getattr(handler, "config", None)), sort_keys=True)
    return hashlib.sha256(f"{_code_digest()} {handler.name} {config}".encode()).hexdigest()[:32]


def _event(data: bytes) -> Event:
    return codec.decode(data)


class _Pickler(pickle.Pickler):
    """Events by their encoding: ``Event[JobScheduled]`` is a parametrized class that pickle
    cannot name, and the codec is the events' own format anyway."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Event):
            return _event, (codec.encode(obj),)
        return NotImplemented


@dataclass(frozen=True, slots=True)
class Snapshot:
    seq: int
    """Everything of the handler's subjects up to this stream sequence is folded in."""
    version: str
    body: bytes

    @classmethod
    def of(cls, driver: Driver[Any], seq: int, version: str) -> Snapshot:
        parts = (driver.state, driver.adjudicated, driver._decided_in_history)
        out = io.BytesIO()
        _Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(parts)
        return cls(seq, version, out.getvalue())

    def driver(self, handler: Any) -> Driver[Any]:
        state, adjudicated, decided = pickle.loads(self.body)  # our own bucket: see the module docstring
        driver: Driver[Any] = Driver(handler, state)
        driver.adjudicated, driver._decided_in_history = adjudicated, decided
        return driver

    def encode(self) -> bytes:
        return pickle.dumps((FORMAT, self.seq, self.version, self.body), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def decode(cls, data: bytes) -> Snapshot | None:
        try:
            fmt, seq, version, body = pickle.loads(data)
        except Exception:
            return None
        return cls(int(seq), str(version), bytes(body)) if fmt == FORMAT else None


class SnapshotStore:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._store: Any = None

    async def _bucket(self) -> Any:
        if self._store is None:
            try:
                self._store = await self.bus.js.object_store(BUCKET)
            except (BucketNotFoundError, NotFoundError):
                config = ObjectStoreConfig(bucket=BUCKET, description="deciders' snapshots (a cache of folds of the log)", storage=StorageType.FILE)
                self._store = await self.bus.js.create_object_store(BUCKET, config=config)
        return self._store

    async def load(self, name: str, version: str) -> Snapshot | None:
        """The snapshot of ``name`` for this code ``version``, or None (none, another version,
        unreadable: the caller folds from the start)."""
        try:
            result = await (await self._bucket()).get(name)
        except (ObjectNotFoundError, NotFoundError):
            return None
        except Exception as exc:  # a cache: never worth failing a start for
            log.warning("snapshot.unreadable", name=name, error=str(exc))
            return None
        snapshot = Snapshot.decode(result.data or b"")
        if snapshot is None or snapshot.version != version:
            log.info("snapshot.stale", name=name, reason="unreadable" if snapshot is None else "another code version")
            return None
        return snapshot

    async def save(self, name: str, snapshot: Snapshot) -> None:
        try:
            await (await self._bucket()).put(name, snapshot.encode())
        except Exception as exc:
            log.warning("snapshot.not_saved", name=name, seq=snapshot.seq, error=str(exc))
            return
        log.info("snapshot.saved", name=name, seq=snapshot.seq, bytes=len(snapshot.body))


__all__ = ["BUCKET", "Snapshot", "SnapshotStore", "code_version"]
