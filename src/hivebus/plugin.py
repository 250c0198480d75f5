"""The plugin SDK: pywaggle's ``Plugin`` API on the node-local bus.

A plugin written for pywaggle runs here with one changed import::

    from hivebus.plugin import Plugin          # was: from waggle.plugin import Plugin

    with Plugin() as plugin:
        plugin.subscribe("env.temperature")
        msg = plugin.get(timeout=60)
        plugin.publish("env.temperature.smoothed", msg.value * 0.9, meta={"sensor": "bme680"})
        with plugin.timeit("plugin.duration.compute"):
            ...
        plugin.upload_file("snapshot.jpg")

The older module-level form (``from hivebus import plugin; plugin.init(); plugin.publish(...)``)
works too. What it does, as pywaggle does it:

* ``publish`` checks what pywaggle checks, with the hub's ``data.reading`` rules (the same as
  ``hivebus.schemas.data.Reading``; a test holds the two together): the name is at most 128
  characters of dot-separated ``[a-z0-9_]+`` parts and not the reserved ``upload``; the value
  an int, a finite float, a str or bytes (sent base64 with ``meta["enc"] = "b64"``; a bool is
  refused); the timestamp int nanoseconds from 2000 on; meta str -> str. Errors are
  pywaggle's ``TypeError`` / ``ValueError``. Meta is enriched from the environment the
  executor sets (``node``, ``vsn``, ``host``, ``job``, ``task``, ``plugin``); those keys win
  over the plugin's own, so a reading cannot claim another node.
* ``subscribe(*topics)`` with ``*`` (one part) and ``#`` (any number of parts, none included,
  AMQP-style); ``get(timeout=None)`` returns a ``Message(name, value, timestamp, meta)`` or
  raises ``TimeoutError``. A message matching several topics arrives once.
* ``upload_file(path, meta={}, timestamp=None, keep=False)`` hands the file to the agent
  (``local.upload``), which keeps it and ships it to the hub's object store when online.
* ``timeit(name)`` publishes the duration of its block in nanoseconds.

The SDK is synchronous, like pywaggle: the NATS client runs on a background thread with its
own event loop, so a plugin needs no asyncio. Publishing queues the message and returns;
leaving the ``with`` block delivers what is queued (waiting up to ``HIVEBUS_FLUSH_TIMEOUT``
seconds, default 10, for the bus) and writes anything undeliverable to the offline log with
a warning, so nothing published is silently lost. SIGTERM (how executors stop a plugin) leaves
the ``with`` block the same way.

Without ``HIVEBUS_LOCAL_BUS`` it runs offline, like pywaggle's run log: every reading is a
line of ``HIVEBUS_OFFLINE_LOG`` (default ``./hivebus-offline.ndjson``; or
``$PYWAGGLE_LOG_DIR/data.ndjson``), uploads are copied next to it. Importing this module
imports no third-party package; nats-py is loaded only when a bus is used.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any, Final, NamedTuple

from hivebus.errors import UploadError

__all__ = [
    "Message",
    "Plugin",
    "PluginConfig",
    "get",
    "init",
    "publish",
    "subscribe",
    "timeit",
    "upload_file",
]

# The rules of hivebus.schemas.data.Reading (tests/unit/test_plugin_sdk.py checks they agree).
NAME_PART: Final = re.compile(r"^[a-z0-9_]+$")
MAX_NAME_LENGTH: Final = 128
MIN_TIMESTAMP_NS: Final = 946_684_800_000_000_000  # 2000-01-01T00:00:00Z
SCOPES: Final = ("node", "beehive", "all")
RESERVED_NAMES: Final = frozenset({"upload"})
BYTES_ENCODING: Final = "b64"

IDENTITY_ENV: Final = {
    "node": "HIVEBUS_NODE",
    "vsn": "HIVEBUS_VSN",
    "host": "HIVEBUS_HOST",
    "job": "HIVEBUS_JOB",
    "task": "HIVEBUS_TASK",
    "plugin": "HIVEBUS_PLUGIN",
}
PUBLISH_PREFIX: Final = "local.publish."
READINGS_PREFIX: Final = "readings."
UPLOAD_SUBJECT: Final = "local.upload"


class Message(NamedTuple):
    """A reading received by ``get()``; the fields of pywaggle's ``wagglemsg.Message``."""

    name: str
    value: Any
    timestamp: int
    meta: dict[str, str]


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PluginConfig:
    """Where the plugin talks and who it is, read from the executor's environment."""

    local_bus: str | None = None
    identity: Mapping[str, str] = field(default_factory=dict)
    run_id: str = ""
    upload_dir: Path | None = None
    offline_log: Path = Path("hivebus-offline.ndjson")
    offline_uploads: Path = Path("hivebus-offline-uploads")
    flush_timeout: float = 10.0
    request_timeout: float = 30.0
    max_pending: int = 100_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PluginConfig:
        env = os.environ if env is None else env
        identity = {key: env[var] for key, var in IDENTITY_ENV.items() if env.get(var)}
        offline_log, offline_uploads = Path("hivebus-offline.ndjson"), Path("hivebus-offline-uploads")
        if env.get("HIVEBUS_OFFLINE_LOG"):
            offline_log = Path(env["HIVEBUS_OFFLINE_LOG"])
            offline_uploads = offline_log.with_name(offline_log.stem + "-uploads")
        elif env.get("PYWAGGLE_LOG_DIR"):  # pywaggle's run log layout: data.ndjson + uploads/
            offline_log = Path(env["PYWAGGLE_LOG_DIR"]) / "data.ndjson"
            offline_uploads = Path(env["PYWAGGLE_LOG_DIR"]) / "uploads"
        return cls(
            local_bus=env.get("HIVEBUS_LOCAL_BUS") or None,
            identity=identity,
            run_id=env.get("HIVEBUS_RUN_ID", ""),
            upload_dir=Path(env["HIVEBUS_UPLOAD_DIR"]) if env.get("HIVEBUS_UPLOAD_DIR") else None,
            offline_log=offline_log,
            offline_uploads=offline_uploads,
            flush_timeout=float(env.get("HIVEBUS_FLUSH_TIMEOUT", "10")),
        )


