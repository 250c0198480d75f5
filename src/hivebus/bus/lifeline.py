"""Child processes that die with this process, however it dies (SIGKILL and OOM kills too).

On Linux the kernel can signal a child when its parent dies (``PR_SET_PDEATHSIG``), but
"parent" there means the *thread* that forked it: a child forked from a worker thread
(``asyncio.to_thread``, a pool) is signalled as soon as that thread ends, while this
process lives on -- which is why such children used to go without the signal, and outlived
a killed ``hivebus up``. So every child is forked by one spawner thread that lives exactly
as long as the process. When the process dies, for any reason, the kernel SIGTERMs each
child (nats-server then shuts down cleanly; a node agent stops its goals and closes its
outbox). ``tests/faults/test_up_kill.py`` measures how soon they are gone.

The signal is set by util-linux's ``setpriv --pdeathsig TERM``, which execs the child in
place (same pid), not by a ``preexec_fn``: Python code run between fork and exec in a
process with threads (DuckDB's, pyarrow's, asyncio's) crashed the child with SIGSEGV about
once in a few dozen starts under the test suite. Without ``setpriv`` (or elsewhere than
Linux) children are started as usual; then the pid file check in ``hivebus.bus.leftover`` is
what stops a previous run's server.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Any, cast

_SETPRIV = shutil.which("setpriv")

_Request = tuple[list[str], dict[str, Any], "Future[subprocess.Popen[bytes]]"]
_requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


def spawn(argv: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **popen)``, the child SIGTERMed by the kernel if we die."""
    if "preexec_fn" in popen:
        raise TypeError("spawn sets preexec_fn itself")
    if not sys.platform.startswith("linux") or _SETPRIV is None:
        return subprocess.Popen(argv, **popen)
    if shutil.which(argv[0]) is None:  # as Popen would, not an exit status of setpriv's
        raise FileNotFoundError(2, "No such file or directory", argv[0])
    done: Future[subprocess.Popen[bytes]] = Future()
    _requests.put((argv, popen, done))
    _ensure_spawner()
    return done.result()


def _ensure_spawner() -> None:
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():
            # A daemon thread is never joined at exit: it ends only with the process.
            _spawner = threading.Thread(target=_serve, name="hivebus-spawner", daemon=True)
            _spawner.start()


def _serve() -> None:
    assert _SETPRIV is not None
    while True:
        argv, popen, done = _requests.get()
        if not done.set_running_or_notify_cancel():
            continue
        try:
            # bytes: callers pass no text=/encoding= (spawn's own signature says so)
            child = subprocess.Popen([_SETPRIV, "--pdeathsig", "TERM", "--", *argv], **popen)
            done.set_result(cast("subprocess.Popen[bytes]", child))
        except BaseException as exc:  # handed to the caller, who raises it
            done.set_exception(exc)
