"""The executor port: one interface, several ways to run a plugin on a node.

The node agent decides *when* a plugin runs (cron schedules, science rules); an executor
decides *how*: it starts the plugin with its environment and limits, waits for it, and
reports a ``RunResult`` with a clear failure reason and the perf figures it measured,
which become ``plugin.status`` events and, in the ECR, performance profiles.

Failure reasons are a closed set a user can act on: ``exit`` (non-zero exit code),
``oom`` (killed for exceeding its memory limit), ``timeout`` (killed at its wall time),
``not_found`` (image or command missing), ``stopped`` (stopped on request), ``error``
(the executor itself failed; the message says how).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

FailureReason = Literal["exit", "oom", "timeout", "not_found", "stopped", "error"]


@dataclass(frozen=True, kw_only=True)
class Limits:
    cpu: float | None = None  # cores (e.g. 0.5); enforced as a CPU-time budget by `process`
    memory_bytes: int | None = None
    wall_seconds: float | None = None
    gpu: bool = False


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """Everything an executor needs to run one plugin once."""

    run_id: str
    node: str
    job_id: str
    plugin: str  # the plugin's name within the job
    bundle_id: str  # namespace/name:version
    image: str  # container image (docker) / resolved to a command (process)
    command: tuple[str, ...] = ()  # explicit command (pluginSpec.entrypoint + args); () = resolve from the bundle
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    workdir: Path | None = None


@dataclass(frozen=True, kw_only=True)
class Perf:
    cpu_seconds: float = 0.0
    max_rss_bytes: int = 0
    wall_seconds: float = 0.0
    gpu_percent: float | None = None


@dataclass(frozen=True, kw_only=True)
class RunResult:
    state: Literal["completed", "failed"]
    reason: FailureReason | None = None
    message: str = ""
    exit_code: int | None = None
    perf: Perf = field(default_factory=Perf)
    log_tail: tuple[str, ...] = ()


@dataclass
class RunHandle:
    """A started run; executors keep their own state behind ``ref``."""

    spec: RunSpec
    ref: object = None


@runtime_checkable
class Executor(Protocol):
    name: str

    async def start(self, spec: RunSpec) -> RunHandle: ...

    async def wait(self, handle: RunHandle) -> RunResult: ...

    async def stop(self, handle: RunHandle) -> None: ...

    async def logs(self, handle: RunHandle, lines: int = 50) -> list[str]: ...

    def available(self) -> str | None:
        """None if this executor can run here, else why not (e.g. no Docker engine)."""
        ...