# --- validation (pywaggle's errors, the hub's rules) ----------------------------------------


def check_name(name: object, *, allow_reserved: bool = False) -> str:
    if not isinstance(name, str):
        raise TypeError(f"publish name must be a string: {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"publish name must be at most {MAX_NAME_LENGTH} characters: {name!r}")
    if name in RESERVED_NAMES and not allow_reserved:
        raise ValueError(f"name {name!r} is reserved for system use only")
    for part in name.split("."):
        if not NAME_PART.match(part):
            raise ValueError(f"publish name invalid: {name!r} part: {part!r} (use a-z, 0-9 and _)")
    return name


def check_value(value: object) -> tuple[int | float | str, bool]:
    """(the value as sent, whether it is base64 of bytes)."""
    if isinstance(value, bool):
        raise TypeError("value must be an int, float, string or bytes, not a bool (publish int(flag))")
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii"), True
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"value must be a finite number, not {value!r}")
        return value, False
    if isinstance(value, int | str):
        return value, False
    raise TypeError(f"value must be an int, float, string or bytes, not {type(value).__name__}")


def check_timestamp(timestamp: object) -> int:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise TypeError(
            "timestamp must be an int of nanoseconds since the epoch (time.time_ns()), "
            f"not {type(timestamp).__name__}"
        )
    if timestamp < MIN_TIMESTAMP_NS:
        raise ValueError(
            f"timestamp {timestamp} is before 2000-01-01: it must be in nanoseconds since the "
            "epoch (seconds or milliseconds are too small)"
        )
    if timestamp >= 2**63:
        raise ValueError(f"timestamp {timestamp} is too large for nanoseconds since the epoch")
    return timestamp


