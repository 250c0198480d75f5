"""The files a plugin writes when it runs outside a node, or when its bus did not answer.

``RunLog`` is pywaggle's run-log mode (``PYWAGGLE_LOG_DIR``), byte for byte: ``data.ndjson``
gets one line per reading, ``{"meta", "name", "timestamp", "value"}`` as compact JSON with sorted
keys, the meta as the plugin gave it, the timestamp written as pywaggle writes it (local time
from ``datetime.fromtimestamp(ns / 1e9).isoformat()`` followed by the three nanosecond digits),
a bool as ``true``, NaN as ``NaN`` (Python's json, which ``sage_data_client.load`` reads); an
upload is copied to ``uploads/<timestamp>-<filename>`` (the source is kept) and logged as an
``upload`` reading whose value is that copy's absolute path and whose meta has ``filename``.

``OfflineLog`` is hivebus's own: the hub ``Reading`` bodies, one per line, for what had no bus.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import IO, Any


def isoformat_time_ns(ns: int) -> str:
    """pywaggle's run-log time: local ``isoformat()`` of ``ns / 1e9``, then ``ns % 1000`` as 3 digits."""
    return datetime.fromtimestamp(ns / 1e9).isoformat() + f"{ns % 1000:03d}"


class RunLog:
    """``PYWAGGLE_LOG_DIR``: created when the plugin is built, as pywaggle does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.uploads = root / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file: IO[str] | None = open(root / "data.ndjson", "a")  # noqa: SIM115 - closed by close()

    def publish(self, name: str, value: Any, meta: Mapping[Any, str], timestamp: int) -> None:
        line = json.dumps(
            {"name": name, "value": value, "meta": dict(meta), "timestamp": isoformat_time_ns(timestamp)},
            sort_keys=True, separators=(",", ":"),
        )
        with self._lock:
            if self._file is None:  # pywaggle's file is closed at exit too; reopen rather than fail
                self._file = open(self.root / "data.ndjson", "a")  # noqa: SIM115
            print(line, file=self._file, flush=True)

    def upload_file(self, path: Path, timestamp: int, meta: Mapping[Any, str]) -> None:
        target = self.uploads / f"{timestamp}-{path.name}"
        shutil.copyfile(path, target)
        labels = dict(meta)
        labels["filename"] = path.name
        self.publish("upload", str(target.absolute()), labels, timestamp)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class OfflineLog:
    """hivebus ``Reading`` bodies as ndjson lines, appended as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None

    def append(self, body: dict[str, Any] | bytes) -> None:
        line = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
            self._file.write(line + b"\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
