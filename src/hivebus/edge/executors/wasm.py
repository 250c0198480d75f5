"""The ``wasm`` executor: a plugin as a WASI module, run by wasmtime in a worker process.

Each run is one ``python -m hivebus.edge.executors.wasm_worker`` process (``wasm_worker.py``)
started with the ``process`` executor's machinery, so a runaway module is stopped, measured
and logged like any process: exit status through a pidfd, CPU seconds from ``wait4``, stdout
and stderr (WASI's, inherited) merged into the ring buffer and the per-run log file.

* **Module.** ``RunSpec.command`` naming a ``.wasm`` or ``.wat`` file (relative to the run's
  working directory), then ``args``; otherwise the bundle's ``main.wasm`` or ``main.wat`` on the
  plugin path (``HIVEBUS_PLUGIN_PATH``, the repository's ``examples/plugins`` and
  ``examples/wasm``), with the defaults of the inputs its ``sage.yaml`` declares.
* **Arguments and environment.** WASI ``argv`` is the module's file name then the arguments;
  its environment is the job's ``env`` with the node-local-bus identity over it
  (``base.plugin_environment``) and ``TMPDIR=/tmp``, the run's private scratch directory
  preopened as ``/tmp``. Nothing else of the host is visible to the module.
* **Limits**, enforced inside the worker: memory by the store's limits (``memory.grow`` past
  it fails; a failed run whose memory ended within ``oom_headroom`` of the limit is ``oom``, as
  is a module whose initial memory is over it); wall time and the CPU-time budget (``cpu``
  cores x ``wall_seconds``, counted by the worker process) by epoch interruption, reason
  ``timeout``. Backstops from the ``process`` machinery: the worker is killed
  ``backstop_seconds`` after its wall time, and at ``worker_overhead_bytes`` of resident memory
  over the limit (the runtime's own, which no module can allocate).
* **Perf.** ``wall_seconds`` and ``cpu_seconds`` of the worker process; ``max_rss_bytes`` is
  the peak of the store's linear memory, the memory the module itself used (the worker's
  resident set adds the Python runtime and wasmtime, some 40-60 MiB).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import structlog

from hivebus.edge.executors.base import (
    FailureReason,
    Limits,
    Perf,
    RunHandle,
    RunResult,
    RunSpec,
    input_args,
    plugin_environment,
)
from hivebus.edge.executors.process import (
    INHERITED_ENV,
    MIB,
    NotRunnable,
    ProcessExecutor,
    default_plugin_path,
    find_bundle,
)

log = structlog.get_logger()

NAME: Final = "wasm"
MODULE_SUFFIXES: Final = (".wasm", ".wat")
ENTRIES: Final = ("main.wasm", "main.wat")
WORKER: Final = "hivebus.edge.executors.wasm_worker"


def wasm_plugin_path() -> list[Path]:
    """The process executor's plugin path, then the repository's ``examples/wasm``."""
    paths = default_plugin_path()
    examples = Path(__file__).resolve().parents[4] / "examples" / "wasm"
    if examples.is_dir():
        paths.append(examples)
    return paths


def is_module(word: str) -> bool:
    return word.endswith(MODULE_SUFFIXES)


@dataclass(eq=False)
class _WasmRun:
    inner: RunHandle | None
    private: Path | None  # spec.json and status.json of this run
    limits: Limits
    result: RunResult | None = None


class WasmExecutor:
    """Runs WASI modules in wasmtime worker processes. See the module docstring for the rules."""

    name = NAME

    def __init__(
        self,
        *,
        plugin_path: Sequence[str | os.PathLike[str]] | None = None,
        python: str = sys.executable,
        kill_grace: float = 5.0,
        tail_lines: int = 20,
        buffer_lines: int = 1000,
        log_dir: str | os.PathLike[str] | None = None,
        log_file_max_bytes: int = 10 * MIB,
        scratch_dir: str | os.PathLike[str] | None = None,
        inherit_env: Sequence[str] = INHERITED_ENV,
        backstop_seconds: float = 2.0,
        worker_overhead_bytes: int = 256 * MIB,
    ) -> None:
        self.plugin_path = [Path(p) for p in plugin_path] if plugin_path is not None else None
        self.scratch_dir = Path(scratch_dir) if scratch_dir is not None else None
        self.backstop_seconds = backstop_seconds
        self.worker_overhead_bytes = worker_overhead_bytes
        self._process = ProcessExecutor(
            python=python,
            kill_grace=kill_grace,
            address_space=lambda _: 0,  # wasmtime reserves GiBs of address space per memory
            tail_lines=tail_lines,
            buffer_lines=buffer_lines,
            log_dir=log_dir,
            log_file_max_bytes=log_file_max_bytes,
            scratch_dir=scratch_dir,
            inherit_env=inherit_env,
        )

    def available(self) -> str | None:
        problem = self._process.available()
        if problem is not None:
            return problem
        try:
            import wasmtime  # noqa: F401
        except ImportError as exc:
            return f"the wasm executor needs the wasmtime package ({exc}; pip install wasmtime)"
        return None

    # --- the port -----------------------------------------------------------------------

    async def start(self, spec: RunSpec) -> RunHandle:
        try:
            module, args = self.resolve(spec)
        except NotRunnable as exc:
            log.info("executor.not_found", executor=NAME, run_id=spec.run_id, reason=str(exc))
            message = str(exc)
            failed = RunResult(
                state="failed",
                reason="not_found",
                message=message,
                log_tail=(f"hivebus: {message}",),
            )
            return RunHandle(spec=spec, ref=_WasmRun(None, None, spec.limits, result=failed))
        if self.scratch_dir is not None:
            self.scratch_dir.mkdir(parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix="hivebus-wasm-", dir=self.scratch_dir))
        limits = spec.limits
        worker_spec = {
            "module": str(module),
            "args": list(args),
            "env": {**plugin_environment(spec), "TMPDIR": "/tmp"},
            "memory_bytes": limits.memory_bytes,
            "wall_seconds": limits.wall_seconds,
            "cpu_seconds": limits.cpu * limits.wall_seconds
            if limits.cpu and limits.wall_seconds
            else None,
            "preopen_tmp": True,
            "status": str(private / "status.json"),
        }
        (private / "spec.json").write_text(json.dumps(worker_spec))
        inner_limits = Limits(
            memory_bytes=limits.memory_bytes + self.worker_overhead_bytes
            if limits.memory_bytes
            else None,
            wall_seconds=limits.wall_seconds + self.backstop_seconds
            if limits.wall_seconds
            else None,
        )
        inner_spec = replace(
            spec,
            command=("python", "-m", WORKER, str(private / "spec.json")),
            args=(),
            limits=inner_limits,
        )
        inner = await self._process.start(inner_spec)
        return RunHandle(spec=spec, ref=_WasmRun(inner, private, limits))

    async def wait(self, handle: RunHandle) -> RunResult:
        run = _run_of(handle)
        if run.result is not None:
            return run.result
        assert run.inner is not None
        inner = await self._process.wait(run.inner)
        if run.result is None:  # two waiters: the first one classifies
            status = _read_status(run.private)
            run.result = classify(inner, status)
            if run.private is not None:
                shutil.rmtree(run.private, ignore_errors=True)
                run.private = None
            log.info(
                "executor.finished",
                executor=NAME,
                run_id=handle.spec.run_id,
                state=run.result.state,
                reason=run.result.reason,
                memory_bytes=run.result.perf.max_rss_bytes,
            )
        return run.result

    async def stop(self, handle: RunHandle) -> None:
        run = _run_of(handle)
        if run.inner is not None:
            await self._process.stop(run.inner)

    async def logs(self, handle: RunHandle, lines: int = 50) -> list[str]:
        run = _run_of(handle)
        if run.inner is None:
            return list(run.result.log_tail[-lines:]) if run.result and lines > 0 else []
        return await self._process.logs(run.inner, lines)

    # --- module resolution --------------------------------------------------------------

    def resolve(self, spec: RunSpec) -> tuple[Path, tuple[str, ...]]:
        """The module to run for ``spec`` and its arguments; ``NotRunnable`` says what is missing."""
        if spec.workdir is not None and not spec.workdir.is_dir():
            raise NotRunnable(f"working directory {spec.workdir} does not exist")
        if spec.command:
            program, *rest = spec.command
            if not is_module(program):
                raise NotRunnable(
                    f"command {program!r} is not a WebAssembly module (the wasm executor runs"
                    f" {' or '.join(MODULE_SUFFIXES)} files)"
                )
            path = (
                Path(program)
                if Path(program).is_absolute()
                else (spec.workdir or Path.cwd()) / program
            )
            if not path.is_file():
                raise NotRunnable(f"module {program!r} does not exist (looked at {path})")
            return path.resolve(), (*rest, *spec.args)
        roots = self.plugin_path if self.plugin_path is not None else wasm_plugin_path()
        directory, inputs = find_bundle(roots, spec.bundle_id, ENTRIES)
        module = next(directory / e for e in ENTRIES if (directory / e).is_file())
        return module, input_args(inputs, spec.args)


def bundle_module(bundle_id: str, plugin_path: Sequence[Path] | None = None) -> Path | None:
    """The ``main.wasm`` / ``main.wat`` of a bundle on the plugin path, or None."""
    try:
        directory, _ = find_bundle(
            list(plugin_path) if plugin_path is not None else wasm_plugin_path(), bundle_id, ENTRIES
        )
    except NotRunnable:
        return None
    return next((directory / e for e in ENTRIES if (directory / e).is_file()), None)


def wants_wasm(bundle_id: str, entrypoint: str | None) -> bool:
    """Whether a plugin is a WASM module: its entrypoint names a ``.wasm`` / ``.wat`` file, or,
    with no entrypoint, its bundle is a module on the plugin path and has no ``main.py``."""
    if entrypoint:
        return is_module(entrypoint.split()[0])
    if bundle_module(bundle_id) is None:
        return False
    try:
        find_bundle(default_plugin_path(), bundle_id, ("main.py",))
    except NotRunnable:
        return True
    return False


def classify(inner: RunResult, status: dict[str, Any] | None) -> RunResult:
    """The run's result from the worker process's and the worker's own account of it."""
    if status is None:  # the worker did not finish: killed by a backstop, stopped hard, crashed
        if inner.reason == "oom":
            return replace(inner, message=f"the wasm worker process: {inner.message}")
        if inner.reason == "exit":  # e.g. a Python traceback: the executor failed, not the module
            last = inner.log_tail[-1] if inner.log_tail else inner.message
            return replace(inner, reason="error", message=f"the wasm worker failed: {last}")
        return inner
    perf = Perf(
        cpu_seconds=inner.perf.cpu_seconds,
        max_rss_bytes=int(status.get("memory_bytes") or 0),
        wall_seconds=inner.perf.wall_seconds,
    )
    outcome, message, code = (
        status.get("outcome"),
        str(status.get("message", "")),
        status.get("code"),
    )
    reasons: dict[Any, FailureReason] = {
        "oom": "oom", "timeout": "timeout", "stopped": "stopped", "not_found": "not_found",
        "trap": "exit", "invalid": "exit", "exit": "exit",
    }  # fmt: skip
    if inner.reason in ("stopped", "timeout") and outcome == "stopped":
        return replace(inner, perf=perf)  # stopped by the process machinery: its reason stands
    if outcome == "exit" and code == 0:
        return RunResult(
            state="completed", exit_code=0, perf=perf, log_tail=inner.log_tail, message=message
        )
    reason = reasons.get(outcome, "error")
    return RunResult(
        state="failed",
        reason=reason,
        message=message or f"the wasm worker reported {outcome!r}",
        exit_code=code if isinstance(code, int) else inner.exit_code,
        perf=perf,
        log_tail=inner.log_tail,
    )


def _read_status(private: Path | None) -> dict[str, Any] | None:
    if private is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        status = json.loads((private / "status.json").read_text())
        if isinstance(status, dict):
            return status
    return None


def _run_of(handle: RunHandle) -> _WasmRun:
    if not isinstance(handle.ref, _WasmRun):
        raise TypeError(f"run {handle.spec.run_id} was not started by the wasm executor")
    return handle.ref
