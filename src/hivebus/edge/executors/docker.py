"""The ``docker`` executor: a plugin as a container on the node's Docker engine (docker-py).

The engine is the one ``DOCKER_HOST`` names, else the local socket. A run uses the bundle's
image (pulled when missing), the job's entrypoint and args, the node-local-bus environment,
and the limits as the engine enforces them: ``mem_limit`` (swap included, so no swapping past
it), ``nano_cpus`` and, when the run asks for a GPU, a device request for every GPU. The
container shares the host's network so the plugin reaches the local bus on loopback, and the
agent's upload directory is bind-mounted at the same path, so a path the SDK sends to
``local.upload`` means the same file on both sides.

Perf comes from the engine's stats stream sampled while the container runs: CPU seconds from
the cgroup's total usage, peak memory as the largest working set seen (usage less inactive
page cache, as ``docker stats`` shows it). The engine's ``OOMKilled`` flag gives ``oom``.

docker-py is synchronous: every call runs in a worker thread. The pure parts —
``container_config``, ``classify`` and ``perf_from_stats`` — are unit-tested without an engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from hivebus.edge.executors.base import (
    FailureReason,
    Perf,
    RunHandle,
    RunResult,
    RunSpec,
    plugin_environment,
)
from hivebus.edge.shim import CONTAINER_PYTHONPATH, container_mounts

log = structlog.get_logger()

NAME: Final = "docker"
LABEL_PREFIX: Final = "org.hivebus."


def container_config(spec: RunSpec, *, network_mode: str = "host") -> dict[str, Any]:
    """The keyword arguments of ``client.containers.create`` for ``spec`` (pure)."""
    from docker.types import DeviceRequest

    env = plugin_environment(spec)
    limits = spec.limits
    config: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.args) or None,
        "entrypoint": list(spec.command) or None,
        "environment": env,
        "labels": {
            f"{LABEL_PREFIX}run_id": spec.run_id,
            f"{LABEL_PREFIX}node": spec.node,
            f"{LABEL_PREFIX}job": spec.job_id,
            f"{LABEL_PREFIX}task": spec.plugin,
            f"{LABEL_PREFIX}bundle": spec.bundle_id,
        },
        "name": "hivebus-" + "".join(c if c.isalnum() or c in "_.-" else "-" for c in spec.run_id),
        "detach": True,
        "network_mode": network_mode,
        "stdin_open": False,
        "tty": False,
    }
    if spec.workdir is not None:
        config["working_dir"] = str(spec.workdir)
    if limits.memory_bytes:
        config["mem_limit"] = limits.memory_bytes
        config["memswap_limit"] = limits.memory_bytes  # memory + swap: no swap past the limit
    if limits.cpu:
        config["nano_cpus"] = int(limits.cpu * 1e9)
    if limits.gpu:
        config["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    upload_dir = env.get("HIVEBUS_UPLOAD_DIR")
    if upload_dir:
        config["volumes"] = {upload_dir: {"bind": upload_dir, "mode": "rw"}}
    # `import waggle.plugin` is hivebus's SDK inside the image too (hivebus.edge.shim)
    config.setdefault("volumes", {}).update(
        {host: {"bind": inside, "mode": "ro"} for host, inside in container_mounts().items()})
    env["PYTHONPATH"] = ":".join(p for p in (CONTAINER_PYTHONPATH, env.get("PYTHONPATH")) if p)
    return config


def perf_from_stats(samples: Sequence[Mapping[str, Any]], wall_seconds: float) -> Perf:
    """Perf from ``container.stats`` samples: last CPU total, largest working set (pure)."""
    cpu_ns = 0
    peak = 0
    for sample in samples:
        cpu_ns = max(cpu_ns, int(sample.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage") or 0))
        memory = sample.get("memory_stats") or {}
        usage = int(memory.get("usage") or 0)
        stats = memory.get("stats") or {}
        cache = int(stats.get("inactive_file", stats.get("total_inactive_file", stats.get("cache", 0))) or 0)
        peak = max(peak, usage - cache if usage > cache else usage, int(memory.get("max_usage") or 0) - cache)
    return Perf(cpu_seconds=cpu_ns / 1e9, max_rss_bytes=max(peak, 0), wall_seconds=wall_seconds)


def classify(
    state: Mapping[str, Any],
    status_code: int,
    *,
    kill_reason: FailureReason | None,
    kill_message: str,
    memory_limit: int | None,
    perf: Perf,
    log_tail: tuple[str, ...],
) -> RunResult:
    """A run's result from the container's final ``State`` and exit status (pure)."""
    failed: dict[str, Any] = {"state": "failed", "exit_code": status_code, "perf": perf, "log_tail": log_tail}
    if kill_reason is not None and not state.get("OOMKilled"):
        return RunResult(reason=kill_reason, message=kill_message, **failed)
    if state.get("OOMKilled"):
        limit = f" of {memory_limit / 2**20:.1f} MiB" if memory_limit else ""
        return RunResult(reason="oom", message=f"killed by the engine for exceeding its memory limit{limit}", **failed)
    if status_code == 0:
        return RunResult(state="completed", exit_code=0, perf=perf, log_tail=log_tail, message="exited with code 0")
    error = state.get("Error") or ""
    return RunResult(reason="exit", message=f"exited with code {status_code}" + (f" ({error})" if error else ""), **failed)


@dataclass(eq=False)
class _Container:
    spec: RunSpec
    result: asyncio.Future[RunResult]
    container: Any = None
    started: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    kill_reason: FailureReason | None = None
    kill_message: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    supervisor: asyncio.Task[None] | None = None


class DockerExecutor:
    """Runs plugins as containers; ``available()`` says why not when no engine answers."""

    name = NAME

    def __init__(
        self,
        *,
        base_url: str | None = None,
        network_mode: str = "host",
        pull: str = "missing",
        kill_grace: float = 5.0,
        tail_lines: int = 20,
        keep_containers: bool = False,
        timeout: float = 10.0,
    ) -> None:
        if pull not in ("missing", "always", "never"):
            from hivebus.errors import SetupError

            raise SetupError(f"docker executor: pull={pull!r} must be 'missing', 'always' or 'never'")
        self.base_url = base_url
        self.network_mode = network_mode
        self.pull = pull
        self.kill_grace = kill_grace
        self.tail_lines = tail_lines
        self.keep_containers = keep_containers
        self.timeout = timeout
        self._client: Any = None

    @property
    def engine(self) -> str:
        return self.base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

    def _docker(self) -> Any:
        if self._client is None:
            import docker

            if self.base_url:
                self._client = docker.DockerClient(base_url=self.base_url, timeout=int(self.timeout))
            else:
                self._client = docker.from_env(timeout=int(self.timeout))
        return self._client

    def available(self) -> str | None:
        try:
            import docker

            client = (
                docker.DockerClient(base_url=self.base_url, timeout=3)
                if self.base_url
                else docker.from_env(timeout=3)
            )
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:
            detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            return f"no Docker engine answers at {self.engine} ({detail})"
        return None

    # --- the port -----------------------------------------------------------------------

    async def start(self, spec: RunSpec) -> RunHandle:
        run = _Container(spec=spec, result=asyncio.get_running_loop().create_future())
        handle = RunHandle(spec=spec, ref=run)
        try:
            await asyncio.to_thread(self._ensure_image, spec.image)
            config = container_config(spec, network_mode=self.network_mode)
            run.container = await asyncio.to_thread(self._docker().containers.create, **config)
            run.started = time.monotonic()
            await asyncio.to_thread(run.container.start)
        except Exception as exc:
            reason, message = _failure_of(exc, spec.image)
            await self._remove(run)
            run.result.set_result(RunResult(state="failed", reason=reason, message=message, log_tail=(f"hivebus: {message}",)))
            return handle
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._sample_stats, args=(run,), daemon=True, name=f"stats-{spec.run_id}").start()
        run.supervisor = loop.create_task(self._supervise(run))
        log.info("executor.started", executor=NAME, run_id=spec.run_id, container=run.container.id[:12])
        return handle

    async def wait(self, handle: RunHandle) -> RunResult:
        return await asyncio.shield(_container_of(handle).result)

    async def stop(self, handle: RunHandle) -> None:
        await self._terminate(_container_of(handle), "stopped", "stopped on request")

    async def logs(self, handle: RunHandle, lines: int = 50) -> list[str]:
        run = _container_of(handle)
        if run.container is None:
            return list(run.result.result().log_tail) if run.result.done() else []
        try:
            raw = await asyncio.to_thread(run.container.logs, tail=lines, stdout=True, stderr=True)
        except Exception:  # the container is gone: the result kept its tail
            return list(run.result.result().log_tail)[-lines:] if run.result.done() else []
        return raw.decode("utf-8", "replace").splitlines()[-lines:]

    # --- internals ----------------------------------------------------------------------

    def _ensure_image(self, image: str) -> None:
        import docker.errors

        images = self._docker().images
        if self.pull != "always":
            try:
                images.get(image)
                return
            except docker.errors.ImageNotFound:
                if self.pull == "never":
                    raise
        repository, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
        images.pull(repository, tag=tag or "latest")

    async def _supervise(self, run: _Container) -> None:
        limits = run.spec.limits
        watchdog = None
        if limits.wall_seconds:
            watchdog = asyncio.create_task(self._watch_wall(run, limits.wall_seconds))
        try:
            status = await asyncio.to_thread(run.container.wait)
            wall = time.monotonic() - run.started
            await asyncio.to_thread(run.container.reload)
            raw = await asyncio.to_thread(run.container.logs, tail=self.tail_lines, stdout=True, stderr=True)
            with run.lock:
                samples = list(run.samples)
            result = classify(
                run.container.attrs.get("State", {}),
                int(status.get("StatusCode", -1)),
                kill_reason=run.kill_reason,
                kill_message=run.kill_message,
                memory_limit=limits.memory_bytes,
                perf=perf_from_stats(samples, wall),
                log_tail=tuple(raw.decode("utf-8", "replace").splitlines()[-self.tail_lines :]),
            )
        except Exception as exc:
            log.exception("executor.wait_failed", executor=NAME, run_id=run.spec.run_id)
            result = RunResult(state="failed", reason="error", message=f"waiting for the container failed: {exc}")
        finally:
            if watchdog is not None:
                watchdog.cancel()
        await self._remove(run)
        if not run.result.done():
            run.result.set_result(result)
        log.info("executor.finished", executor=NAME, run_id=run.spec.run_id, state=result.state, reason=result.reason)

    async def _watch_wall(self, run: _Container, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self._terminate(run, "timeout", f"still running at its {seconds:g} s wall-time limit")

    async def _terminate(self, run: _Container, reason: FailureReason, message: str) -> None:
        if run.result.done() or run.kill_reason is not None or run.container is None:
            return
        run.kill_reason, run.kill_message = reason, message
        with contextlib.suppress(Exception):  # SIGTERM, then SIGKILL after the grace period
            await asyncio.to_thread(run.container.stop, timeout=int(max(self.kill_grace, 0)))

    def _sample_stats(self, run: _Container) -> None:
        """Keep the engine's stats samples while the container runs (a blocking stream)."""
        try:
            for sample in run.container.stats(stream=True, decode=True):
                with run.lock:
                    run.samples.append(sample)
                    if len(run.samples) > 2:  # perf needs the peak and the last CPU total only
                        run.samples[:] = [max(run.samples[:-1], key=_working_set), run.samples[-1]]
        except Exception as exc:
            log.debug("executor.stats_ended", run_id=run.spec.run_id, error=str(exc))

    async def _remove(self, run: _Container) -> None:
        if run.container is None or self.keep_containers:
            return
        with contextlib.suppress(Exception):
            await asyncio.to_thread(run.container.remove, force=True)


def _working_set(sample: Mapping[str, Any]) -> int:
    return perf_from_stats([sample], 0.0).max_rss_bytes


def _failure_of(exc: Exception, image: str) -> tuple[FailureReason, str]:
    import docker.errors

    if isinstance(exc, docker.errors.ImageNotFound | docker.errors.NotFound):
        return "not_found", f"image {image} not found: {_explain(exc)}"
    if isinstance(exc, docker.errors.APIError) and exc.status_code == 404:
        return "not_found", f"image {image} not found: {_explain(exc)}"
    text = _explain(exc)
    if "executable file not found" in text or "no such file or directory" in text:
        return "not_found", f"command not found in {image}: {text}"
    return "error", f"docker: {text}"


def _explain(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).splitlines()[0][:300]


def _container_of(handle: RunHandle) -> _Container:
    if not isinstance(handle.ref, _Container):
        raise TypeError(f"run {handle.spec.run_id} was not started by the docker executor")
    return handle.ref
