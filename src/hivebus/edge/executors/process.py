"""The ``process`` executor: a plugin as a local subprocess, limited and measured by the OS.

A run goes through these states, each in its own module:

* **Resolved** (``bundles``): the job's command, or the bundle's ``main.py`` on the plugin
  path; nothing found ends the run as ``not_found`` before anything starts.
* **Launched** (``spawn``): a clean environment with a private ``TMPDIR`` (removed after the
  run), rlimits set by an exec shim that forks the plugin from its own small image; a launch
  that fails ends the run as ``not_found`` (no such program) or ``error``.
* **Running**, watched (``accounting``) for its group's resident memory (SIGKILL at the limit,
  reason ``oom``; ``RLIMIT_AS`` is the backstop for one huge allocation, which fails with
  ``MemoryError`` inside the plugin: the reason is ``oom`` too) and its wall time (SIGTERM to
  the group at the limit, SIGKILL after ``kill_grace`` seconds, reason ``timeout``); CPU time
  is a budget of ``cpu`` cores over ``wall_seconds`` enforced with ``RLIMIT_CPU``. Its output
  is captured line by line (``runlog``): a ring buffer (``logs()``, the tail in the result)
  and, with ``log_dir``, a per-run file capped at ``log_file_max_bytes``.
* **Finished**: the exit is noticed through a pidfd (``processes``; no thread per run),
  ``os.wait4`` gives the plugin's own CPU seconds and peak RSS (the agent is a child
  subreaper, so the forked plugin is re-parented to it; ``measured_cleanly`` says whether
  that worked, else the figures include the agent's floor), members of the group left behind
  are killed and reaped, and the status becomes a result with a reason a user can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final

import structlog

from hivebus.edge.executors.accounting import GroupMemory, perf_of
from hivebus.edge.executors.base import FailureReason, Perf, RunHandle, RunResult, RunSpec
from hivebus.edge.executors.bundles import (
    PLUGIN_PATH_ENV,
    NotRunnable,
    Resolved,
    default_plugin_path,
    find_bundle,
    resolve,
)
from hivebus.edge.executors.processes import become_subreaper, exited, reap_leftovers, signal_group
from hivebus.edge.executors.runlog import MAX_LINE, RunLog
from hivebus.edge.executors.spawn import (
    EXEC_FAILED,
    EXEC_FAILED_MARK,
    INHERITED_ENV,
    MIB,
    ShimLimits,
    default_address_space,
    environment,
    launch,
)
from hivebus.schemas.ecr import AppInput

__all__ = [
    "INHERITED_ENV",
    "MAX_LINE",
    "MIB",
    "NAME",
    "PLUGIN_PATH_ENV",
    "NotRunnable",
    "ProcessExecutor",
    "Resolved",
    "become_subreaper",
    "default_address_space",
    "default_plugin_path",
    "find_bundle",
]

log = structlog.get_logger()

NAME: Final = "process"
_MEMORY_MARKERS: Final = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "out of memory")


class ProcessExecutor:
    """Runs plugins as subprocesses of the agent. See the module docstring for the rules."""

    name = NAME

    def __init__(
        self,
        *,
        plugin_path: Sequence[str | os.PathLike[str]] | None = None,
        python: str = sys.executable,
        kill_grace: float = 5.0,
        memory_poll: float = 0.05,
        address_space: Callable[[int], int] | None = None,
        tail_lines: int = 20,
        buffer_lines: int = 1000,
        log_dir: str | os.PathLike[str] | None = None,
        log_file_max_bytes: int = 10 * MIB,
        scratch_dir: str | os.PathLike[str] | None = None,
        inherit_env: Sequence[str] = INHERITED_ENV,
    ) -> None:
        self.plugin_path = [Path(p) for p in plugin_path] if plugin_path is not None else None
        self.python = python
        self.kill_grace = kill_grace
        self.memory_poll = memory_poll
        self.address_space = address_space or default_address_space
        self.tail_lines = tail_lines
        self.buffer_lines = buffer_lines
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.log_file_max_bytes = log_file_max_bytes
        self.scratch_dir = Path(scratch_dir) if scratch_dir is not None else None
        self.inherit_env = tuple(inherit_env)
        self._background: set[asyncio.Task[None]] = set()

    def available(self) -> str | None:
        if os.name != "posix" or not sys.platform.startswith("linux"):
            return "the process executor needs Linux (rlimits, process groups, /proc)"
        return None

    @property
    def measured_cleanly(self) -> bool:
        """True when max RSS is the plugin's own (the agent is a subreaper; see "Finished")."""
        return become_subreaper()

    # --- the port -----------------------------------------------------------------------

    async def start(self, spec: RunSpec) -> RunHandle:
        run = _Run(spec, RunLog(self.buffer_lines))
        handle = RunHandle(spec=spec, ref=run)
        try:
            resolved = self.resolve(spec)
        except NotRunnable as exc:
            run.finish_early("not_found", str(exc))
            log.info("executor.not_found", executor=NAME, run_id=spec.run_id, reason=str(exc))
            return handle
        try:
            await self._launch(run, resolved)
        except Exception as exc:
            run.kill_group()
            run.cleanup()
            reason: FailureReason = "not_found" if isinstance(exc, FileNotFoundError) else "error"
            detail = getattr(exc, "strerror", None) or str(exc)
            run.finish_early(reason, f"cannot start {resolved.argv[0]}: {detail}")
            log.warning("executor.start_failed", executor=NAME, run_id=spec.run_id, error=detail)
            return handle
        log.info("executor.started", executor=NAME, run_id=spec.run_id, pid=run.pid, origin=resolved.origin)
        return handle

    async def wait(self, handle: RunHandle) -> RunResult:
        return await asyncio.shield(_run_of(handle).result)

    async def stop(self, handle: RunHandle) -> None:
        run = _run_of(handle)
        await run.terminate("stopped", "stopped on request", self.kill_grace)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.kill_grace + 5.0):
                await asyncio.shield(run.result)

    async def logs(self, handle: RunHandle, lines: int = 50) -> list[str]:
        return _run_of(handle).output.tail(lines)

    # --- command resolution -------------------------------------------------------------

    def resolve(self, spec: RunSpec) -> Resolved:
        """The argv to run for ``spec``; ``NotRunnable`` says what is missing."""
        return resolve(spec, self.python, self.plugin_path)

    def find_bundle(self, bundle_id: str) -> tuple[Path, list[AppInput]]:
        """The directory holding ``main.py`` for ``namespace/name:version``, and its inputs."""
        roots = self.plugin_path if self.plugin_path is not None else default_plugin_path()
        return find_bundle(roots, bundle_id, ("main.py",))

    # --- launching and supervising ------------------------------------------------------

    async def _launch(self, run: _Run, resolved: Resolved) -> None:
        spec = run.spec
        if self.scratch_dir is not None:
            self.scratch_dir.mkdir(parents=True, exist_ok=True)
        run.scratch = Path(tempfile.mkdtemp(prefix=f"hivebus-run-{_safe(spec.run_id)}-", dir=self.scratch_dir))
        limits = ShimLimits.of(spec.limits, self.address_space)
        run.cpu_budget = limits.cpu_budget
        fork = become_subreaper()
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            file = open(self.log_dir / f"{_safe(spec.run_id)}.log", "ab")  # noqa: SIM115 - closed with the run
            run.output.to_file(file, self.log_file_max_bytes)
        launched = await launch(
            self.python,
            resolved.argv,
            limits,
            fork=fork,
            cwd=resolved.cwd or run.scratch,
            env=environment(spec, run.scratch, self.inherit_env),
            output=run.output,
            tasks=run.tasks,
            background=self._in_background,
        )
        run.started, run.pid, run.shim = launched.started, launched.pid, launched.shim
        run.tasks.append(asyncio.create_task(self._supervise(run)))

    async def _supervise(self, run: _Run) -> None:
        """Watch memory and wall time until the plugin exits, then report."""
        limits = run.spec.limits
        watchers = [asyncio.create_task(self._watch_memory(run, limits.memory_bytes))]
        if limits.wall_seconds:
            watchers.append(asyncio.create_task(self._watch_wall(run, limits.wall_seconds)))
        try:
            status, usage = await exited(run.pid, before_reaping=run.kill_group)
        except Exception as exc:  # the executor itself failed; say so rather than hang
            log.exception("executor.wait_failed", executor=NAME, run_id=run.spec.run_id)
            run.set_result(RunResult(state="failed", reason="error", message=f"waiting for the plugin failed: {exc}"))
            return
        finally:
            for w in watchers:
                w.cancel()
        wall = time.monotonic() - run.started
        if run.shim is not None and run.shim.pid == run.pid:
            run.shim.returncode = os.waitstatus_to_exitcode(status)
        self._in_background(reap_leftovers(run.pid))
        await run.output.done(timeout=1.0)
        run.cleanup()
        perf = perf_of(usage, wall)
        result = run.classify(status, perf, self.tail_lines)
        run.set_result(result)
        log.info(
            "executor.finished", executor=NAME, run_id=run.spec.run_id, state=result.state,
            reason=result.reason, exit_code=result.exit_code, cpu_seconds=round(perf.cpu_seconds, 3),
            max_rss_bytes=perf.max_rss_bytes, wall_seconds=round(wall, 3),
        )

    async def _watch_memory(self, run: _Run, limit: int | None) -> None:
        rss = await run.memory.watch(limit, self.memory_poll)
        assert limit is not None
        await run.terminate(
            "oom",
            f"resident memory reached {rss / MIB:.1f} MiB, over its {limit / MIB:.1f} MiB limit; killed",
            grace=0.0,
        )

    async def _watch_wall(self, run: _Run, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await run.terminate("timeout", f"still running at its {seconds:g} s wall-time limit", self.kill_grace)

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


# --- one run: its state and how it ends ----------------------------------------------------


class _Run:
    """One run's state: launched (``pid``), maybe being killed (``kill_reason``), finished
    (``result`` done). A result is set once; a second ending is ignored."""

    def __init__(self, spec: RunSpec, output: RunLog) -> None:
        self.spec = spec
        self.output = output
        self.pid = 0  # the plugin's pid, also its process group id
        self.shim: subprocess.Popen[bytes] | None = None  # once launched
        self.started = 0.0
        self.scratch: Path | None = None
        self.cpu_budget: float | None = None
        self.kill_reason: FailureReason | None = None
        self.kill_message = ""
        self.killed_hard = False
        self.tasks: list[asyncio.Task[None]] = []
        self.result: asyncio.Future[RunResult] = asyncio.get_running_loop().create_future()
        self._memory: GroupMemory | None = None

    @property
    def memory(self) -> GroupMemory:
        if self._memory is None:
            self._memory = GroupMemory(self.pid)
        return self._memory

    def set_result(self, result: RunResult) -> None:
        self.output.close_file()
        if not self.result.done():
            self.result.set_result(result)

    def finish_early(self, reason: FailureReason, message: str) -> None:
        self.output.note(message)
        self.output.closed()
        tail = tuple(self.output.tail(5))
        self.set_result(RunResult(state="failed", reason=reason, message=message, log_tail=tail))

    def cleanup(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def kill_group(self) -> None:
        """SIGKILL whatever is left of the plugin's process group (a run ends with its main process)."""
        if self.pid:
            signal_group(self.pid, signal.SIGKILL)

    async def terminate(self, reason: FailureReason, message: str, grace: float) -> None:
        """SIGTERM the process group, SIGKILL after ``grace`` (at once when it is 0)."""
        if self.result.done() or self.kill_reason is not None or not self.pid:
            return
        self.kill_reason, self.kill_message = reason, message
        log.info("executor.terminating", executor=NAME, run_id=self.spec.run_id, reason=reason, message=message)
        if grace > 0:
            signal_group(self.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await asyncio.shield(self.result)
            if self.result.done():
                return
        self.killed_hard = True
        signal_group(self.pid, signal.SIGKILL)

    def classify(self, status: int, perf: Perf, tail_lines: int) -> RunResult:
        """Turn an exit status into a result with a reason a user can act on."""
        code = os.waitstatus_to_exitcode(status)  # negative: killed by that signal
        exit_code = 128 - code if code < 0 else code  # the shell's convention for signals
        tail = tuple(self.output.tail(tail_lines))

        def failed(reason: FailureReason, message: str) -> RunResult:
            return RunResult(state="failed", reason=reason, message=message, exit_code=exit_code, perf=perf, log_tail=tail)

        if self.kill_reason is not None:
            hard = self.killed_hard and self.kill_reason != "oom"
            return failed(self.kill_reason, self.kill_message + (" (SIGKILL after the grace period)" if hard else ""))
        if code == 0:
            return RunResult(state="completed", exit_code=0, perf=perf, log_tail=tail, message="exited with code 0")
        if code < 0:
            sig = signal.Signals(-code)
            budget, limits = self.cpu_budget, self.spec.limits
            if budget is not None and (sig == signal.SIGXCPU or (sig == signal.SIGKILL and perf.cpu_seconds >= budget)):
                return failed("timeout", f"used up its CPU-time budget of {budget:g} s ({limits.cpu:g} cores x {limits.wall_seconds:g} s)")
            return failed("exit", f"killed by signal {sig.name}")
        last = "\n".join(tail[-5:])
        if code == EXEC_FAILED and EXEC_FAILED_MARK + "cannot run" in last:
            return failed("not_found", next(t for t in reversed(tail) if EXEC_FAILED_MARK in t).split(EXEC_FAILED_MARK, 1)[1])
        limit = self.spec.limits.memory_bytes
        if limit and any(marker in last for marker in _MEMORY_MARKERS):
            return failed("oom", f"ran out of memory under its {limit / MIB:.1f} MiB limit (exited with code {code})")
        return failed("exit", f"exited with code {code}")


def _run_of(handle: RunHandle) -> _Run:
    if not isinstance(handle.ref, _Run):
        raise TypeError(f"run {handle.spec.run_id} was not started by the process executor")
    return handle.ref


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]
