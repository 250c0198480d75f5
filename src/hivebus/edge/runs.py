"""One run of one plugin, from the trigger to its last ``plugin.status``.

queued (triggered) -> scheduled (admitted by the node's ``ResourceGate``) -> initializing
(handed to the executor) -> running -> completed | failed. A failed status carries the
executor's reason first (``exit``, ``oom``, ``timeout``, ``not_found``, ``stopped``, ``error``),
then its message: ``"oom: killed at its 64 MiB memory limit"``. Terminal states carry exit
code, log tail, measured perf and the hardware class, which the ECR folds into profiles.
A run that asks for more than the node has fails at once instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

from hivebus.edge.executors import Executor, Limits, ResourceGate, RunHandle, RunResult, RunSpec
from hivebus.edge.goals import Goal
from hivebus.errors import AdmissionRefused
from hivebus.schemas.ecr import HardwareProfile
from hivebus.schemas.ids import new_ulid
from hivebus.schemas.node import Perf, PluginStatus
from hivebus.schemas.ses import GoalPlugin, PluginState

log = structlog.get_logger()

EmitStatus = Callable[[PluginStatus, Goal], Awaitable[None]]


class RunUploads(Protocol):
    """Each run's own upload dir (``edge.uploads.UploadService``): made before the run starts,
    removed when it ends; only files staged there are accepted from that run."""

    def open_run(self, run_id: str) -> Mapping[str, str]: ...  # variables for the run's environment

    def close_run(self, run_id: str) -> None: ...


@dataclass(frozen=True, kw_only=True)
class RunEnvironment:
    """What every run on this node shares."""

    node: str
    env: Mapping[str, str]  # HIVEBUS_LOCAL_BUS, HIVEBUS_VSN, HIVEBUS_HOST
    hardware: HardwareProfile
    uploads: RunUploads | None = None  # per-run upload dirs (HIVEBUS_UPLOAD_DIR, _UPLOAD_TOKEN)


class PluginRun:
    def __init__(
        self,
        goal: Goal,
        plugin: GoalPlugin,
        *,
        executor: Executor,
        gate: ResourceGate,
        emit: EmitStatus,
        environment: RunEnvironment,
        variables: Mapping[str, str] | None = None,
        wall_seconds: float | None = None,
    ) -> None:
        self.goal = goal
        self.wall_seconds = wall_seconds
        self.plugin = plugin
        self.executor = executor
        self.gate = gate
        self.emit = emit
        self.environment = environment
        self.variables = dict(variables or {})
        self.run_id = new_ulid()
        self.state: PluginState = PluginState.INACTIVE
        self.started = time.monotonic()
        self.result: RunResult | None = None
        self._handle: RunHandle | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.goal.job_id, self.plugin.name)

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name=f"run-{self.plugin.name}-{self.run_id}")
        return self._task

    async def stop(self) -> None:
        """Stop the run (its last status says ``stopped``) and wait for it to end."""
        self._stopping = True
        if self._task is None:
            return
        if self._handle is not None:
            with contextlib.suppress(Exception):
                await self.executor.stop(self._handle)
        elif not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        uploads = self.environment.uploads
        try:
            await self._run_once(uploads.open_run(self.run_id) if uploads is not None else {})
        finally:
            if uploads is not None:
                uploads.close_run(self.run_id)  # again if cancelled before its last status (idempotent)

    async def _run_once(self, upload_env: Mapping[str, str]) -> None:
        limits = self._limits()
        await self._status(PluginState.QUEUED)
        try:
            async with self.gate.admit(limits, key=self.run_id):
                await self._status(PluginState.SCHEDULED)
                spec = self._spec(limits, upload_env)
                await self._status(PluginState.INITIALIZING)
                self._handle = await self.executor.start(spec)
                if self._stopping:
                    await self.executor.stop(self._handle)
                await self._status(PluginState.RUNNING)
                result = await self.executor.wait(self._handle)
        except AdmissionRefused as exc:
            result = RunResult(state="failed", reason="error", message=str(exc))
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            result = RunResult(
                state="failed", reason="stopped", message="stopped before it started"
            )
        except Exception as exc:  # the executor failed: report it, never lose the run
            log.exception("run.executor_failed", run_id=self.run_id, plugin=self.plugin.name)
            result = RunResult(
                state="failed", reason="error", message=f"{type(exc).__name__}: {exc}"
            )
        self.result = result
        if self.environment.uploads is not None:  # before the last status: an ended run uploads nothing
            self.environment.uploads.close_run(self.run_id)
        await self._final(result)

    def _limits(self) -> Limits:
        wanted = self.plugin.resources
        return Limits(cpu=wanted.cpu, memory_bytes=wanted.memory, gpu=wanted.gpu > 0, wall_seconds=self.wall_seconds)

    def _spec(self, limits: Limits, upload_env: Mapping[str, str] | None = None) -> RunSpec:
        env = {**self.environment.env, **self.plugin.env}
        env.update({f"HIVEBUS_VAR_{_env_name(k)}": v for k, v in self.variables.items()})
        env.update(upload_env or {})  # the run's own upload dir: a job's env cannot move it
        devices = self.plugin.devices or []
        if devices:  # which of the node's devices the scheduler gave it: a job's env cannot say
            env["HIVEBUS_DEVICES"] = json.dumps(
                [d.model_dump(mode="json", exclude_none=True) for d in devices]
            )
        return RunSpec(
            run_id=self.run_id,
            node=self.environment.node,
            job_id=self.goal.job_id,
            plugin=self.plugin.name,
            bundle_id=self.plugin.bundle_id,
            image=self.plugin.image,
            command=(self.plugin.entrypoint,) if self.plugin.entrypoint else (),
            args=tuple(self.plugin.args),
            env=env,
            limits=limits,
            devices=tuple(d.path for d in devices if d.path),
        )

    async def _final(self, result: RunResult) -> None:
        reason: str = result.reason or ""
        if result.message and result.state == "failed":
            reason = f"{reason}: {result.message}" if reason else result.message
        perf = result.perf
        await self._status(
            PluginState.COMPLETED if result.state == "completed" else PluginState.FAILED,
            reason=reason,
            exit_code=result.exit_code,
            log_tail=list(result.log_tail),
            perf=Perf(
                cpu_seconds=max(0.0, perf.cpu_seconds),
                max_rss_bytes=max(0, perf.max_rss_bytes),
                wall_seconds=max(0.0, perf.wall_seconds),
                gpu_percent=perf.gpu_percent,
            ),
            hardware=self.environment.hardware,
        )
        log.info(
            "run.finished",
            run_id=self.run_id,
            job=self.goal.job_id,
            plugin=self.plugin.name,
            state=result.state,
            reason=result.reason,
            exit_code=result.exit_code,
        )

    async def _status(self, state: PluginState, **fields: object) -> None:
        self.state = state
        status = PluginStatus(
            node=self.environment.node,
            job_id=self.goal.job_id,
            plugin=self.plugin.name,
            bundle_id=self.plugin.bundle_id,
            run_id=self.run_id,
            state=state,
            **fields,  # type: ignore[arg-type]
        )
        await self.emit(status, self.goal)


def _env_name(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key).upper()
