"""The ``docker`` executor: a plugin as a container on the node's Docker engine (docker-py).

The engine is the one ``DOCKER_HOST`` names, else the local socket. A run uses the bundle's
image (pulled when missing), the job's entrypoint and args, the node-local-bus environment,
and the limits as the engine enforces them: ``mem_limit`` (swap included, so no swapping past
it), ``nano_cpus`` (a rate, not a budget) and, when the run asks for a GPU, a device request
for every GPU. The container shares the host's network so the plugin reaches the local bus on
loopback (this works with an engine started ``--bridge=none``), and the agent's upload
directory is bind-mounted at the same path, so a path the SDK sends to ``local.upload`` means
the same file on both sides. hivebus's SDK, the ``waggle`` shim and nats-py are bind-mounted
read-only and put first on ``PYTHONPATH`` (``hivebus.edge.shim.container_mounts``), so any
image with a Python 3.11 runs ``from waggle.plugin import Plugin`` unchanged.

Memory: when any process in the container reaches the limit, the whole run fails with
``oom``, as under ``process`` (which kills the plugin's group at its limit). On cgroup v1 the
container is created with the kernel's OOM killer disabled for its cgroup: a process at the
limit waits, the engine reports an ``oom`` event and the executor kills the container (exit
137). Without that, the kernel kills only the largest process; the engine's ``OOMKilled`` is
then set even when the main process survived and exited 0, so ``oom`` is reported only with
exit code 137 beside it. A ``MemoryError`` in the last log lines of a limited run is ``oom``.

Perf: with a local engine using the ``cgroupfs`` driver each container runs under a parent
cgroup of its own (``cgroups.py``), whose accounting outlives the container: CPU seconds and
peak memory are the kernel's, read after the exit. Otherwise the engine's stats are sampled
while the container runs (every ``poll_seconds``; CPU then misses up to one interval).

An engine that goes away mid-run (its socket stops answering) is waited for
``reconnect_seconds``, then the run fails with reason ``error`` and a message naming it.

docker-py is synchronous: every call runs in a worker thread. The pure parts —
``container_config``, ``classify`` and ``perf_from_stats`` — are unit-tested without an engine;
tests/integration/test_executors.py runs the contract against a private engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
from hivebus.edge.executors.cgroups import RunCgroup, parent_of
from hivebus.edge.shim import CONTAINER_PYTHONPATH, container_mounts

log = structlog.get_logger()

NAME: Final = "docker"
LABEL_PREFIX: Final = "org.hivebus."
MIB: Final = 2**20
OOM_EXIT: Final = 137  # SIGKILL: by the kernel's OOM killer or by the executor at an OOM
MERGE_WRAPPER: Final = ("/bin/sh", "-c", 'exec "$@" 2>&1', "hivebus-plugin")
_EXEC_FAILED: Final = 127  # the shell's "command not found"
_EVENTS_WINDOW_S: Final = 5  # how long one read of the engine's events lasts (see _watch_events)
_MEMORY_MARKERS: Final = (
    "MemoryError",
    "std::bad_alloc",
    "Cannot allocate memory",
    "out of memory",
)


def container_config(
    spec: RunSpec,
    *,
    network_mode: str = "host",
    cgroup_parent: str | None = None,
    oom_kill_disable: bool = False,
    merge_output: bool = False,
    image_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``client.containers.create`` for ``spec`` (pure).

    ``merge_output`` runs the program as ``/bin/sh -c 'exec "$@" 2>&1'`` so stderr shares
    stdout's pipe and the log keeps the order lines were written in (two pipes, as the engine
    keeps them, can be read out of order); ``image_config`` (the image's ``Config``) gives the
    program when the spec names none, with Docker's rules (an entrypoint given resets CMD).
    """
    from docker.types import DeviceRequest

    env = plugin_environment(spec)
    env.setdefault("PYTHONUNBUFFERED", "1")  # log lines arrive as they are printed
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
    if merge_output:
        image = image_config or {}
        entry = list(spec.command) or list(image.get("Entrypoint") or [])
        cmd = list(spec.args) or ([] if spec.command else list(image.get("Cmd") or []))
        if entry or cmd:
            config["entrypoint"] = list(MERGE_WRAPPER)
            config["command"] = entry + cmd
    if spec.workdir is not None:
        config["working_dir"] = str(spec.workdir)
    if limits.memory_bytes:
        config["mem_limit"] = limits.memory_bytes
        config["memswap_limit"] = limits.memory_bytes  # memory + swap: no swap past the limit
        if oom_kill_disable:
            config["oom_kill_disable"] = True
    if limits.cpu:
        config["nano_cpus"] = int(limits.cpu * 1e9)
    if limits.gpu:
        config["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if cgroup_parent:
        config["cgroup_parent"] = cgroup_parent
    if spec.devices:  # the devices the scheduler gave the run, at the same path inside
        config["devices"] = [f"{path}:{path}:rwm" for path in spec.devices]
    upload_dir = env.get("HIVEBUS_UPLOAD_DIR")
    if upload_dir:
        config["volumes"] = {upload_dir: {"bind": upload_dir, "mode": "rw"}}
    # `import waggle.plugin` is hivebus's SDK inside the image too (hivebus.edge.shim)
    config.setdefault("volumes", {}).update(
        {host: {"bind": inside, "mode": "ro"} for host, inside in container_mounts().items()}
    )
    env["PYTHONPATH"] = ":".join(p for p in (CONTAINER_PYTHONPATH, env.get("PYTHONPATH")) if p)
    return config


def perf_from_stats(samples: Sequence[Mapping[str, Any]], wall_seconds: float) -> Perf:
    """Perf from ``container.stats`` samples: last CPU total, largest working set (pure)."""
    cpu_ns = 0
    peak = 0
    for sample in samples:
        cpu_ns = max(
            cpu_ns, int(sample.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage") or 0)
        )
        memory = sample.get("memory_stats") or {}
        usage = int(memory.get("usage") or 0)
        stats = memory.get("stats") or {}
        cache = int(
            stats.get("inactive_file", stats.get("total_inactive_file", stats.get("cache", 0))) or 0
        )
        peak = max(
            peak,
            usage - cache if usage > cache else usage,
            int(memory.get("max_usage") or 0) - cache,
        )
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
    """A run's result from the container's final ``State`` and exit status (pure).

    ``oom`` needs the engine's ``OOMKilled`` (or the executor's kill at the engine's ``oom``
    event, ``kill_reason="oom"``) *and* exit code 137: on cgroup v1 ``OOMKilled`` is also set
    when only a child was killed and the main process went on to exit by itself.
    """
    failed: dict[str, Any] = {
        "state": "failed",
        "exit_code": status_code,
        "perf": perf,
        "log_tail": log_tail,
    }
    limit = f" of {memory_limit / MIB:.1f} MiB" if memory_limit else ""
    oom_seen = bool(state.get("OOMKilled")) or kill_reason == "oom"
    if oom_seen and status_code == OOM_EXIT:
        return RunResult(
            reason="oom", message=f"killed for exceeding its memory limit{limit}", **failed
        )
    if kill_reason is not None and kill_reason != "oom":
        return RunResult(reason=kill_reason, message=kill_message, **failed)
    note = f"; a process in it was killed for exceeding the memory limit{limit}" if oom_seen else ""
    if status_code == 0:
        return RunResult(
            state="completed",
            exit_code=0,
            perf=perf,
            log_tail=log_tail,
            message="exited with code 0" + note,
        )
    if (
        status_code == _EXEC_FAILED
        and log_tail
        and "hivebus-plugin: " in log_tail[-1]
        and "not found" in log_tail[-1]
    ):
        missing = log_tail[-1].split("hivebus-plugin: ", 1)[1]
        return RunResult(
            reason="not_found", message=f"command not found in the image: {missing}", **failed
        )
    if memory_limit and any(marker in line for line in log_tail[-3:] for marker in _MEMORY_MARKERS):
        return RunResult(
            reason="oom",
            message=f"ran out of memory under its {memory_limit / MIB:.1f} MiB limit (exited with code {status_code})",
            **failed,
        )
    error = state.get("Error") or ""
    return RunResult(
        reason="exit",
        message=f"exited with code {status_code}" + (f" ({error})" if error else "") + note,
        **failed,
    )


@dataclass(eq=False)
class _Container:
    spec: RunSpec
    result: asyncio.Future[RunResult]
    container: Any = None
    cgroup: RunCgroup | None = None
    cgroup_parent: str | None = None
    started: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    kill_reason: FailureReason | None = None
    kill_message: str = ""
    finished: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    supervisor: asyncio.Task[None] | None = None


class EngineGone(Exception):
    """The engine stopped answering while a run was going."""


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
        log_dir: str | os.PathLike[str] | None = None,
        log_file_max_bytes: int = 10 * MIB,
        scratch_dir: str | os.PathLike[str] | None = None,  # accepted: a container has its own /tmp
        cgroup_accounting: bool = True,
        poll_seconds: float = 0.5,
        reconnect_seconds: float = 5.0,
        merge_output: bool = True,
    ) -> None:
        if pull not in ("missing", "always", "never"):
            from hivebus.errors import SetupError

            raise SetupError(
                f"docker executor: pull={pull!r} must be 'missing', 'always' or 'never'"
            )
        self.base_url = base_url
        self.network_mode = network_mode
        self.pull = pull
        self.kill_grace = kill_grace
        self.tail_lines = tail_lines
        self.keep_containers = keep_containers
        self.timeout = timeout
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.log_file_max_bytes = log_file_max_bytes
        self.scratch_dir = Path(scratch_dir) if scratch_dir is not None else None
        self.cgroup_accounting = cgroup_accounting
        self.poll_seconds = poll_seconds
        self.reconnect_seconds = reconnect_seconds
        self.merge_output = merge_output
        self._client: Any = None
        self._facts: dict[str, Any] | None = None
        self._runs: dict[str, _Container] = {}  # container id -> run, for the event watcher
        self._runs_lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    @property
    def engine(self) -> str:
        return self.base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

    def _docker(self) -> Any:
        if self._client is None:
            import docker

            if self.base_url:
                self._client = docker.DockerClient(
                    base_url=self.base_url, timeout=int(self.timeout)
                )
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
            image_config = await asyncio.to_thread(self._ensure_image, spec.image)
            facts = await asyncio.to_thread(self._engine_facts)
            if self.cgroup_accounting and facts["cgroupfs"] and self.engine.startswith("unix://"):
                run.cgroup_parent = parent_of(spec.run_id)
            config = container_config(
                spec,
                network_mode=self.network_mode,
                cgroup_parent=run.cgroup_parent,
                oom_kill_disable=facts["cgroup_version"] == "1",
                merge_output=self.merge_output and _has_shell(image_config),
                image_config=image_config.get("Config"),
            )
            run.container = await asyncio.to_thread(self._docker().containers.create, **config)
            self._watch(run)
            run.started = time.monotonic()
            await asyncio.to_thread(run.container.start)
        except Exception as exc:
            reason, message = _failure_of(exc, spec.image, self.engine)
            await self._remove(run)
            run.result.set_result(
                RunResult(
                    state="failed",
                    reason=reason,
                    message=message,
                    log_tail=(f"hivebus: {message}",),
                )
            )
            return handle
        if run.cgroup_parent is not None:
            run.cgroup = RunCgroup.find(run.cgroup_parent)
        if run.cgroup is None:  # no kernel accounting visible from here: sample the engine's
            threading.Thread(
                target=self._sample_stats, args=(run,), daemon=True, name=f"stats-{spec.run_id}"
            ).start()
        run.supervisor = asyncio.get_running_loop().create_task(self._supervise(run))
        log.info(
            "executor.started", executor=NAME, run_id=spec.run_id, container=run.container.id[:12]
        )
        return handle

    async def wait(self, handle: RunHandle) -> RunResult:
        return await asyncio.shield(_container_of(handle).result)

    async def stop(self, handle: RunHandle) -> None:
        await self._terminate(_container_of(handle), "stopped", "stopped on request")

    async def logs(self, handle: RunHandle, lines: int = 50) -> list[str]:
        run = _container_of(handle)
        if run.container is None or run.result.done():
            return list(run.result.result().log_tail)[-lines:] if run.result.done() else []
        try:
            raw = await asyncio.to_thread(run.container.logs, tail=lines, stdout=True, stderr=True)
        except Exception:  # the container is gone: the result kept its tail
            return list(run.result.result().log_tail)[-lines:] if run.result.done() else []
        return raw.decode("utf-8", "replace").splitlines()[-lines:]

    def close(self) -> None:
        """Close the engine connection (the event watcher then ends)."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()

    # --- internals ----------------------------------------------------------------------

    def _engine_facts(self) -> dict[str, Any]:
        if self._facts is None:
            info = self._docker().info()
            self._facts = {
                "cgroupfs": info.get("CgroupDriver") == "cgroupfs",
                "cgroup_version": str(info.get("CgroupVersion") or ""),
            }
        return self._facts

    def _ensure_image(self, image: str) -> dict[str, Any]:
        """The image's attributes, pulled first when missing (or always, by policy)."""
        import docker.errors

        images = self._docker().images
        if self.pull != "always":
            try:
                return dict(images.get(image).attrs)
            except docker.errors.ImageNotFound:
                if self.pull == "never":
                    raise
        repository, _, tag = (
            image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
        )
        try:
            return dict(images.pull(repository, tag=tag or "latest").attrs)
        except docker.errors.APIError as exc:
            raise _PullFailed(_explain(exc)) from exc

    async def _supervise(self, run: _Container) -> None:
        limits = run.spec.limits
        watchdog = None
        if limits.wall_seconds:
            watchdog = asyncio.create_task(self._watch_wall(run, limits.wall_seconds))
        try:
            status = await self._wait_for_exit(run)
            wall = time.monotonic() - run.started
            run.finished.set()
            state, tail, full_log = await asyncio.to_thread(self._final_state, run)
            result = classify(
                state,
                int(status.get("StatusCode", -1)),
                kill_reason=run.kill_reason,
                kill_message=run.kill_message,
                memory_limit=limits.memory_bytes,
                perf=self._perf(run, wall),
                log_tail=tail,
            )
            if self.log_dir is not None and full_log is not None:
                await asyncio.to_thread(self._write_log_file, run, full_log)
        except EngineGone as exc:
            result = RunResult(
                state="failed",
                reason="error",
                message=str(exc),
                log_tail=(f"hivebus: {exc}",),
                perf=Perf(wall_seconds=time.monotonic() - run.started),
            )
        except Exception as exc:
            log.exception("executor.wait_failed", executor=NAME, run_id=run.spec.run_id)
            result = RunResult(
                state="failed", reason="error", message=f"waiting for the container failed: {exc}"
            )
        finally:
            run.finished.set()
            if watchdog is not None:
                watchdog.cancel()
            self._unwatch(run)
        await self._remove(run)
        if not run.result.done():
            run.result.set_result(result)
        log.info(
            "executor.finished",
            executor=NAME,
            run_id=run.spec.run_id,
            state=result.state,
            reason=result.reason,
        )

    async def _wait_for_exit(self, run: _Container) -> dict[str, Any]:
        """The container's exit status; every ``poll_seconds`` a look for an unnoticed OOM."""
        waiter = asyncio.ensure_future(asyncio.to_thread(run.container.wait))
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=self.poll_seconds)
            if done:
                try:
                    return dict(waiter.result())
                except Exception as exc:
                    if not await asyncio.to_thread(self._engine_back, run, exc):
                        raise EngineGone(self._gone_message(run, exc)) from exc
                    waiter = asyncio.ensure_future(asyncio.to_thread(run.container.wait))
                    continue
            if run.kill_reason is None:  # the backstop if the oom event was missed
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(run.container.reload)
                    if run.container.attrs.get("State", {}).get("OOMKilled"):
                        await asyncio.to_thread(self._kill_for_oom, run)

    def _engine_back(self, run: _Container, exc: Exception) -> bool:
        """Whether the engine answers again within ``reconnect_seconds`` (after a lost wait)."""
        log.warning(
            "executor.engine_lost",
            executor=NAME,
            run_id=run.spec.run_id,
            engine=self.engine,
            error=str(exc),
        )
        deadline = time.monotonic() + self.reconnect_seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                self._docker().ping()
                return True
            time.sleep(0.2)
        return False

    def _gone_message(self, run: _Container, exc: Exception) -> str:
        name = run.container.name if run.container is not None else "?"
        return (
            f"the Docker engine at {self.engine} went away while the run was going "
            f"({str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}); "
            f"its container {name} may still be running: bring the engine back and check "
            f"'docker ps -a --filter label={LABEL_PREFIX}run_id={run.spec.run_id}'"
        )

    def _final_state(self, run: _Container) -> tuple[dict[str, Any], tuple[str, ...], bytes | None]:
        state: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            run.container.reload()
            state = dict(run.container.attrs.get("State", {}))
        full: bytes | None = None
        with contextlib.suppress(Exception):
            full = (
                run.container.logs(stdout=True, stderr=True)
                if self.log_dir is not None
                else run.container.logs(tail=self.tail_lines, stdout=True, stderr=True)
            )
        text = (full or b"").decode("utf-8", "replace").splitlines()
        return state, tuple(text[-self.tail_lines :]), full

    def _perf(self, run: _Container, wall: float) -> Perf:
        if run.cgroup is not None and (accounting := run.cgroup.read()) is not None:
            return Perf(
                cpu_seconds=accounting.cpu_seconds,
                max_rss_bytes=accounting.peak_bytes,
                wall_seconds=wall,
            )
        with run.lock:
            samples = list(run.samples)
        return perf_from_stats(samples, wall)

    def _write_log_file(self, run: _Container, data: bytes) -> None:
        assert self.log_dir is not None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run.spec.run_id)[:80]
        with open(self.log_dir / f"{safe}.log", "ab") as out:
            out.write(data[: self.log_file_max_bytes])
            if len(data) > self.log_file_max_bytes:
                out.write(b"\n[hivebus: log file limit reached; later output only in the tail]\n")

    async def _watch_wall(self, run: _Container, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self._terminate(run, "timeout", f"still running at its {seconds:g} s wall-time limit")

    async def _terminate(self, run: _Container, reason: FailureReason, message: str) -> None:
        if run.result.done() or run.kill_reason is not None or run.container is None:
            return
        run.kill_reason, run.kill_message = reason, message
        with contextlib.suppress(Exception):  # SIGTERM, then SIGKILL after the grace period
            await asyncio.to_thread(run.container.stop, timeout=int(max(self.kill_grace, 0)))

    # --- OOM: the engine's events -------------------------------------------------------

    def _watch(self, run: _Container) -> None:
        with self._runs_lock:
            self._runs[run.container.id] = run
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(
                    target=self._watch_events,
                    args=(int(time.time()) - 1,),
                    daemon=True,
                    name="docker-events",
                )
                self._watcher.start()

    def _unwatch(self, run: _Container) -> None:
        if run.container is not None:
            with self._runs_lock:
                self._runs.pop(run.container.id, None)

    def _watch_events(self, since: int) -> None:
        """Kill a container at the engine's ``oom`` event (replayed from ``since``)."""
        while True:
            with self._runs_lock:
                if not self._runs:
                    self._watcher = None
                    return
            try:
                # A window of a few seconds, not an endless stream: the engine ends the stream
                # at ``until``, so the loop sees when no run is left and the thread ends (an
                # endless one stayed blocked in its read, one thread per executor, forever).
                until = int(time.time()) + _EVENTS_WINDOW_S
                events = self._docker().events(
                    since=since,
                    until=until,
                    decode=True,
                    filters={"type": "container", "event": "oom", "label": f"{LABEL_PREFIX}run_id"},
                )
                for event in events:
                    with self._runs_lock:
                        run = self._runs.get(
                            event.get("id") or event.get("Actor", {}).get("ID", "")
                        )
                    if run is not None:
                        self._kill_for_oom(run)
                since = until  # an event at ``until`` itself is seen twice: killing twice is a no-op
            except Exception as exc:
                log.debug("executor.events_ended", executor=NAME, error=str(exc))
                time.sleep(1.0)

    def _kill_for_oom(self, run: _Container) -> None:
        with run.lock:
            if run.finished.is_set() or run.kill_reason == "oom":
                return
            run.kill_reason = "oom"
            run.kill_message = "a process reached the memory limit"
        log.info("executor.oom", executor=NAME, run_id=run.spec.run_id)
        with contextlib.suppress(Exception):
            run.container.kill()

    def _sample_stats(self, run: _Container) -> None:
        """Sample the engine's stats while the container runs (no cgroup visible from here)."""
        while not run.finished.is_set():
            try:
                sample = run.container.stats(stream=False, one_shot=True)
            except Exception as exc:
                log.debug("executor.stats_ended", run_id=run.spec.run_id, error=str(exc))
                return
            if sample.get("memory_stats"):
                with run.lock:
                    run.samples.append(sample)
                    if len(run.samples) > 2:  # perf needs the peak and the last CPU total only
                        run.samples[:] = [max(run.samples[:-1], key=_working_set), run.samples[-1]]
            run.finished.wait(self.poll_seconds / 5)

    async def _remove(self, run: _Container) -> None:
        if run.container is not None and not self.keep_containers:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(run.container.remove, force=True)
        if run.cgroup is not None and not self.keep_containers:
            await asyncio.to_thread(run.cgroup.remove)


class _PullFailed(Exception):
    """The image is not in the engine and could not be pulled."""


def _has_shell(image_attrs: Mapping[str, Any]) -> bool:
    """Whether output can be merged by a shell: not for an image known to be built without one."""
    labels = (image_attrs.get("Config") or {}).get("Labels") or {}
    return labels.get(f"{LABEL_PREFIX}no-shell") is None


def _working_set(sample: Mapping[str, Any]) -> int:
    return perf_from_stats([sample], 0.0).max_rss_bytes


def _failure_of(exc: Exception, image: str, engine: str) -> tuple[FailureReason, str]:
    import docker.errors
    import requests.exceptions

    text = _explain(exc)
    if isinstance(exc, _PullFailed):
        return "not_found", f"image {image} is not in the engine and could not be pulled: {text}"
    if isinstance(exc, docker.errors.ImageNotFound):
        return "not_found", f"image {image} not found: {text}"
    if "executable file not found" in text or "no such file or directory" in text:
        return "not_found", f"command not found in {image}: {text}"
    if isinstance(exc, docker.errors.NotFound):
        return "not_found", f"image {image} not found: {text}"
    if isinstance(
        exc, requests.exceptions.ConnectionError | docker.errors.DockerException
    ) and not isinstance(exc, docker.errors.APIError):
        return "error", f"docker: no Docker engine answers at {engine} ({text})"
    return "error", f"docker: {text}"


def _explain(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).splitlines()[0][:300]


def _container_of(handle: RunHandle) -> _Container:
    if not isinstance(handle.ref, _Container):
        raise TypeError(f"run {handle.spec.run_id} was not started by the docker executor")
    return handle.ref
