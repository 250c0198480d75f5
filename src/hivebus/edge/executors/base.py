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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, Protocol, get_args, runtime_checkable

FailureReason = Literal["exit", "oom", "timeout", "not_found", "stopped", "error"]
FAILURE_REASONS: Final[tuple[str, ...]] = get_args(FailureReason)


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
    # The program to run and its fixed leading arguments (pluginSpec.entrypoint); () = the
    # image's entrypoint (docker) or the bundle's main.py on the plugin path (process).
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()  # appended to the command (pluginSpec.args, input defaults)
    # Extra environment: the agent's HIVEBUS_LOCAL_BUS / _VSN / _HOST / _UPLOAD_DIR and the
    # pluginSpec's env. Identity variables are derived from the fields above and win.
    env: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    workdir: Path | None = None
    # Host paths of the devices the scheduler gave the run (the goal's GoalPlugin.devices):
    # the docker executor passes them into the container; the process executor's plugin
    # opens them itself (HIVEBUS_DEVICES in env says which it got).
    devices: tuple[str, ...] = ()


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


class Unavailable:
    """Stands in for an executor a node does not have: every run fails with ``error`` and why."""

    def __init__(self, name: str, why: str) -> None:
        self.name = name
        self.why = why

    def _failed(self) -> RunResult:
        return RunResult(
            state="failed", reason="error", message=self.why, log_tail=(f"hivebus: {self.why}",)
        )

    async def start(self, spec: RunSpec) -> RunHandle:
        return RunHandle(spec=spec)

    async def wait(self, handle: RunHandle) -> RunResult:
        return self._failed()

    async def stop(self, handle: RunHandle) -> None:
        return None

    async def logs(self, handle: RunHandle, lines: int = 50) -> list[str]:
        return list(self._failed().log_tail[-lines:]) if lines > 0 else []

    def available(self) -> str | None:
        return self.why


# --- helpers every executor shares -----------------------------------------------------------


def plugin_environment(spec: RunSpec) -> dict[str, str]:
    """The node-local-bus variables of docs/node-local-bus.md for one run.

    ``spec.env`` comes first and the identity variables are set from the spec over it, so a
    job's pluginSpec ``env`` cannot make a plugin's readings claim another node, job or bundle.
    """
    return {
        **spec.env,
        "HIVEBUS_NODE": spec.node,
        "HIVEBUS_JOB": spec.job_id,
        "HIVEBUS_TASK": spec.plugin,
        "HIVEBUS_PLUGIN": spec.bundle_id,
        "HIVEBUS_RUN_ID": spec.run_id,
    }


class InputDefault(Protocol):
    """One declared input of a bundle (``hivebus.schemas.ecr.AppInput`` fits)."""

    @property
    def id(self) -> str: ...

    @property
    def default(self) -> bool | int | float | str | None: ...


def input_args(inputs: Iterable[InputDefault], args: Sequence[str] = ()) -> tuple[str, ...]:
    """``args`` followed by ``--<id> <default>`` for every declared input they do not set.

    A sage.yaml ``inputs`` entry documents an argument the app accepts; a job gives some of
    them in ``pluginSpec.args`` and the rest take their declared defaults. A boolean default
    of true becomes the bare flag ``--<id>`` (argparse ``store_true``); false adds nothing.
    """
    given = {a.split("=", 1)[0] for a in args if a.startswith("-")}
    out = list(args)
    for item in inputs:
        flag = f"--{item.id}"
        if item.default is None or flag in given or f"-{item.id}" in given:
            continue
        if isinstance(item.default, bool):
            if item.default:
                out.append(flag)
        else:
            out += [flag, str(item.default)]
    return tuple(out)
