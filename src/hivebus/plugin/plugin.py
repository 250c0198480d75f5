"""pywaggle's ``Plugin``: ``with Plugin() as plugin:`` publish, subscribe, get, upload, time.

Where it sends depends on the environment its executor set (``PluginConfig.from_env``):

* ``HIVEBUS_LOCAL_BUS``: the node-local bus (``local.publish.<name>``; uploads through the
  agent's ``local.upload``, which stages the file, ships it and publishes the ``upload``
  reading once the hub has it);
* ``PYWAGGLE_LOG_DIR``: pywaggle's run log as well (``runlog.RunLog``), written as pywaggle
  writes it, whether or not there is a bus;
* neither: ``hivebus-offline.ndjson`` (``HIVEBUS_OFFLINE_LOG``), uploads staged in pywaggle's
  layout next to it.

Leaving the ``with`` block delivers what is queued (up to ``HIVEBUS_FLUSH_TIMEOUT`` seconds)
and writes anything undeliverable to the offline log with a warning; SIGTERM (how executors
stop a plugin) leaves it the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from queue import Empty, Queue
from typing import Any, Final

from hivebus.errors import UploadError
from hivebus.plugin.buslink import BusLink
from hivebus.plugin.checks import SCOPES, check_meta, check_name, reading_body, wire_scope
from hivebus.plugin.clock import get_timestamp
from hivebus.plugin.config import PluginConfig
from hivebus.plugin.runlog import OfflineLog, RunLog
from hivebus.plugin.topics import (
    READINGS_PREFIX,
    Message,
    message_of,
    subject_covers,
    topic_matcher,
    topic_subjects,
)
from hivebus.plugin.uploader import Uploader

PUBLISH_PREFIX: Final = "local.publish."
UPLOAD_SUBJECT: Final = "local.upload"
OFFLOAD_SUBJECT: Final = "local.offload"
OUTSIDE_WITH: Final = "Plugin can only be used inside a with block! (use `with Plugin() as plugin:`)"


class Plugin:
    """pywaggle's ``Plugin(config=None, uploader=None, file_publisher=None)``.

    ``config`` is a hivebus ``PluginConfig``; pywaggle's broker config (``BrokerConfig``, the
    shim's ``PluginConfig``) is accepted and the node's bus used instead. ``uploader`` is a
    pywaggle ``Uploader`` to stage uploads with (instead of the node's agent);
    ``file_publisher`` a ``RunLog`` (the default comes from ``PYWAGGLE_LOG_DIR``).
    """

    def __init__(self, config: Any = None, uploader: Uploader | None = None,
                 file_publisher: RunLog | None = None) -> None:
        self.config = config if isinstance(config, PluginConfig) else PluginConfig.from_env()
        self.file_publisher = file_publisher
        if self.file_publisher is None and self.config.run_log_dir is not None:
            self.file_publisher = RunLog(self.config.run_log_dir)
        self.uploader = uploader if uploader is not None else self._default_uploader()
        self._recv: Queue[Message] = Queue()
        self._topics: list[Callable[[str], bool]] = []
        self._subjects: list[str] = []
        self._topics_lock = threading.Lock()
        self._link: BusLink | None = None
        self._offline: OfflineLog | None = None
        self._entered = False
        self._subscribed_early = False  # pywaggle lets a subscribed plugin publish before `with`
        self._early: list[dict[str, Any]] = []
        self._previous_sigterm: Any = None
        self._warned_scopes: set[object] = set()

    def _default_uploader(self) -> Uploader | None:
        """pywaggle: no uploader in run-log mode unless an upload path is set."""
        if self.config.local_bus:
            return None  # the node's agent stages uploads
        root = os.environ.get("WAGGLE_PLUGIN_UPLOAD_PATH")
        if root is None and self.config.run_log_dir is not None:
            return None
        return Uploader(root or self.config.offline_uploads)

    # lifecycle

    def __enter__(self) -> Plugin:
        if self._entered:
            raise RuntimeError("this Plugin is already in use (enter it once)")
        self._entered = True
        if self.config.local_bus:
            self._link = BusLink(self.config.local_bus, self.config, name=self._client_name())
            self._link.start()
            if self._subjects:
                self._link.subscribe([(s, self._receiver(i)) for i, s in enumerate(self._subjects)])
        elif self.file_publisher is None:
            self._offline = OfflineLog(self.config.offline_log)
        self._exit_on_sigterm()
        early, self._early = self._early, []
        for body in early:
            self._send(body)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore_sigterm()
        if self.file_publisher is not None:
            self.file_publisher.close()
        if self._link is not None:
            unsent = self._link.close(self.config.flush_timeout)
            if unsent:
                log = OfflineLog(self.config.offline_log)
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

    def publish(self, name: str, value: Any, meta: Mapping[str, str] = {}, timestamp: int | None = None,
                scope: str = "all", timeout: float | None = None) -> None:
        if not (self._entered or self._subscribed_early):
            raise RuntimeError(OUTSIDE_WITH)
        timestamp = timestamp or get_timestamp()
        check_name(name)
        self._publish(name, value, meta, timestamp, scope, timeout)

    def _publish(self, name: str, value: Any, meta: Any, timestamp: Any, scope: Any = "all",
                 timeout: float | None = None) -> None:
        """pywaggle's unchecked-name publish (``upload`` goes this way)."""
        body = reading_body(name, value, meta, timestamp, scope, self.config.identity, allow_reserved=True)
        if scope not in SCOPES and scope not in self._warned_scopes:
            self._warned_scopes.add(scope)
            print(f"hivebus.plugin: scope {scope!r} is not node, beehive or all; published as "
                  f"{wire_scope(scope)!r}", file=sys.stderr)
        if self.file_publisher is not None and name != "upload":
            self.file_publisher.publish(name, value, meta, timestamp)
        if not self._entered:
            self._early.append(body)
            return
        self._send(body, timeout)

    def _send(self, body: dict[str, Any], timeout: float | None = None) -> None:
        if self._link is not None:
            self._link.send(PUBLISH_PREFIX + body["name"], json.dumps(body, separators=(",", ":")).encode(), timeout)
        elif self._offline is not None:
            self._offline.append(body)
        # else: run-log mode with no bus; the run log already has it

    @contextmanager
    def timeit(self, name: str) -> Iterator[None]:
        """Publish the block's duration in nanoseconds; the block runs first, then ``name`` is checked."""
        start = time.perf_counter_ns()
        yield
        self.publish(name, time.perf_counter_ns() - start)

    # subscribing

    def subscribe(self, *topics: str) -> None:
        matchers = [topic_matcher(t) for t in topics]
        subjects = topic_subjects(*topics)
        pairs: list[tuple[str, Callable[[str, bytes], None]]] = []
        with self._topics_lock:
            self._topics += matchers
            for subject in subjects:
                if not any(subject_covers(existing, subject) for existing in self._subjects):
                    self._subjects.append(subject)
                    pairs.append((subject, self._receiver(len(self._subjects) - 1)))
        if not self._entered:
            self._subscribed_early = True
        elif self._link is not None and pairs:
            self._link.subscribe(pairs)

    def _receiver(self, index: int) -> Callable[[str, bytes], None]:
        """Deliver what this subscription carries, unless an older one carries it too."""
        def receive(subject: str, body: bytes) -> None:
            name = subject[len(READINGS_PREFIX):]
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

    def upload_file(self, path: str | os.PathLike[str], meta: Mapping[str, str] = {},
                    timestamp: int | None = None, keep: bool = False) -> None:
        """Upload ``path`` (usable outside ``with``, as in pywaggle); returns None."""
        timestamp = timestamp or get_timestamp()
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"cannot upload {str(path)!r}: no such file")
        if self.file_publisher is not None:
            self.file_publisher.upload_file(source, timestamp, meta)
        if self.uploader is not None:
            labels = {**meta, "filename": source.name}
            staged = self.uploader.upload_file(source, meta=labels, timestamp=timestamp, keep=keep)
            self._publish("upload", staged.name, labels, timestamp)
        elif self.config.local_bus:
            labels = {**{str(k): v for k, v in check_meta(meta).items()}, "filename": source.name,
                      **self.config.identity}
            if self._link is not None:
                self._upload_online(self._link, source, labels, timestamp, keep)
            else:
                link = BusLink(self.config.local_bus, self.config, name=self._client_name())
                link.start()
                try:
                    self._upload_online(link, source, labels, timestamp, keep)
                finally:
                    link.close(self.config.flush_timeout)

    # offload (Home Edge; hivebus's own, not pywaggle's)

    def request_offload(self, bundle: str, resources: Mapping[str, str] | None = None, *,
                        entrypoint: str | None = None, args: list[str] | None = None,
                        env: Mapping[str, str] | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """Ask the node for one execution of ``bundle`` (docs/offload.md): the hub's scheduler
        scores every capable node, this one included, and the execution starts on the best
        one; with no answer from the hub within ``timeout`` s this node runs it. Returns
        ``{"run_on", "local", "decided_by", "scores", "reasons", "request_id", "job_id"}``."""
        if not self.config.local_bus:
            raise RuntimeError("request_offload needs the node's local bus (HIVEBUS_LOCAL_BUS): run the plugin on a node")
        body = json.dumps({"bundle": bundle, "resources": dict(resources or {}), "entrypoint": entrypoint,
                           "args": list(args or []), "env": dict(env or {}), "timeout": timeout}).encode()
        link = self._link
        own = link is None
        if link is None:
            link = BusLink(self.config.local_bus, self.config, name=self._client_name())
            link.start()
        try:
            answer: dict[str, Any] = json.loads(link.request(OFFLOAD_SUBJECT, body, timeout + 5.0))
        finally:
            if own:
                link.close(self.config.flush_timeout)
        if "error" in answer:
            raise ValueError(f"the node refused the offload request: {answer['error']}")
        return answer

    def _upload_online(self, link: BusLink, source: Path, meta: dict[str, str], timestamp: int, keep: bool) -> None:
        staged: Path | None = None
        sent_path, sent_keep = source.resolve(), keep
        if self.config.upload_dir is not None:  # a container: the agent sees only this directory
            staged = self.config.upload_dir / f"{self.config.run_id or 'run'}-{timestamp}-{source.name}"
            shutil.copyfile(source, staged)
            sent_path, sent_keep = staged, False
        request = {"path": str(sent_path), "meta": meta, "timestamp": timestamp, "keep": sent_keep,
                   "run_id": self.config.run_id, "token": self.config.upload_token}
        try:
            reply = link.request(UPLOAD_SUBJECT, json.dumps(request).encode(), self.config.request_timeout)
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