def check_meta(meta: object) -> dict[str, str]:
    if not isinstance(meta, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise TypeError("meta must be a dictionary of strings to strings")
    return dict(meta)


def check_scope(scope: object) -> str:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    return str(scope)


def reading_body(
    name: str, value: object, meta: object, timestamp: object, scope: object,
    identity: Mapping[str, str], *, allow_reserved: bool = False,
) -> dict[str, Any]:
    """The ``Reading`` payload a publish sends (docs/node-local-bus.md), checked and enriched."""
    check_name(name, allow_reserved=allow_reserved)
    sent, is_bytes = check_value(value)
    ts = check_timestamp(timestamp)
    full_meta = check_meta(meta)
    if is_bytes:
        full_meta["enc"] = BYTES_ENCODING
    full_meta.update(identity)
    return {"name": name, "value": sent, "timestamp": ts, "meta": full_meta, "scope": check_scope(scope)}


# --- topics ---------------------------------------------------------------------------------


def topic_matcher(topic: str) -> Callable[[str], bool]:
    """``name -> bool`` for a pywaggle topic: ``*`` is one part, ``#`` any number (or none)."""
    pattern = _topic_parts(topic)

    def matches(pat: tuple[str, ...], name: tuple[str, ...]) -> bool:
        if not pat:
            return not name
        head, rest = pat[0], pat[1:]
        if head == "#":
            return any(matches(rest, name[i:]) for i in range(len(name) + 1))
        return bool(name) and head in ("*", name[0]) and matches(rest, name[1:])

    return lambda name: matches(pattern, tuple(name.split(".")))


def topic_subjects(*topics: str) -> list[str]:
    """The local-bus subjects to subscribe so that every reading ``topics`` match arrives.

    ``*`` maps to ``*``, ``#`` to ``>``; but NATS orders messages only within one
    subscription (pywaggle's one AMQP queue kept them in order), and ``>`` is one or more
    parts, only last. So the topics share one subscription on their common prefix (plus the
    prefix itself when a ``#`` may match zero parts) and the matchers filter:
    ``env.temperature, env.relative_humidity`` -> ``readings.env.>``; ``env.#`` ->
    ``readings.env``, ``readings.env.>``; one exact name -> that name.
    """
    parts = [_topic_parts(t) for t in topics]
    wildcard_free = not any({"*", "#"} & set(p) for p in parts)
    if wildcard_free and len(set(topics)) == 1:
        return [READINGS_PREFIX + topics[0]]
    literal = [p[: next((i for i, x in enumerate(p) if x in ("*", "#")), len(p))] for p in parts]
    common: list[str] = []
    for column in zip(*literal, strict=False):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    if not common:
        return [READINGS_PREFIX + ">"]
    head = READINGS_PREFIX + ".".join(common)
    subjects = [head] if any(topic_matcher(t)(".".join(common)) for t in topics) else []
    lengths = {len(p) for p in parts}
    if any("#" in p for p in parts) or len(lengths) > 1:
        subjects.append(head + ".>")
    elif (n := lengths.pop()) > len(common):
        subjects.append(head + ".*" * (n - len(common)))
    return subjects


def subject_covers(pattern: str, subject: str) -> bool:
    """Whether NATS subject ``pattern`` (with ``*`` / ``>``) matches ``subject``."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or token not in ("*", have[i]):
            return False
    return len(have) == len(want)


def _topic_parts(topic: object) -> tuple[str, ...]:
    if not isinstance(topic, str) or not topic:
        raise TypeError(f"topic must be a non-empty string: {topic!r}")
    parts = tuple(topic.split("."))
    for part in parts:
        if part not in ("*", "#") and not NAME_PART.match(part):
            raise ValueError(f"topic invalid: {topic!r} part: {part!r} (a-z, 0-9, _, * or #)")
    return parts


def message_of(body: bytes) -> Message | None:
    """A ``Message`` from a ``readings.<name>`` body; None if it is not a reading."""
    try:
        data = json.loads(body)
        name, value, timestamp = data["name"], data["value"], data["timestamp"]
        meta = dict(data.get("meta") or {})
    except (ValueError, KeyError, TypeError):
        return None
    if meta.get("enc") == BYTES_ENCODING and isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
            del meta["enc"]
        except ValueError:
            pass
    return Message(name=name, value=value, timestamp=timestamp, meta=meta)


# --- the plugin -----------------------------------------------------------------------------


class Plugin:
    """pywaggle's ``Plugin``: use it as ``with Plugin() as plugin:``."""

    def __init__(self, config: PluginConfig | None = None) -> None:
        self.config = config or PluginConfig.from_env()
        self._recv: Queue[Message] = Queue()
        self._topics: list[Callable[[str], bool]] = []
        self._subjects: list[str] = []
        self._topics_lock = threading.Lock()
        self._link: _BusLink | None = None
        self._offline: _RunLog | None = None
        self._entered = False
        self._previous_sigterm: Any = None

    # lifecycle

    def __enter__(self) -> Plugin:
        if self._entered:
            raise RuntimeError("this Plugin is already in use (enter it once)")
        self._entered = True
        if self.config.local_bus:
            self._link = _BusLink(self.config.local_bus, self.config, name=self._client_name())
            self._link.start()
        else:
            self._offline = _RunLog(self.config.offline_log, self.config.offline_uploads)
        self._exit_on_sigterm()
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore_sigterm()
        if self._link is not None:
            unsent = self._link.close(self.config.flush_timeout)
            if unsent:
                log = _RunLog(self.config.offline_log, self.config.offline_uploads)
                for body in unsent:
                    log.append(body)
                log.close()
                print(
                    f"hivebus.plugin: the local bus at {self.config.local_bus} did not take "
                    f"{len(unsent)} message(s) within {self.config.flush_timeout:g}s; "
                    f"they were written to {self.config.offline_log.resolve()}",
                    file=sys.stderr,
                )
            self._link = None
        if self._offline is not None:
            self._offline.close()
            self._offline = None
        self._entered = False

    # publishing

    def publish(
        self,
        name: str,
        value: Any,
        meta: Mapping[str, str] = {},
        timestamp: int | None = None,
        scope: str = "all",
        timeout: float | None = None,
    ) -> None:
        timestamp = timestamp or time.time_ns()
        body = reading_body(name, value, meta, timestamp, scope, self.config.identity)
        self._send(body, timeout)

    def _send(self, body: dict[str, Any], timeout: float | None = None) -> None:
        if self._link is not None:
            self._link.send(PUBLISH_PREFIX + body["name"], json.dumps(body, separators=(",", ":")).encode(), timeout)
        elif self._offline is not None:
            self._offline.append(body)
        else:
            raise RuntimeError("use the plugin inside `with Plugin() as plugin:`")

    @contextmanager
    def timeit(self, name: str) -> Iterator[None]:
        """Publish how long the block took, in nanoseconds (only if it finishes normally)."""
        check_name(name)
        start = time.perf_counter_ns()
        yield
        self.publish(name, time.perf_counter_ns() - start)

    # subscribing

    def subscribe(self, *topics: str) -> None:
        if not topics:
            return
        matchers = [topic_matcher(t) for t in topics]
        subjects = topic_subjects(*topics)
        if self._link is None and self._offline is None:
            raise RuntimeError("use the plugin inside `with Plugin() as plugin:`")
        pairs: list[tuple[str, Callable[[str, bytes], None]]] = []
        with self._topics_lock:
            self._topics += matchers
            for subject in subjects:
                if not any(subject_covers(existing, subject) for existing in self._subjects):
                    self._subjects.append(subject)
                    pairs.append((subject, self._receiver(len(self._subjects) - 1)))
        if self._link is not None and pairs:
            self._link.subscribe(pairs)

    def _receiver(self, index: int) -> Callable[[str, bytes], None]:
        """Deliver what this subscription carries, unless an older one carries it too."""

        def receive(subject: str, body: bytes) -> None:
            name = subject[len(READINGS_PREFIX) :]
            with self._topics_lock:
                if any(subject_covers(s, subject) for s in self._subjects[:index]):
                    return
                if not any(match(name) for match in self._topics):
                    return
            msg = message_of(body)
            if msg is not None:
                self._recv.put(msg)

        return receive

    def get(self, timeout: float | None = None) -> Message:
        try:
            return self._recv.get(timeout=timeout)
        except Empty:
            pass
        raise TimeoutError("plugin get timed out")

    # uploading

    def upload_file(
        self,
        path: str | os.PathLike[str],
        meta: Mapping[str, str] = {},
        timestamp: int | None = None,
        keep: bool = False,
    ) -> str:
        """Hand ``path`` to the node for upload; returns the reference the ``upload`` reading carries."""
        timestamp = check_timestamp(timestamp or time.time_ns())
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"cannot upload {str(path)!r}: no such file")
        labels = {**check_meta(meta), "filename": source.name, **self.config.identity}
        if self._offline is not None:
            return self._offline.upload(source, labels, timestamp, keep)
        if self._link is None:
            raise RuntimeError("use the plugin inside `with Plugin() as plugin:`")
        return self._upload_online(source, labels, timestamp, keep)

    def _upload_online(self, source: Path, meta: dict[str, str], timestamp: int, keep: bool) -> str:
        assert self._link is not None
        staged: Path | None = None
        sent_path, sent_keep = source.resolve(), keep
        if self.config.upload_dir is not None:  # a container: the agent sees only this directory
            staged = self.config.upload_dir / f"{self.config.run_id or 'run'}-{timestamp}-{source.name}"
            shutil.copyfile(source, staged)
            sent_path, sent_keep = staged, False
        request = {"path": str(sent_path), "meta": meta, "timestamp": timestamp, "keep": sent_keep}
        try:
            reply = self._link.request(UPLOAD_SUBJECT, json.dumps(request).encode(), self.config.request_timeout)
            answer = json.loads(reply)
        except (TimeoutError, ValueError, ConnectionError) as exc:
            if staged is not None:
                staged.unlink(missing_ok=True)
            raise UploadError(f"the node did not accept {source.name} for upload: {exc}") from None
        if "error" in answer or "ref" not in answer:
            if staged is not None:
                staged.unlink(missing_ok=True)
            raise UploadError(f"the node refused {source.name} for upload: {answer.get('error', answer)}")
        if staged is not None and not keep:
            source.unlink(missing_ok=True)
        return str(answer["ref"])

    # internals

    def _client_name(self) -> str:
        ident = self.config.identity
        return f"plugin:{ident.get('task') or ident.get('plugin') or Path(sys.argv[0]).stem}:{self.config.run_id}"

    def _exit_on_sigterm(self) -> None:
        """Turn SIGTERM into SystemExit so leaving the ``with`` block delivers what is queued."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def stop(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        self._previous_sigterm = signal.signal(signal.SIGTERM, stop)

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None


# --- offline: the run log -------------------------------------------------------------------


class _RunLog:
    """Readings as ndjson lines and uploads as files, for a plugin run outside a node."""

    def __init__(self, path: Path, uploads: Path) -> None:
        self.path, self.uploads = path, uploads
        self._lock = threading.Lock()
        self._file: Any = None

    def append(self, body: dict[str, Any] | bytes) -> None:
        line = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
            self._file.write(line + b"\n")
            self._file.flush()

    def upload(self, source: Path, meta: dict[str, str], timestamp: int, keep: bool) -> str:
        """pywaggle's layout: ``uploads/<timestamp>-<sha1>/{data,meta}``, then an ``upload`` reading."""
        digest = hashlib.sha1(source.read_bytes()).hexdigest()
        target = self.uploads / f"{timestamp}-{digest}"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target / "data")
        (target / "meta").write_text(
            json.dumps({"timestamp": timestamp, "shasum": digest, "labels": meta}, sort_keys=True, separators=(",", ":"))
        )
        if not keep:
            source.unlink()
        body = reading_body("upload", target.name, meta, timestamp, "all", {}, allow_reserved=True)
        self.append(body)
        return str(target)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


