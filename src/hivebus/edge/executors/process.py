"""The ``process`` executor: a plugin as a local subprocess, limited and measured by the OS.

How a run goes:

* **Command.** ``RunSpec.command`` (+ ``args``) when the job gives one; otherwise the bundle's
  ``main.py`` found on the plugin path (``HIVEBUS_PLUGIN_PATH``, then the repository's
  ``examples/plugins``) as ``<name>/main.py`` or ``<namespace>/<name>/main.py``, run with this
  Python and the defaults of the inputs its ``sage.yaml`` declares. A leading ``python`` /
  ``python3`` means this interpreter, so the plugin imports the SDK it was written against.
  Nothing found is reported as ``not_found`` before anything starts.
* **Environment.** A clean one: a few inherited basics (``PATH``, locale, ``HOME``...), the
  node-local-bus variables (``base.plugin_environment``) and a private ``TMPDIR`` removed
  after the run. The agent's own settings (hub URL, credentials) never reach a plugin. A run
  that did not ask for a GPU gets ``CUDA_VISIBLE_DEVICES=""`` (the job's env may override).
* **Limits.** Memory: the resident set of the plugin's process group is watched with psutil
  and the group is SIGKILLed at the limit (the kernel OOM killer's way); ``RLIMIT_AS`` is set
  with headroom as a backstop against one huge allocation, which then fails with
  ``MemoryError`` inside the plugin — either way the reason is ``oom``. The headroom is needed
  because address space is not memory: every thread reserves a 64 MiB malloc arena and a
  stack, so a 25 MiB Python process with one thread already maps ~100 MiB. CPU: ``cpu`` cores
  over ``wall_seconds`` is a CPU-time budget enforced with ``RLIMIT_CPU``. Wall time: SIGTERM
  to the group at the limit, SIGKILL after ``kill_grace`` seconds; reason ``timeout``.
  Limits are applied by a tiny exec shim (``setrlimit`` then ``execv``), not ``preexec_fn``,
  which CPython documents as unsafe in a process with threads (the agent has several).
* **Measurement.** ``os.wait4`` gives what the kernel accounted to the plugin: user + system
  CPU seconds and the peak resident set (including children it waited for); wall time is
  measured from spawn to exit. The exit is noticed through a pidfd, so no thread per run.
  A process's ``ru_maxrss`` starts at the high-water mark of whatever it was forked from
  (the kernel carries it across ``exec``), so a plugin forked by the agent would report at
  least the agent's own RSS. The shim therefore *forks* the plugin from its own small image
  and exits; the agent is a child subreaper (``PR_SET_CHILD_SUBREAPER``), so the plugin is
  re-parented to it and ``wait4`` gives the plugin's own figures. Where that is impossible
  the shim simply ``exec``s (figures then include that floor; ``measured_cleanly`` says which).
  Members of the plugin's process group left behind are killed at its exit and reaped.
* **Logs.** stdout and stderr, merged, line by line into a ring buffer (``logs()``, the tail
  in the result) and, with ``log_dir``, a per-run file capped at ``log_file_max_bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import psutil
import structlog

from hivebus.edge.executors.base import (
    FailureReason,
    Perf,
    RunHandle,
    RunResult,
    RunSpec,
    input_args,
    plugin_environment,
)
from hivebus.edge.shim import plugin_pythonpath
from hivebus.errors import FormatError
from hivebus.schemas.ecr import AppInput

log = structlog.get_logger()

NAME: Final = "process"
PLUGIN_PATH_ENV: Final = "HIVEBUS_PLUGIN_PATH"
INHERITED_ENV: Final = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM")
MIB: Final = 2**20
MAX_LINE: Final = 1000  # characters kept of one log line
_EXEC_FAILED: Final = 127  # the shell's "command not found"
_MEMORY_MARKERS: Final = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "out of memory")

# Runs first: forks the plugin from this small image (see "Measurement"), or becomes it.
_SHIM: Final = """\
import os, resource, sys
fd, address_space, cpu_soft, cpu_hard, fork = (int(v) for v in sys.argv[1:6])
argv = sys.argv[6:]
pid = os.fork() if fork else 0
if pid:
    os.write(fd, b"%d\\n" % pid)
    os._exit(0)
if fork:
    os.setsid()
else:
    os.write(fd, b"%d\\n" % os.getpid())
os.close(fd)
if address_space > 0:
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
if cpu_soft > 0:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_soft, cpu_hard))
try:
    os.execv(argv[0], argv)
