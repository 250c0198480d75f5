"""The agent side of ``local.upload``: accept a plugin's file, keep it, ship it when online.

A plugin calls ``upload_file(path)``; the SDK asks ``local.upload`` on the node-local bus
(docs/node-local-bus.md). This service:

1. **accepts** the file: it checks the request, copies the file into the node's data dir
   (``<data_dir>/uploads/<id>/data`` with ``meta.json``), fsyncs both and renames the
   directory into place, and only then answers ``{"ref": "<bucket>/<key>"}`` — an accepted
   file survives a crash of the agent. With ``keep`` false the plugin's file is removed.
2. **transfers** staged files, oldest first, to the node's bucket of type ``upload`` on the
   hub (``upload-<node>``, ``schemas.storage.upload_bucket``) whenever ``hub_bus_provider()``
   returns a connected bus, retrying with backoff while the node is offline or the hub
   refuses. The node publishes the file's chunks into the bucket's object store, then asks the
   hub's upload service (``hivebus.storage.upload.<node>``, ``services.uploads``) to record
   it: the hub reads the chunks back, checks size and SHA-256, and the storage decider appends
   ``storage.object.put`` (and, the first time, ``storage.bucket.created``; READ for the job's
   submitter). The digest the hub computed is checked against the file's before the local copy
   is deleted.
3. **reports** each transfer through the outbox, as pywaggle's upload agent does: an
   ``upload`` reading whose value is the reference ``upload-<node>/<key>`` and whose meta is
   the plugin's (with ``filename``, ``node``, ``job``, ``task``...). Its event id is derived
   from the upload, so reporting twice after a crash yields the same id; asking the hub twice
   records one object.

The object key is ``<job>/<task>/<timestamp>-<filename>`` (``task`` is the plugin's name in
its job; ``plugin`` when absent, ``job`` is ``nojob`` outside a job), so a hub user lists a
job's or a task's uploads on a node by prefix (``hivebus storage ls upload-W012 <job>/``).

Security: the agent reads the path a plugin sends, so it takes only files the plugin's own run
staged. With ``runs_dir`` (the agent sets it) every run gets its own upload dir
``<runs_dir>/<run id>`` and a token (``open_run``: ``HIVEBUS_UPLOAD_DIR`` and
``HIVEBUS_UPLOAD_TOKEN`` in the run's environment; the docker executor mounts that dir alone);
a request must name its run (``run_id``, ``token``: the SDK sends them) and a path that
resolves inside that run's dir, else it is refused naming the path and the allowed dir. The
dir is removed when the run ends (``close_run``). Without ``runs_dir``, ``allowed_roots``
(if given) confines uploads to fixed directories. Only regular files are taken, up to
``max_file_bytes``; ``max_bytes`` bounds what waits on disk (new uploads are refused,
with a clear error to the plugin, when it is full — nothing accepted is ever dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import mimetypes
import os
import secrets
import shutil
import stat
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import structlog

from hivebus.bus.publisher import Outgoing
from hivebus.errors import UploadError
from hivebus.schemas.data import MIN_TIMESTAMP_NS, Reading
from hivebus.schemas.envelope import Event, derived_id
from hivebus.schemas.storage import UPLOAD_SUBJECT, upload_bucket

log = structlog.get_logger()

SUBJECT: Final = "local.upload"
PRODUCER: Final = "edge/uploads"
_CHUNK: Final = 1 << 20
OBJECT_CHUNK: Final = 128 * 1024  # the object store chunk size the hub's web face uses too
WINDOW: Final = 8  # chunks in flight at once
MAX_ATTEMPTS_KEPT: Final = 32  # earlier attempts whose chunks the next put asks the hub to drop

OutboxAppend = Callable[[Event], Awaitable[Any] | Any]
HubBusProvider = Callable[[], Any]  # -> a connected hivebus Bus (or anything with ``.js``), or None


@dataclass(frozen=True)
class RunUploadDir:
    """Where one run stages the files it uploads, and the token its requests carry."""

    run_id: str
    path: Path
    token: str


@dataclass(frozen=True)
class StagedUpload:
    """One accepted file waiting on the node for its transfer."""

    directory: Path
    upload_id: str
    key: str
    filename: str
    size: int
    sha256: str
    timestamp: int
    meta: dict[str, str]
    accepted: datetime

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def ref(self, bucket: str) -> str:
        return f"{bucket}/{self.key}"


class UploadService:
    """Serve ``local.upload`` on the local bus and ship staged files to the hub.

    ``local_nc``: the agent's nats-py client on the local bus (or a ``Bus``);
    ``outbox_append(event)``: durable append to the node's outbox (sync or async);
    ``hub_bus_provider()``: the connected hub ``Bus`` now, or None while offline.
    """

    def __init__(
        self,
        local_nc: Any,
        data_dir: str | os.PathLike[str],
        node: str,
        outbox_append: OutboxAppend,
        hub_bus_provider: HubBusProvider,
        *,
        allowed_roots: Sequence[str | os.PathLike[str]] | None = None,
        runs_dir: str | os.PathLike[str] | None = None,
        max_file_bytes: int = 1 << 30,
        max_bytes: int | None = None,
        retry_seconds: float = 2.0,
        max_retry_seconds: float = 60.0,
        replicas: int = 1,
    ) -> None:
        self.nc = getattr(local_nc, "nc", local_nc)
        self.root = Path(data_dir) / "uploads"
        self.node = node
        self.outbox_append = outbox_append
        self.hub_bus_provider = hub_bus_provider
        self.bucket = upload_bucket(node)
        self.allowed_roots = [Path(r).resolve() for r in allowed_roots] if allowed_roots is not None else None
        self.runs_dir = Path(runs_dir) if runs_dir is not None else None
        self._runs: dict[str, RunUploadDir] = {}
        self.max_file_bytes = max_file_bytes
        self.max_bytes = max_bytes
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self.replicas = replicas
        self.counters = {"accepted": 0, "refused": 0, "transferred": 0, "transfer_failures": 0}
        self._arrived = asyncio.Event()
        self.ready = asyncio.Event()  # set once ``local.upload`` is answered
        self._opened: dict[int, str] = {}  # id(bus) -> the bucket's object store name
        self._lock = asyncio.Lock()  # one transfer pass at a time

    # --- running --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Answer ``local.upload`` and transfer staged files until ``stop`` is set."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._discard_partials()
        sub = await self.nc.subscribe(SUBJECT, cb=self._on_request)
        await self.nc.flush()
        self.ready.set()
        log.info("uploads.started", node=self.node, pending=len(self.pending()))
        delay = self.retry_seconds
        try:
            while not stop.is_set():
                self._arrived.clear()
                try:
                    left = await self.transfer_pending()
                except Exception as exc:  # keep serving; the next pass retries
                    log.warning("uploads.pass_failed", error=str(exc) or type(exc).__name__)
                    left = len(self.pending())
                delay = self.retry_seconds if left == 0 else min(delay * 2, self.max_retry_seconds)
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._arrived.wait())]
                await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
                if self._arrived.is_set():
                    delay = self.retry_seconds
        finally:
            self.ready.clear()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            log.info("uploads.stopped", node=self.node, pending=len(self.pending()))

    async def _on_request(self, msg: Any) -> None:
        try:
            request = json.loads(msg.data)
            staged = await self.accept(
                request.get("path"), request.get("meta", {}), request.get("timestamp"), request.get("keep", False),
                run_id=request.get("run_id"), token=request.get("token"),
            )
            reply: dict[str, str] = {"ref": staged.ref(self.bucket)}
        except (UploadError, ValueError, TypeError, AttributeError) as exc:
            self.counters["refused"] += 1
            log.info("uploads.refused", error=str(exc))
            reply = {"error": str(exc)}
        except OSError as exc:
            self.counters["refused"] += 1
            log.warning("uploads.refused", error=str(exc))
            reply = {"error": f"cannot take the file: {exc.strerror or exc}"}
        except Exception as exc:  # the plugin must get an answer, whatever went wrong here
            self.counters["refused"] += 1
            log.exception("uploads.failed")
            reply = {"error": f"the node failed to take the file: {exc}"}
        if msg.reply:
            await msg.respond(json.dumps(reply).encode())

    # --- runs -----------------------------------------------------------------------------

    def open_run(self, run_id: str) -> Mapping[str, str]:
        """Make ``run_id``'s own upload dir and token; the variables to set in its environment."""
        if self.runs_dir is None:
            return {}
        directory = self.runs_dir / _safe_filename(run_id)
        directory.mkdir(parents=True, exist_ok=True)
        run = RunUploadDir(run_id, directory, secrets.token_urlsafe(18))
        self._runs[run_id] = run
        return {"HIVEBUS_UPLOAD_DIR": str(directory), "HIVEBUS_UPLOAD_TOKEN": run.token}

    def close_run(self, run_id: str) -> None:
        """The run ended: it uploads nothing more; what it left in its dir is removed."""
        run = self._runs.pop(run_id, None)
        if run is not None:
            shutil.rmtree(run.path, ignore_errors=True)

    def _check_run(self, path: str, real: Path, run_id: object, token: object) -> None:
        run = self._runs.get(run_id) if isinstance(run_id, str) else None
        if run is None or not isinstance(token, str) or not secrets.compare_digest(run.token, token):
            raise UploadError(
                f"{path}: the request names no running plugin of this node (run {run_id!r})",
                hint="a plugin uploads from the run the node started: the SDK sends its HIVEBUS_RUN_ID "
                "and HIVEBUS_UPLOAD_TOKEN",
            )
        if not real.is_relative_to(run.path.resolve()):
            raise UploadError(
                f"{path} is outside run {run.run_id}'s upload dir {run.path}",
                hint="a plugin uploads only files staged in its own run's dir (upload_file copies them there)",
            )

    # --- accepting ------------------------------------------------------------------------

    async def accept(self, path: object, meta: object, timestamp: object, keep: object = False, *,
                     run_id: object = None, token: object = None) -> StagedUpload:
        """Check and stage one file durably; ``UploadError`` says what was wrong."""
        source, labels, ts = self._checked(path, meta, timestamp, keep)
        real = source.resolve()
        if self.runs_dir is not None:
            self._check_run(str(path), real, run_id, token)
        elif self.allowed_roots is not None and not any(real.is_relative_to(root) for root in self.allowed_roots):
            raise UploadError(f"{path} is outside the directories this node uploads from")
        size = self._checked_file(real)  # check and copy the file itself, not a link swapped in meanwhile
        if self.max_bytes is not None:
            backlog = self.backlog_bytes()
            if backlog + size > self.max_bytes:
                raise UploadError(
                    f"the node's upload store is full ({backlog} of {self.max_bytes} bytes wait for the hub)",
                    hint="try again later",
                )
        staged = await asyncio.to_thread(self._stage, real, labels, ts)
        if not keep:
            with contextlib.suppress(FileNotFoundError):
                source.unlink()
        self.counters["accepted"] += 1
        self._arrived.set()
        log.info("uploads.accepted", key=staged.key, size=staged.size)
        return staged

    def _checked(self, path: object, meta: object, timestamp: object, keep: object) -> tuple[Path, dict[str, str], int]:
        if not isinstance(path, str) or not path:
            raise UploadError("path must be a non-empty string")
        source = Path(path)
        if not source.is_absolute():
            raise UploadError(f"path {path!r} must be absolute")
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise UploadError("meta must map strings to strings")
        if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not MIN_TIMESTAMP_NS <= timestamp < 2**63:
            raise UploadError(f"timestamp must be int nanoseconds since the epoch from 2000 on, not {timestamp!r}")
        if not isinstance(keep, bool):
            raise UploadError(f"keep must be true or false, not {keep!r}")
        return source, {**meta, "filename": meta.get("filename") or source.name}, timestamp

    def _checked_file(self, source: Path) -> int:
        try:
            info = source.stat()
        except FileNotFoundError:
            raise UploadError(f"{source}: no such file") from None
        if not stat.S_ISREG(info.st_mode):
            raise UploadError(f"{source} is not a regular file")
        if info.st_size > self.max_file_bytes:
            raise UploadError(f"{source} has {info.st_size} bytes; the node takes at most {self.max_file_bytes}")
        if source.resolve().is_relative_to(self.root.resolve()):
            raise UploadError(f"{source} is inside the upload store itself")
        return info.st_size

    def _stage(self, source: Path, meta: dict[str, str], timestamp: int) -> StagedUpload:
        """Copy (hashing on the way), fsync, write meta.json, rename into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".partial-{timestamp}-{os.getpid()}-{time.monotonic_ns()}"
        partial.mkdir()
        digest = hashlib.sha256()
        size = 0
        try:
            with open(source, "rb") as src, open(partial / "data", "wb") as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                    size += len(chunk)
                    if size > self.max_file_bytes:
                        raise UploadError(f"{source} grew past {self.max_file_bytes} bytes while being copied")
                dst.flush()
                os.fsync(dst.fileno())
            sha = digest.hexdigest()
            upload_id = f"{timestamp}-{sha[:16]}"
            filename = _safe_filename(meta["filename"])
            task = meta.get("task") or meta.get("plugin", "").rsplit("/", 1)[-1].split(":", 1)[0] or "unknown"
            job = meta.get("job") or "nojob"
            record = {
                "upload_id": upload_id,
                "key": f"{_safe_filename(job)}/{_safe_filename(task)}/{timestamp}-{filename}",
                "filename": filename,
                "size": size,
                "sha256": sha,
                "timestamp": timestamp,
                "meta": {**meta, "node": meta.get("node", self.node)},
                "accepted": datetime.now(UTC).isoformat(),
                "reported": False,
            }
            _write_json(partial / "meta.json", record)
            final = self.root / upload_id
            if final.exists():  # the same bytes at the same time: already staged
                shutil.rmtree(partial, ignore_errors=True)
            else:
                os.rename(partial, final)
                _fsync_dir(self.root)
            return _load(final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise

    # --- transferring ---------------------------------------------------------------------

    def pending(self) -> list[StagedUpload]:
        """Staged files not yet transferred, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            if entry.name.startswith(".") or not (entry / "meta.json").is_file():
                continue
            with contextlib.suppress(OSError, ValueError, KeyError):
                found.append(_load(entry))
        return sorted(found, key=lambda s: (s.timestamp, s.upload_id))

    def backlog_bytes(self) -> int:
        return sum(s.size for s in self.pending())

    async def transfer_pending(self) -> int:
        """One pass: transfer what is staged if the hub is reachable; returns what is left."""
        async with self._lock:
            bus = self.hub_bus_provider()
            staged = self.pending()
            if bus is None or not staged or not _connected(bus):
                return len(staged)
            left = len(staged)
            for upload in staged:
                try:
                    await self._transfer(bus, upload)
                except Exception as exc:
                    self.counters["transfer_failures"] += 1
                    log.warning("uploads.transfer_failed", key=upload.key, error=str(exc) or type(exc).__name__)
                    return left
                left -= 1
            return left

    async def _transfer(self, bus: Any, upload: StagedUpload) -> None:
        record = json.loads((upload.directory / "meta.json").read_text())
        if not record.get("reported"):
            store = await self._open(bus)
            earlier = list(record.get("sent") or [])  # chunks of attempts that failed or died
            nuid = _new_nuid(bus)
            record["sent"] = [*earlier, nuid][-MAX_ATTEMPTS_KEPT:]  # noted before a chunk goes out
            _write_json(upload.directory / "meta.json", record)
            chunks = await self._send_chunks(bus, store, upload, nuid)
            reply = await self._ask(bus, {
                "op": "put", "key": upload.key, "nuid": nuid, "size": upload.size, "chunks": chunks,
                "sha256": upload.sha256, "content_type": mimetypes.guess_type(upload.filename)[0],
                "job": upload.meta.get("job"), "discard": earlier,
            })
            if reply.get("size") != upload.size or reply.get("digest") != f"sha256:{upload.sha256}":
                raise UploadError(f"the hub recorded {reply.get('size')} bytes with digest {reply.get('digest')}; "
                                  f"expected {upload.size} bytes sha256:{upload.sha256}")
            for event in self.report_events(upload):
                result = self.outbox_append(event)
                if inspect.isawaitable(result):
                    await result
            record["reported"] = True
            _write_json(upload.directory / "meta.json", record)
        shutil.rmtree(upload.directory, ignore_errors=True)
        self.counters["transferred"] += 1
        log.info("uploads.transferred", key=upload.key, size=upload.size)

    def report_events(self, upload: StagedUpload) -> list[Event]:
        """The ``upload`` reading, with an id derived from the upload (the hub decides the
        ``storage.object.put`` fact itself)."""
        reading = Reading(name="upload", value=upload.ref(self.bucket), timestamp=upload.timestamp, meta=upload.meta, scope="all")
        return [
            Event.new(reading, source=f"node/{self.node}", subject=self.node,
                      id=derived_id(PRODUCER, upload.upload_id, 1, upload.accepted), time=upload.accepted),
        ]

    async def _ask(self, bus: Any, body: dict[str, Any]) -> dict[str, Any]:
        """One request to the hub's upload service; ``UploadError`` with its reason if refused."""
        subject = f"{UPLOAD_SUBJECT}.{self.node}"
        nc = getattr(bus, "nc", bus)
        try:
            reply = await nc.request(subject, json.dumps(body).encode(), timeout=60)
        except Exception as exc:
            if hasattr(bus, "raise_if_denied"):
                bus.raise_if_denied(subject)
            raise UploadError(f"the hub's upload service did not answer ({type(exc).__name__})",
                              hint="is `hivebus up` (or `hivebus handlers`) running on the hub?") from None
        answer = json.loads(reply.data)
        if not isinstance(answer, dict) or "error" in answer:
            error = answer.get("error") if isinstance(answer, dict) else answer
            raise UploadError(f"the hub refused {body.get('key') or 'the upload bucket'}: {error}")
        return answer

    async def _open(self, bus: Any) -> str:
        """The node's bucket on the hub (created there on first use); its object store's name."""
        store = self._opened.get(id(bus))
        if store is None:
            store = str((await self._ask(bus, {"op": "open"}))["store"])
            self._opened = {id(bus): store}
        return store

    async def _send_chunks(self, bus: Any, store: str, upload: StagedUpload, nuid: str) -> int:
        """Publish the file's chunks on ``$O.<store>.C.<nuid>``, ``WINDOW`` at a time; not yet
        an object: the hub makes it one once it has checked them. Returns how many."""
        subject = f"$O.{store}.C.{nuid}"
        sent = 0
        pending: list[Outgoing] = []
        with open(upload.data, "rb") as data:
            while piece := data.read(OBJECT_CHUNK):
                pending.append(Outgoing(subject, piece, f"{nuid}.{sent}"))
                sent += 1
                if len(pending) >= WINDOW:
                    await _publish_chunks(bus, pending)
                    pending = []
        if pending:
            await _publish_chunks(bus, pending)
        return sent

    def _discard_partials(self) -> None:
        """Half-copied files from a crash were never acknowledged to a plugin: remove them."""
        for entry in self.root.glob(".partial-*"):
            shutil.rmtree(entry, ignore_errors=True)