# --- online: NATS on a background thread ----------------------------------------------------


class _BusLink:
    """A nats-py client on its own thread and event loop; the plugin's thread never awaits.

    ``send`` queues a message (blocking only when ``max_pending`` are queued); the sender
    task publishes them in order once connected, reconnecting as nats-py does. ``close``
    delivers what is queued, flushes, and returns what could not be sent in time.
    """

    def __init__(self, url: str, config: PluginConfig, *, name: str) -> None:
        self.url, self.config, self.name = url, config, name
        self._loop: Any = None
        self._thread = threading.Thread(target=self._main, name="hivebus-plugin-bus", daemon=True)
        self._out: deque[tuple[str, bytes]] = deque()
        self._cv = threading.Condition()
        self._signalled = False
        self._closing = False
        self._deadline = float("inf")
        self._connected = threading.Event()
        self._subscriptions: list[tuple[str, Callable[[str, bytes], None]]] = []
        self._subscribed = 0
        self._nc: Any = None
        self._wake: Any = None
        self._stop: Any = None
        self._live: Any = None
        self._failure: str | None = None

    def start(self) -> None:
        import asyncio

        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()  # something to send, or closing
        self._stop = asyncio.Event()  # closing
        self._live = asyncio.Event()  # connected and subscribed
        self._thread.start()

    # called from the plugin's threads

    def send(self, subject: str, body: bytes, timeout: float | None) -> None:
        with self._cv:
            if not self._cv.wait_for(lambda: len(self._out) < self.config.max_pending, timeout):
                raise TimeoutError(f"publish timed out: {len(self._out)} messages wait for the local bus")
            self._out.append((subject, body))
            if not self._signalled:
                self._signalled = True
                with contextlib.suppress(RuntimeError):  # thread gone: close() logs it offline
                    self._loop.call_soon_threadsafe(self._wake.set)

    def subscribe(self, pairs: list[tuple[str, Callable[[str, bytes], None]]]) -> None:
        """Subscribe, waiting (up to the flush timeout) until the subscriptions are live."""
        import asyncio
        import concurrent.futures

        future = asyncio.run_coroutine_threadsafe(self._subscribe(pairs), self._loop)
        try:
            future.result(self.config.flush_timeout)
        except concurrent.futures.TimeoutError:
            print(f"hivebus.plugin: not connected to {self.url} yet; subscribing when it answers", file=sys.stderr)

    def request(self, subject: str, body: bytes, timeout: float) -> bytes:
        import asyncio

        if not self._connected.wait(timeout):
            raise TimeoutError(f"not connected to the local bus at {self.url} ({self._failure})")
        future = asyncio.run_coroutine_threadsafe(self._request(subject, body, timeout), self._loop)
        return future.result(timeout + 1.0)

    def close(self, timeout: float) -> list[bytes]:
        with self._cv:
            self._closing = True
            self._deadline = time.monotonic() + timeout
        with contextlib.suppress(RuntimeError):  # the thread may have finished and closed its loop
            self._loop.call_soon_threadsafe(self._closing_now)
        self._thread.join(timeout + 3.0)
        with self._cv:
            unsent = [body for _, body in self._out]
            self._out.clear()
        return unsent

    # on the bus thread

    def _closing_now(self) -> None:
        self._stop.set()
        self._wake.set()

    def _main(self) -> None:
        import asyncio

        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._run())
        except Exception as exc:  # keep the plugin running; what is queued goes to the offline log
            print(f"hivebus.plugin: the local bus connection failed: {exc!r}", file=sys.stderr)
        finally:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _run(self) -> None:
        if not await self._connect():
            return
        try:
            await self._send_until_closed()
        finally:
            await self._finish()

    async def _connect(self) -> bool:
        """Connect, nats-py retrying for as long as the plugin runs; once it is closing,
        only until the flush deadline. False if it never connected."""
        import asyncio

        import nats

        async def remember(exc: Exception) -> None:
            self._failure = str(exc) or type(exc).__name__

        backoff = 0.1
        while True:
            nc = nats.NATS()
            attempt = asyncio.ensure_future(
                nc.connect(
                    self.url, name=self.name, allow_reconnect=True, max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5, connect_timeout=2, error_cb=remember,  # type: ignore[arg-type]
                )
            )
            closing = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({attempt, closing}, return_when=asyncio.FIRST_COMPLETED)
            closing.cancel()
            if not attempt.done():  # closing while still unreachable: wait until the deadline
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(attempt), max(0.0, self._deadline - time.monotonic()))
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(BaseException):
                    await attempt
                with contextlib.suppress(Exception):
                    await nc.close()
                return False
            if attempt.exception() is None:
                break
            self._failure = str(attempt.exception()) or type(attempt.exception()).__name__
            if self._closing and time.monotonic() >= self._deadline:
                return False
            await asyncio.sleep(min(backoff, max(0.0, self._deadline - time.monotonic())))
            backoff = min(backoff * 2, 2.0)
        self._nc = nc
        await self._subscribe_pending()
        self._live.set()
        self._connected.set()
        return True

    async def _send_until_closed(self) -> None:
        import asyncio

        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._cv:
                batch = list(self._out)
                self._signalled = False
                closing = self._closing
            sent = 0
            try:
                for subject, body in batch:
                    await self._nc.publish(subject, body)
                    sent += 1
            except Exception as exc:  # e.g. nats-py's reconnect buffer is full: retry shortly
                self._failure = str(exc) or type(exc).__name__
                await asyncio.sleep(0.2)
                self._wake.set()
            with self._cv:
                for _ in range(sent):
                    self._out.popleft()
                self._cv.notify_all()
                done = closing and not self._out
            if done or (closing and time.monotonic() >= self._deadline):
                return

    async def _finish(self) -> None:
        import asyncio

        remaining = max(0.1, self._deadline - time.monotonic())
        try:
            await asyncio.wait_for(self._nc.flush(), remaining)
        except Exception as exc:
            detail = str(exc) or type(exc).__name__
            print(f"hivebus.plugin: could not confirm delivery to {self.url}: {detail}", file=sys.stderr)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._nc.close(), 2.0)

    async def _subscribe(self, pairs: list[tuple[str, Callable[[str, bytes], None]]]) -> None:
        self._subscriptions += pairs
        await self._live.wait()
        await self._subscribe_pending()

    async def _subscribe_pending(self) -> None:
        """Subscribe what is not subscribed yet; the index moves first, so nothing twice."""
        while self._subscribed < len(self._subscriptions):
            subject, handler = self._subscriptions[self._subscribed]
            self._subscribed += 1
            await self._nc.subscribe(subject, cb=_deliver_to(handler))
        await self._nc.flush()

    async def _request(self, subject: str, body: bytes, timeout: float) -> bytes:
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        try:
            reply = await self._nc.request(subject, body, timeout=timeout)
        except NoRespondersError:
            raise ConnectionError(f"nothing answers {subject} on the local bus (is the node's upload service running?)") from None
        except NatsTimeout:
            raise TimeoutError(f"no answer on {subject} within {timeout:g}s") from None
        return bytes(reply.data)


