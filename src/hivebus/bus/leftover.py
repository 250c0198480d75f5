"""A nats-server left running on a store dir by an earlier run, found by its pid file.

If a ``hivebus up`` could not stop its server (a kill on a system without parent-death
signals, a server started by hand with ``hivebus server`` and forgotten), the next start on
the same data dir finds it here: the pid file names it and ``/proc`` shows it runs this
store's config file. Such a server is ours to stop (SIGTERM: JetStream flushes and shuts
down cleanly); a process that merely holds the port is someone else's and is refused by
the port check instead.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from pathlib import Path

import structlog

from hivebus.bus.server_config import CONFIG_FILE, PID_FILE

log = structlog.get_logger()


def server_of(store_dir: Path) -> int | None:
    """Pid of a live nats-server running ``store_dir``'s config, or None."""
    try:
        pid = int((store_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and _runs_config(pid, (store_dir / CONFIG_FILE).resolve()) else None


def stop_leftover(store_dir: Path, timeout: float = 15.0) -> int | None:
    """Stop the server :func:`server_of` finds (SIGTERM, SIGKILL after ``timeout``); its pid."""
    pid = server_of(store_dir)
    if pid is None:
        return None
    log.warning("nats.leftover_stopping", pid=pid, store_dir=str(store_dir))
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        log.warning("nats.leftover_kill", pid=pid, timeout=timeout)
        _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    log.warning("nats.leftover_stopped", pid=pid, store_dir=str(store_dir))
    return pid


def _runs_config(pid: int, config: Path) -> bool:
    proc = Path(f"/proc/{pid}")
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
        cwd = Path(os.readlink(proc / "cwd"))
    except OSError:
        return False
    if not argv or not os.path.basename(argv[0]).startswith(b"nats-server"):
        return False
    for flag, value in itertools.pairwise(argv):
        if flag in (b"-c", b"--config"):
            return (cwd / os.fsdecode(value)).resolve() == config
    return False


def _alive(pid: int) -> bool:
    # A zombie (a dead child of some process that has not reaped it) counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
