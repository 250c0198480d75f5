"""Executors: how a node runs a plugin (``process`` by default, ``docker``, ``wasm``).

``make_executor("process", log_dir=...)`` builds one by name; ``executor_availability()``
tells which can run on this machine and, for those that cannot, why (for the manifest, the
heartbeat and ``hivebus node`` commands). Importing this package starts nothing and imports
neither docker-py, wasmtime nor psutil until an executor is built.
"""

from __future__ import annotations

from typing import Any, Final

from hivebus.edge.executors.base import (
    FAILURE_REASONS,
    Executor,
    FailureReason,
    Limits,
    Perf,
    RunHandle,
    RunResult,
    RunSpec,
    Unavailable,
    input_args,
    plugin_environment,
)
from hivebus.edge.executors.gate import Admission, Capacity, ResourceGate, Usage
from hivebus.errors import ExecutorError

EXECUTORS: Final = ("process", "docker", "wasm")
DEFAULT_EXECUTOR: Final = "process"


def make_executor(name: str = DEFAULT_EXECUTOR, **options: Any) -> Executor:
    """The executor called ``name``, built with ``options`` (its constructor's keywords).

    ``ExecutorError`` for an unknown name or options it does not take; building never
    connects to anything (a docker executor with no engine builds, and says why in
    ``available()``).
    """
    if name == "process":
        from hivebus.edge.executors.process import ProcessExecutor

        factory: Any = ProcessExecutor
    elif name == "docker":
        from hivebus.edge.executors.docker import DockerExecutor

        factory = DockerExecutor
    elif name == "wasm":
        from hivebus.edge.executors.wasm import WasmExecutor

        factory = WasmExecutor
    else:
        raise ExecutorError(f"unknown executor {name!r}", hint=f"known executors: {', '.join(EXECUTORS)}")
    try:
        executor: Executor = factory(**options)
    except TypeError as exc:
        raise ExecutorError(f"executor {name!r}: {exc}") from None
    return executor


def node_executors(
    default: str = DEFAULT_EXECUTOR, optional: tuple[str, ...] = ("wasm",), *, check: bool = True
) -> list[str]:
    """The executors a node runs: ``default``, then each of ``optional`` (with ``check``: only
    those that can run here). The default's own availability is the agent's to check."""
    names = [default, *(name for name in optional if name != default)]
    if not check:
        return names
    return [default, *(n for n in names[1:] if make_executor(n).available() is None)]


def executor_availability(names: tuple[str, ...] = EXECUTORS) -> dict[str, str | None]:
    """For each executor: None if it can run here, else why not."""
    return {name: make_executor(name).available() for name in names}


__all__ = [
    "DEFAULT_EXECUTOR",
    "EXECUTORS",
    "FAILURE_REASONS",
    "Admission",
    "Capacity",
    "Executor",
    "FailureReason",
    "Limits",
    "Perf",
    "ResourceGate",
    "RunHandle",
    "RunResult",
    "RunSpec",
    "Unavailable",
    "Usage",
    "executor_availability",
    "input_args",
    "make_executor",
    "node_executors",
    "plugin_environment",
]
