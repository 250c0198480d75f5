"""The older module-level form: ``from hivebus import plugin; plugin.init(); plugin.publish(...)``.

One process-wide ``Plugin``, entered by ``init`` (or the first call) and left at exit, so what
is queued is delivered. pywaggle 0.56.3 no longer has this form; hivebus keeps it.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from hivebus.plugin.config import PluginConfig
from hivebus.plugin.plugin import Plugin
from hivebus.plugin.topics import Message

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
                timestamp: int | None = None, keep: bool = False) -> None:
    init().upload_file(path, meta=meta, timestamp=timestamp, keep=keep)


@contextmanager
def timeit(name: str) -> Iterator[None]:
    with init().timeit(name):
        yield