except OSError as exc:
    sys.stderr.write(f"hivebus-exec: cannot run {argv[0]}: {exc.strerror}\\n")
    os._exit(127)
"""


def default_plugin_path() -> list[Path]:
    """``HIVEBUS_PLUGIN_PATH`` (colon-separated), then the repository's ``examples/plugins``."""
    paths = [Path(p) for p in os.environ.get(PLUGIN_PATH_ENV, "").split(os.pathsep) if p]
    examples = Path(__file__).resolve().parents[4] / "examples" / "plugins"
    if examples.is_dir():
        paths.append(examples)
    return paths


@dataclass(frozen=True)
class Resolved:
    """What to execute for a spec: argv, working directory, and where it came from."""

    argv: tuple[str, ...]
    cwd: Path | None
    origin: str


class NotRunnable(Exception):
    """The spec names no command or bundle that exists here (reported as ``not_found``)."""


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
        """True when max RSS is the plugin's own (the agent is a subreaper; see "Measurement")."""
        return become_subreaper()

    # --- the port -----------------------------------------------------------------------

    async def start(self, spec: RunSpec) -> RunHandle:
        run = _Run(spec, buffer_lines=self.buffer_lines)
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
            await asyncio.wait_for(asyncio.shield(run.result), self.kill_grace + 5.0)

    async def logs(self, handle: RunHandle, lines: int = 50) -> list[str]:
        return _run_of(handle).tail(lines)

    # --- command resolution -------------------------------------------------------------

    def resolve(self, spec: RunSpec) -> Resolved:
        """The argv to run for ``spec``; ``NotRunnable`` says what is missing."""
        if spec.workdir is not None and not spec.workdir.is_dir():
            raise NotRunnable(f"working directory {spec.workdir} does not exist")
        if spec.command:
            program, *rest = spec.command
            if program in ("python", "python3"):
                program = self.python
            elif "/" in program:
                path = Path(program) if Path(program).is_absolute() else (spec.workdir or Path.cwd()) / program
                if not path.is_file():
                    raise NotRunnable(f"command {program!r} does not exist (looked at {path})")
                program = str(path)
            else:
                found = shutil.which(program, path=os.environ.get("PATH", os.defpath))
                if found is None:
                    raise NotRunnable(f"command {program!r} is not on PATH")
                program = found
            return Resolved((program, *rest, *spec.args), spec.workdir, "command")
        bundle_dir, inputs = self.find_bundle(spec.bundle_id)
        argv = (self.python, str(bundle_dir / "main.py"), *input_args(inputs, spec.args))
        return Resolved(argv, spec.workdir or bundle_dir, str(bundle_dir))

    def find_bundle(self, bundle_id: str) -> tuple[Path, list[AppInput]]:
        """The directory holding ``main.py`` for ``namespace/name:version``, and its inputs.

        A directory whose sage.yaml names another namespace, name or version is skipped (a
        run must execute the version it reports), and the error lists what was found instead.
        """
        roots = self.plugin_path if self.plugin_path is not None else default_plugin_path()
        return find_bundle(roots, bundle_id, ("main.py",))

    # --- launching ----------------------------------------------------------------------

    def _environment(self, spec: RunSpec, tmpdir: Path) -> dict[str, str]:
        env = {k: os.environ[k] for k in self.inherit_env if k in os.environ}
        env.setdefault("PATH", os.defpath)
        env["PYTHONUNBUFFERED"] = "1"  # log lines arrive as they are printed
        env["TMPDIR"] = str(tmpdir)
        if not spec.limits.gpu:  # as under docker without a device request: no GPU unless asked
            env["CUDA_VISIBLE_DEVICES"] = ""
        env.update(plugin_environment(spec))
        env["PYTHONPATH"] = plugin_pythonpath(env.get("PYTHONPATH"))  # `import waggle.plugin` is hivebus's
        return env

    async def _launch(self, run: _Run, resolved: Resolved) -> None:
        spec, limits = run.spec, run.spec.limits
        if self.scratch_dir is not None:
            self.scratch_dir.mkdir(parents=True, exist_ok=True)
        run.scratch = Path(tempfile.mkdtemp(prefix=f"hivebus-run-{_safe(spec.run_id)}-", dir=self.scratch_dir))
        address_space = self.address_space(limits.memory_bytes) if limits.memory_bytes else 0
        cpu_soft = cpu_hard = 0
        if limits.cpu and limits.wall_seconds:
            run.cpu_budget = limits.cpu * limits.wall_seconds
            cpu_soft = max(1, int(run.cpu_budget + 0.999))
            cpu_hard = cpu_soft + 2  # SIGXCPU at the soft limit, SIGKILL at the hard one
        fork = become_subreaper()
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            run.log_file = open(self.log_dir / f"{_safe(spec.run_id)}.log", "ab")  # noqa: SIM115 - closed with the run
            run.log_file_budget = self.log_file_max_bytes
        pid_r, pid_w = os.pipe()
        try:
            run.started = time.monotonic()
            shim = subprocess.Popen(
                [self.python, "-S", "-I", "-c", _SHIM, str(pid_w), str(address_space),
                 str(cpu_soft), str(cpu_hard), str(int(fork)), *resolved.argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=resolved.cwd or run.scratch,
                env=self._environment(spec, run.scratch),
                start_new_session=not fork,  # forked plugins call setsid themselves
                pass_fds=(pid_w,),
            )
        except BaseException:
            os.close(pid_r)
            raise
        finally:
            os.close(pid_w)
        run.tasks.append(asyncio.create_task(run.read_output(shim.stdout)))  # type: ignore[arg-type]
        line = b""
        try:
            try:
                line = await _read_line(pid_r, timeout=30.0)
            finally:
                os.close(pid_r)
            if fork:
                shim_status, _ = await _exited(shim.pid)
                shim.returncode = os.waitstatus_to_exitcode(shim_status)  # reaped by us, not Popen
            if not line.strip().isdigit():
                raise RuntimeError("the launcher exited before starting the plugin: " + " | ".join(run.tail(3)))
        except BaseException:  # never leave a half-started plugin behind (cancelled, timed out...)
            if plugin_pid := _pid_in(line):
                _signal_group(plugin_pid, signal.SIGKILL)
                self._in_background(_reap_leftovers(plugin_pid))
            if shim.returncode is None:
                shim.kill()
                with contextlib.suppress(Exception):
                    status, _ = await asyncio.shield(_exited(shim.pid))
                    shim.returncode = os.waitstatus_to_exitcode(status)
            await run.output_done(timeout=1.0)
            raise
        run.pid = int(line)
        run.shim = shim
        run.tasks.append(asyncio.create_task(self._supervise(run)))

    async def _supervise(self, run: _Run) -> None:
        """Watch memory and wall time until the plugin exits, then report."""
        limits = run.spec.limits
        watchers = [asyncio.create_task(self._watch_group(run, limits.memory_bytes))]
        if limits.wall_seconds:
            watchers.append(asyncio.create_task(self._watch_wall(run, limits.wall_seconds)))
        try:
            status, usage = await _exited(run.pid, before_reaping=run.kill_group)
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
        self._in_background(_reap_leftovers(run.pid))
        await run.output_done(timeout=1.0)
        run.cleanup()
        perf = Perf(
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            max_rss_bytes=usage.ru_maxrss * 1024,  # kilobytes on Linux
            wall_seconds=wall,
        )
        result = run.classify(status, perf, self.tail_lines)
        run.set_result(result)
        log.info(
            "executor.finished", executor=NAME, run_id=run.spec.run_id, state=result.state,
            reason=result.reason, exit_code=result.exit_code, cpu_seconds=round(perf.cpu_seconds, 3),
            max_rss_bytes=perf.max_rss_bytes, wall_seconds=round(wall, 3),
        )

    async def _watch_group(self, run: _Run, limit: int | None) -> None:
        """Sum the resident memory of the plugin and its descendants; kill them past ``limit``.

        Descendants are read from ``/proc/<pid>/task/*/children`` on every poll (microseconds),
        so a child that allocates fast is seen at once; once a second a scan of /proc adds
        members of the group re-parented to the agent and reaps those that have exited.
        """
        procs: dict[int, psutil.Process] = {}
        adopted: set[int] = set()
        poll = self.memory_poll if limit else 1.0  # without a limit: only reap adopted orphans
        scan_every = max(1, round(1.0 / poll))
        tick = 0
        while True:
            if tick % scan_every == 0:
                adopted = set(_adopted_members(run.pid))
            tick += 1
            pids = {run.pid, *_descendants(run.pid), *adopted}
            rss = 0
            for pid in pids:
                proc = procs.get(pid)
                try:
                    if proc is None:
                        proc = procs[pid] = psutil.Process(pid)
                    rss += proc.memory_info().rss
                except psutil.Error:
                    procs.pop(pid, None)
            for gone in procs.keys() - pids:
                del procs[gone]
            run.peak_rss = max(run.peak_rss, rss)
            if limit and rss > limit:
                await run.terminate(
                    "oom",
                    f"resident memory reached {rss / MIB:.1f} MiB, over its {limit / MIB:.1f} MiB limit; killed",
                    grace=0.0,
                )
                return
            await asyncio.sleep(poll)

    async def _watch_wall(self, run: _Run, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await run.terminate("timeout", f"still running at its {seconds:g} s wall-time limit", self.kill_grace)

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


# --- one run ------------------------------------------------------------------------------


@dataclass(eq=False)
class _Run:
    spec: RunSpec
    buffer_lines: int
    pid: int = 0  # the plugin's pid, also its process group id
    shim: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    scratch: Path | None = None
    cpu_budget: float | None = None
    peak_rss: int = 0
    kill_reason: FailureReason | None = None
    kill_message: str = ""
    killed_hard: bool = False
    log_file: IO[bytes] | None = None
    log_file_budget: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    lines: deque[str] = field(init=False)
    result: asyncio.Future[RunResult] = field(init=False)
    _partial: bytes = b""
    _output_closed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.lines = deque(maxlen=self.buffer_lines)
        self.result = asyncio.get_running_loop().create_future()

    def tail(self, n: int) -> list[str]:
        return list(self.lines)[-n:] if n > 0 else []

    def set_result(self, result: RunResult) -> None:
        if self.log_file is not None:
            with contextlib.suppress(OSError):
                self.log_file.close()
            self.log_file = None
        if not self.result.done():
            self.result.set_result(result)

    def finish_early(self, reason: FailureReason, message: str) -> None:
        self.lines.append(f"hivebus: {message}")
        self._output_closed.set()
        tail = tuple(self.tail(5))
        self.set_result(RunResult(state="failed", reason=reason, message=message, log_tail=tail))

    def cleanup(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def kill_group(self) -> None:
        """SIGKILL whatever is left of the plugin's process group (a run ends with its main process)."""
        if self.pid:
            _signal_group(self.pid, signal.SIGKILL)

    # output

    async def read_output(self, pipe: IO[bytes]) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**20)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        try:
            while chunk := await reader.read(65536):
                self._take(chunk)
        finally:
            transport.close()
            if self._partial:
                self._line(self._partial)
                self._partial = b""
            self._output_closed.set()

    def _take(self, chunk: bytes) -> None:
        if self.log_file is not None and self.log_file_budget > 0:
            part = chunk[: self.log_file_budget]
            self.log_file_budget -= len(part)
            with contextlib.suppress(OSError):
                self.log_file.write(part)
                if self.log_file_budget <= 0:
                    self.log_file.write(b"\n[hivebus: log file limit reached; later output only in the tail]\n")
                self.log_file.flush()
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        for raw in complete:
            self._line(raw)
        if len(self._partial) > 4 * MAX_LINE:  # a very long line without a newline
            self._line(self._partial)
            self._partial = b""

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self.lines.append(text if len(text) <= MAX_LINE else text[:MAX_LINE] + "…")

    async def output_done(self, timeout: float) -> None:
        """Let the reader drain what was written; a leftover holding the pipe is not waited for."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._output_closed.wait(), timeout)

    # termination

    async def terminate(self, reason: FailureReason, message: str, grace: float) -> None:
        """SIGTERM the process group, SIGKILL after ``grace`` (at once when it is 0)."""
        if self.result.done() or self.kill_reason is not None or not self.pid:
            return
        self.kill_reason, self.kill_message = reason, message
        log.info("executor.terminating", executor=NAME, run_id=self.spec.run_id, reason=reason, message=message)
        if grace > 0:
            _signal_group(self.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.result), grace)
            if self.result.done():
                return
        self.killed_hard = True
        _signal_group(self.pid, signal.SIGKILL)

    def classify(self, status: int, perf: Perf, tail_lines: int) -> RunResult:
        """Turn an exit status into a result with a reason a user can act on."""
        code = os.waitstatus_to_exitcode(status)  # negative: killed by that signal
        exit_code = 128 - code if code < 0 else code  # the shell's convention for signals
        tail = tuple(self.tail(tail_lines))

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
        if code == _EXEC_FAILED and "hivebus-exec: cannot run" in last:
            return failed("not_found", next(t for t in reversed(tail) if "hivebus-exec:" in t).split("hivebus-exec: ", 1)[1])
        limit = self.spec.limits.memory_bytes
        if limit and any(marker in last for marker in _MEMORY_MARKERS):
            return failed("oom", f"ran out of memory under its {limit / MIB:.1f} MiB limit (exited with code {code})")
        return failed("exit", f"exited with code {code}")


# --- helpers ------------------------------------------------------------------------------


def default_address_space(memory_bytes: int) -> int:
    """RLIMIT_AS for a memory limit: twice the limit plus 256 MiB (see the module docstring)."""
    return 2 * memory_bytes + 256 * MIB


def _run_of(handle: RunHandle) -> _Run:
    if not isinstance(handle.ref, _Run):
        raise TypeError(f"run {handle.spec.run_id} was not started by the process executor")
    return handle.ref


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]


def find_bundle(
    roots: Sequence[Path], bundle_id: str, entries: Sequence[str]
) -> tuple[Path, list[AppInput]]:
    """The first ``<root>/[<namespace>/]<name>`` holding one of ``entries`` whose sage.yaml (if
    any) is that very bundle, and its declared inputs; ``NotRunnable`` says where it looked."""
    namespace, _, rest = bundle_id.partition("/")
    name, _, version = rest.partition(":")
    if not (namespace and name and version):
        raise NotRunnable(f"{bundle_id!r} is not a bundle id (namespace/name:version)")
    mismatches: list[str] = []
    for root in roots:
        for candidate in (root / namespace / name, root / name):
            if not any((candidate / entry).is_file() for entry in entries):
                continue
            problem, inputs = _read_metadata(candidate, namespace, name, version)
            if problem is None:
                return candidate, inputs
            mismatches.append(problem)
    searched = ", ".join(str(r) for r in roots) or "an empty plugin path"
    found = f"; found only {', '.join(mismatches)}" if mismatches else ""
    wanted = " or ".join(f"{name}/{entry}" for entry in entries)
    raise NotRunnable(
        f"bundle {bundle_id}: no {wanted} on the plugin path ({searched}){found}"
        f" (set {PLUGIN_PATH_ENV} or give the job a pluginSpec entrypoint)"
    )


def _read_metadata(directory: Path, namespace: str, name: str, version: str) -> tuple[str | None, list[AppInput]]:
    """(why ``directory`` is not that bundle, or None; its declared inputs) from its sage.yaml."""
    manifest = directory / "sage.yaml"
    if not manifest.is_file():
        return None, []
    from hivebus.formats import load_app

    try:
        app = load_app(manifest, namespace=namespace)
    except FormatError as exc:
        log.warning("executor.bad_sage_yaml", path=str(manifest), error=str(exc))
        return None, []
    if (app.namespace, app.name, app.version) != (namespace, name, version):
        return f"{app.bundle_id} in {directory}", []
    return None, list(app.inputs)


# --- the operating system -------------------------------------------------------------------

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


def _pid_in(line: bytes) -> int:
    text = line.strip()
    return int(text) if text.isdigit() else 0


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _read_line(fd: int, timeout: float) -> bytes:
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


async def _exited(
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
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    if before_reaping is not None:
        before_reaping()
    _, status, usage = os.wait4(pid, 0)
    return status, usage


def _group_of(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, process group id, state) of ``pid`` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]), int(fields[2]), fields[0].decode()


def _descendants(pid: int) -> list[int]:
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


def _adopted_members(pgid: int) -> list[int]:
    """Live members of group ``pgid`` other than its leader; exited ones we adopted are reaped."""
    me = os.getpid()
    members: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        pid = int(entry.name)
        info = _group_of(pid)
        if info is None or info[1] != pgid:
            continue
        ppid, _, state = info
        if state != "Z":
            members.append(pid)
        elif ppid == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
    return members


async def _reap_leftovers(pgid: int, within: float = 5.0) -> None:
    """Reap the killed members of a finished plugin's group that were re-parented to us."""
    me = os.getpid()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pending = [
            pid for pid in (int(e.name) for e in os.scandir("/proc") if e.name.isdigit())
            if (info := _group_of(pid)) is not None and info[1] == pgid and info[0] == me
        ]
        if not pending:
            return
        for pid in pending:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        await asyncio.sleep(0.1)
