"""The operating system's side of a plugin's process group: waiting, signalling, reaping.

Everything here reads ``/proc`` or calls the kernel directly and holds no state of a run:

* :func:`become_subreaper` makes the agent adopt orphaned descendants, so a plugin forked
  by the exec shim is re-parented to the agent and ``wait4`` gives its own figures;
* :func:`exited` waits for a child through a pidfd (no thread per run) and returns what
  ``wait4`` accounted to it;
* :func:`descendants` / :func:`adopted_members` find what is left of a group, and
  :func:`reap_leftovers` reaps the killed members that were re-parented to the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from typing import Final

import structlog

log = structlog.get_logger()

_PR_SET_CHILD_SUBREAPER: Final = 36
_subreaper: bool | None = None


def become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (once; False where impossible)."""
    global _subreaper
    if _subreaper is None:
        _subreaper = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
            except (OSError, AttributeError):
                pass
        if not _subreaper:
            log.warning("executor.no_subreaper", detail="max RSS of plugins includes the agent's own")
    return _subreaper


def pid_in(line: bytes) -> int:
    """The pid a launcher wrote as one line, or 0 when the line is not one."""
    text = line.strip()
    return int(text) if text.isdigit() else 0


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pgid``; a group already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def read_line(fd: int, timeout: float) -> bytes:
    """One short line from a pipe, without blocking the loop; b"" at end of file."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    data = b""
    ready = asyncio.Event()
    loop.add_reader(fd, ready.set)
    try:
        async with asyncio.timeout(timeout):
            while not data.endswith(b"\n"):
                await ready.wait()
                ready.clear()
                try:
                    chunk = os.read(fd, 64)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                data += chunk
    finally:
        loop.remove_reader(fd)
    return data


async def exited(
    pid: int, before_reaping: Callable[[], None] | None = None
) -> tuple[int, resource.struct_rusage]:
    """Wait for our child ``pid`` to exit; (wait status, its rusage) from ``os.wait4``.

    ``before_reaping`` runs while the exited process is still a zombie, so its pid (and
    process group id) cannot have been reused yet.
    """
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        _, status, usage = await asyncio.to_thread(os.wait4, pid, 0)  # no pidfd: a thread
        return status, usage
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    if before_reaping is not None:
        before_reaping()
    _, status, usage = os.wait4(pid, 0)
    return status, usage


def group_of(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, process group id, state) of ``pid`` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]), int(fields[2]), fields[0].decode()


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` still parented to it, from /proc's children lists."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                continue
            found += children
            stack += children
    return found


def adopted_members(pgid: int) -> list[int]:
    """Live members of group ``pgid`` other than its leader; exited ones we adopted are reaped."""
    me = os.getpid()
    members: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        pid = int(entry.name)
        info = group_of(pid)
        if info is None or info[1] != pgid:
            continue
        ppid, _, state = info
        if state != "Z":
            members.append(pid)
        elif ppid == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
    return members


async def reap_leftovers(pgid: int, within: float = 5.0) -> None:
    """Reap the killed members of a finished plugin's group that were re-parented to us."""
    me = os.getpid()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pending = [
            pid for pid in (int(e.name) for e in os.scandir("/proc") if e.name.isdigit())
            if (info := group_of(pid)) is not None and info[1] == pgid and info[0] == me
        ]
        if not pending:
            return
        for pid in pending:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        await asyncio.sleep(0.1)