def _deliver_to(handler: Callable[[str, bytes], None]) -> Callable[[Any], Any]:
    async def deliver(msg: Any) -> None:
        handler(msg.subject, msg.data)

    return deliver


# --- pywaggle's module-level API (``from hivebus import plugin; plugin.init()``) ------------

_default: Plugin | None = None
_default_lock = threading.Lock()


def init(config: PluginConfig | None = None) -> Plugin:
    """Start the process-wide plugin (closed, delivering what is queued, at exit)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Plugin(config).__enter__()
            atexit.register(_close_default)
        return _default


def _close_default() -> None:
    global _default
    with _default_lock:
        if _default is not None:
            _default.__exit__(None, None, None)
            _default = None


def publish(name: str, value: Any, meta: Mapping[str, str] = {}, timestamp: int | None = None,
            scope: str = "all", timeout: float | None = None) -> None:
    init().publish(name, value, meta=meta, timestamp=timestamp, scope=scope, timeout=timeout)


def subscribe(*topics: str) -> None:
    init().subscribe(*topics)


def get(timeout: float | None = None) -> Message:
    return init().get(timeout=timeout)


def upload_file(path: str | os.PathLike[str], meta: Mapping[str, str] = {},
                timestamp: int | None = None, keep: bool = False) -> str:
    return init().upload_file(path, meta=meta, timestamp=timestamp, keep=keep)


@contextmanager
def timeit(name: str) -> Iterator[None]:
    with init().timeit(name):
        yield