# --- helpers ------------------------------------------------------------------------------


def _new_nuid(bus: Any) -> str:
    return str(getattr(bus, "nc", bus)._nuid.next().decode())


async def _publish_chunks(bus: Any, messages: list[Outgoing]) -> None:
    if hasattr(bus, "publish_raw_many"):
        await bus.publish_raw_many(messages, timeout=30)
        return
    js = bus.jetstream()
    for m in messages:
        await js.publish(m.subject, m.payload, headers={"Nats-Msg-Id": m.msg_id})


def _connected(bus: Any) -> bool:
    """False while the hub connection is re-connecting: an attempt would only time out."""
    nc = getattr(bus, "nc", bus)
    return bool(getattr(nc, "is_connected", True))


def _safe_filename(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip(".")
    return cleaned[:200] or "file"


def _write_json(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, separators=(",", ":"), sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load(directory: Path) -> StagedUpload:
    record = json.loads((directory / "meta.json").read_text())
    return StagedUpload(
        directory=directory,
        upload_id=record["upload_id"],
        key=record["key"],
        filename=record["filename"],
        size=record["size"],
        sha256=record["sha256"],
        timestamp=record["timestamp"],
        meta=record["meta"],
        accepted=datetime.fromisoformat(record["accepted"]),
    )
