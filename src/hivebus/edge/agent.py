"""``NodeAgent``: the edge stack of one node (WES), wired together.

Start-up never waits for the hub. In order: open ``<data-dir>/node.db`` (outbox and state),
start the node-local bus, register if the manifest changed since the last registration, then
run side by side until ``stop``:

- uplink: connect to the hub in the background, retrying; nats-py reconnects from then on;
- forwarder: outbox -> hub, in order, deleting only what was acked (``forwarder.py``);
- to-edge: goals, removals and config from the hub, stored before the ack (``toedge.py``);
- goal runner: rules and cron evaluated locally every second, runs through the executor;
- housekeeping: heartbeats (resources, outbox backlog, drop counters), ``sys.*`` readings,
  the sensor watch (``node.sensor.lost`` / ``restored``), virtual sensors with ``--virtual``;
- uploads: ``local.upload`` from plugins, shipped to the hub's object store when online;
- offload: ``local.offload`` from plugins, asked of the hub's scheduler (``offload.py``).

Stopping is orderly: runs are stopped (each reports ``stopped``), everything accepted is
committed, the forwarder gets a moment to drain while the hub is reachable, and the rest
stays in the outbox for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from hivebus.config import Settings
from hivebus.edge import housekeeping, refusal
from hivebus.edge import state as node_state
from hivebus.edge.db import NodeDatabase
from hivebus.edge.executors import (
    Capacity,
    Executor,
    ResourceGate,
    make_executor,
    node_executors,
)
from hivebus.edge.forwarder import Forwarder, ForwarderOptions
from hivebus.edge.goals import Goal
from hivebus.edge.intake import Identity, Intake
from hivebus.edge.localbus import LocalBus
from hivebus.edge.manifest import (
    check_node_id,
    host_manifest,
    manifest_digest,
    virtual_manifest,
    with_config,
)
from hivebus.edge.offload import OffloadService
from hivebus.edge.outbox import Outbox, OutboxLimits, StateWrite
from hivebus.edge.recent import RecentReadings
from hivebus.edge.runner import GoalRunner
from hivebus.edge.runs import RunEnvironment
from hivebus.edge.sensors import SensorWatch
from hivebus.edge.toedge import ToEdge
from hivebus.edge.uplink import Uplink
from hivebus.edge.virtual import VirtualBme680
from hivebus.errors import RuleSyntaxError, SetupError
from hivebus.rules import Rule
from hivebus.schemas.data import Reading
from hivebus.schemas.ecr import HardwareProfile
from hivebus.schemas.envelope import Event, Payload
from hivebus.schemas.node import (
    NodeHeartbeat,
    NodeManifest,
    NodeRegistered,
    OutboxBacklog,
    PluginStatus,
    SensorLost,
    SensorRestored,
    TriggerFired,
)
from hivebus.version import __version__

log = structlog.get_logger()


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """Everything one node agent needs; checked when built."""

    node_id: str
    hub_url: str
    data_dir: Path
    manifest: NodeManifest
    virtual: bool = False
    executor: str = "process"
    """The default executor: runs every plugin that is not a WASM module (``--executor``)."""
    optional_executors: tuple[str, ...] = ("wasm",)
    """Executors the node runs as well where they can run here (wasm: wasmtime installed)."""
    heartbeat_seconds: float = 30.0
    metrics_seconds: float = 60.0
    sensor_check_seconds: float = 5.0
    virtual_interval_seconds: float = 10.0
    virtual_rate: float | None = None  # virtual readings/s (load); None: one sample a tick
    rule_tick_seconds: float = 1.0
    drain_on_stop_seconds: float = 3.0
    local_port: int = 0
    host: str = field(default_factory=socket.gethostname)
    outbox: OutboxLimits = field(default_factory=OutboxLimits)
    forwarder: ForwarderOptions = field(default_factory=ForwarderOptions)
    settings: Settings | None = None

    def __post_init__(self) -> None:
        if self.manifest.node_id != self.node_id:
            raise SetupError(
                f"the manifest describes node {self.manifest.node_id!r}, not {self.node_id!r}",
                hint="fix node_id in node.yaml or --node-id",
            )
        for name in (
            "heartbeat_seconds",
            "metrics_seconds",
            "sensor_check_seconds",
            "virtual_interval_seconds",
            "rule_tick_seconds",
        ):
            if not getattr(self, name) > 0:
                raise SetupError(f"{name} must be > 0, got {getattr(self, name)}")

    @classmethod
    def build(
        cls,
        node_id: str,
        hub_url: str,
        *,
        data_dir: Path | None = None,
        manifest: NodeManifest | None = None,
        virtual: bool = False,
        **options: Any,
    ) -> AgentConfig:
        """A config with defaults for what is not given: the data dir ``.hivebus/nodes/<id>``,
        a manifest of this machine (``virtual_manifest`` of it with ``virtual``)."""
        check_node_id(node_id)
        data_dir = Path(data_dir or Path(".hivebus") / "nodes" / node_id)
        runs = node_executors(
            options.get("executor", "process"), options.get("optional_executors", ("wasm",))
        )
        base = manifest or host_manifest(node_id, data_dir, executors=runs)
        return cls(
            node_id=node_id,
            hub_url=hub_url,
            data_dir=data_dir,
            manifest=virtual_manifest(base) if virtual else base,
            virtual=virtual,
            **options,
        )


class NodeAgent:
    """One node's agent. ``await agent.run(stop)`` until ``stop`` is set."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.node = config.node_id
        self.source = f"node/{config.node_id}"
        self.ready = asyncio.Event()
        self.started = time.monotonic()
        self.manifest = config.manifest
        self._config_overlay: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._loops = asyncio.Event()  # set first at stop: periodic work and runs end
        self._forwarder_stop = asyncio.Event()  # set last: the forwarder may drain until then

    @classmethod
    def from_settings(
        cls, settings: Settings, node_id: str, *, virtual: bool = True, **options: Any
    ) -> NodeAgent:
        """For ``hivebus up``: a node of the local hub, virtual unless told otherwise."""
        options.setdefault("data_dir", settings.data_dir / "nodes" / node_id)
        return cls(
            AgentConfig.build(
                node_id, settings.nats_url, virtual=virtual, settings=settings, **options
            )
        )

    # --- running -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        async with contextlib.AsyncExitStack() as stack:
            await self._open(stack)
            await self._register()
            stack.push_async_callback(self._stop_tasks)
            self._start_tasks(stop)
            self.ready.set()
            log.info(
                "agent.started", node=self.node, local_bus=self.local.url, hub=self.config.hub_url
            )
            await stop.wait()
        log.info("agent.stopped", node=self.node, backlog=self.outbox.backlog_now()[0])

    async def _open(self, stack: contextlib.AsyncExitStack) -> None:
        """Open everything, each closed by ``stack`` in reverse order (even if a later step fails)."""
        cfg = self.config
        self.db = await NodeDatabase.open(cfg.data_dir / "node.db")
        stack.push_async_callback(self.db.close)
        self.outbox = await Outbox.open(self.db, self.node, cfg.outbox)
        stack.push_async_callback(self.outbox.close)
        self.state = await self.db.call(lambda: node_state.load(self.db.conn))
        self._config_overlay = dict(self.state.config)
        self.executors = self._make_executors()
        self.manifest = self._manifest(self._config_overlay)
        self.local = LocalBus(
            cfg.data_dir / "localbus", port=cfg.local_port, name=f"local-{self.node}"
        )
        self.local.start()  # main thread: the kernel stops it with the agent
        stack.push_async_callback(self.local.close)
        await self.local.connect()
        self.recent = RecentReadings()
        self.sensors = SensorWatch(self.manifest.sensors, lost=self.state.lost_sensors)
        self.intake = Intake(
            identity=Identity(node=self.node, vsn=self.manifest.vsn, host=cfg.host),
            outbox=self.outbox,
            recent=self.recent,
            sensors=self.sensors,
            publish_local=self.local.publish,
        )
        await self.local.subscribe("local.publish.>", self.intake.on_local_publish)
        self.uplink = Uplink(cfg.hub_url, name=f"node-{self.node}", settings=cfg.settings, node=self.node,
                             data_dir=cfg.data_dir)
        stack.push_async_callback(self.uplink.close)
        self.forwarder = Forwarder(self.outbox, self.uplink, cfg.forwarder)
        self.uploads = self._make_uploads()  # before the runner: each run gets its upload dir from it
        self.runner = self._make_runner()
        self.runner.set_goals(self._load_goals())
        self.toedge = ToEdge(
            node=self.node,
            outbox=self.outbox,
            goals=dict(self.runner.goals),
            config=self._config_overlay,
            applied=self.state.applied,
            on_goals=self.runner.set_goals,
            on_config=self._apply_config,
        )
        self.offloads = OffloadService(
            self.local.nc,
            self.node,
            hub=lambda: self.uplink.bus if self.uplink.online else None,
            append=self.outbox.append,
            run_here=self._run_offload_here,
        )

    def _make_executors(self) -> dict[str, Executor]:
        """The default executor (which must run here) and the optional ones that can."""
        cfg = self.config
        made: dict[str, Executor] = {}
        for name in node_executors(cfg.executor, cfg.optional_executors, check=False):
            executor = make_executor(
                name, log_dir=cfg.data_dir / "runs", scratch_dir=cfg.data_dir / "scratch"
            )
            problem = executor.available()
            if problem is None:
                made[name] = executor
            elif name == cfg.executor:
                raise SetupError(f"executor {cfg.executor!r} cannot run here: {problem}")
            else:
                log.info("agent.executor_unavailable", executor=name, reason=problem)
        return made

    def _manifest(self, config: dict[str, Any]) -> NodeManifest:
        """The manifest with the config overlay, listing every executor this node runs."""
        manifest = with_config(self.config.manifest, config)
        listed = list(manifest.executors)
        missing = [name for name in self.executors if name not in listed]
        if not missing:
            return manifest
        return manifest.model_copy(update={"executors": [*listed, *missing]})

    def _make_runner(self) -> GoalRunner:
        cfg = self.config
        hardware = self.manifest.hardware
        executor = self.executors[cfg.executor]
        gate = ResourceGate(
            Capacity(
                cpus=float(hardware.cpus),
                memory_bytes=hardware.memory,
                gpus=1 if hardware.gpu else 0,
            )
        )
        env = {
            "HIVEBUS_LOCAL_BUS": self.local.url,
            "HIVEBUS_VSN": self.manifest.vsn,
            "HIVEBUS_HOST": cfg.host,
        }  # HIVEBUS_UPLOAD_DIR and _UPLOAD_TOKEN: per run, from self.uploads
        return GoalRunner(
            executor=executor,
            executors=self.executors,
            gate=gate,
            environment=RunEnvironment(
                node=self.node,
                env=env,
                hardware=HardwareProfile(
                    arch=hardware.arch, gpu=hardware.gpu, node_class=self.manifest.node_class
                ),
                uploads=self.uploads,
            ),
            recent=self.recent,
            emit_status=self._emit_status,
            trigger=self._trigger,
            tick_seconds=cfg.rule_tick_seconds,
        )

    def _make_uploads(self) -> Any:
        from hivebus.edge.uploads import UploadService

        return UploadService(
            self.local.nc,
            self.config.data_dir,
            self.node,
            self.outbox.append,
            lambda: self.uplink.bus if self.uplink.online else None,
            runs_dir=self.config.data_dir / "scratch" / "uploads",  # only files a run staged
        )

    def _run_offload_here(self, event: Event) -> None:
        """Hold an offloaded execution's one-shot goal the hub did not send (it did not answer):
        beside the hub's goals, until the next change of those (not kept across a restart)."""
        goal = Goal.of(event)
        goals = {**self.toedge.goals, goal.job_id: goal}
        self.toedge.goals = goals
        self.runner.set_goals(goals)

    def _load_goals(self) -> dict[str, Goal]:
        goals = {}
        for job_id, event in self.state.goals.items():
            try:
                goals[job_id] = Goal.of(event)
            except RuleSyntaxError as exc:  # stored by an older agent that parsed it
                log.error("agent.goal_unreadable", job=job_id, error=str(exc))
        return goals

    def _start_tasks(self, stop: asyncio.Event) -> None:
        services: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("uplink", lambda: self.uplink.run(self._forwarder_stop)),
            ("forwarder", lambda: self.forwarder.run(self._forwarder_stop)),
            ("toedge", lambda: self.toedge.run(self.uplink, stop)),
            ("runner", lambda: self.runner.run(self._loops)),
            ("uploads", lambda: self.uploads.run(self._loops)),
            ("offload", lambda: self.offloads.run(self._loops)),
            ("heartbeat", lambda: self._every(lambda: self._heartbeat_seconds, self.heartbeat)),
            (
                "metrics",
                lambda: self._every(lambda: self._setting("metrics_seconds"), self.publish_metrics),
            ),
            (
                "sensors",
                lambda: self._every(
                    lambda: self._setting("sensor_check_seconds"), self.check_sensors
                ),
            ),
        ]
        if self.config.virtual:
            interval = self.config.virtual_interval_seconds
            services.append(
                ("virtual", lambda: self._every(lambda: interval, self.publish_virtual))
            )
        self._tasks = [
            asyncio.create_task(self._guarded(name, start), name=f"agent-{name}")
            for name, start in services
        ]

    async def _guarded(self, name: str, start: Callable[[], Awaitable[Any]]) -> None:
        """Run one service; if it fails unexpectedly, log why and start it again."""
        while not self._forwarder_stop.is_set():
            try:
                await start()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("agent.task_failed", task=name, restart_in=1.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._forwarder_stop.wait()

    async def _every(
        self, seconds: Callable[[], float], action: Callable[[], Awaitable[Any]]
    ) -> None:
        """``action()`` now and then every ``seconds()`` until the loops stop."""
        delay = 0.0
        while not self._loops.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._loops.wait()
            if self._loops.is_set():
                return
            try:
                await action()
            except Exception:
                log.exception(
                    "agent.periodic_failed", action=getattr(action, "__name__", str(action))
                )
            delay = float(seconds())

    async def _stop_tasks(self) -> None:
        """Stop runs and periodic work, commit what was accepted, let the forwarder drain a
        moment if the hub is reachable, then end the services."""
        self._loops.set()
        try:
            await self.runner.shutdown()
        except Exception:
            log.exception("agent.runner_shutdown_failed")
        await self.intake.drain()
        if self.uplink.online and self.config.drain_on_stop_seconds > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.drain_on_stop_seconds):
                    await self._drained()
        self._forwarder_stop.set()
        await asyncio.sleep(0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)

    async def _drained(self) -> None:
        while self.outbox.backlog_now()[0] > 0:
            await asyncio.sleep(0.05)

    # --- emitting ----------------------------------------------------------------------

    async def emit(
        self,
        payload: Payload,
        *,
        subject: str | None = None,
        cause: Event | None = None,
        state: StateWrite | None = None,
    ) -> Event:
        """Append one event this node produced to the outbox (durable when this returns)."""
        event = Event.new(
            payload,
            source=self.source,
            subject=subject or self.node,
            correlationid=cause.correlationid if cause else None,
            causationid=cause.id if cause else None,
        )
        await self.outbox.append_many([event], state=state)
        return event

    async def _emit_status(self, status: PluginStatus, goal: Goal) -> None:
        await self.emit(status, subject=status.run_id, cause=goal.event)

    async def _trigger(
        self, goal: Goal, rule: Rule, name: str, value: float | int | str, when: datetime
    ) -> None:
        fired = TriggerFired(
            node=self.node, job_id=goal.job_id, rule=rule.text, name=name, value=value, time=when
        )
        await self.emit(fired, subject=goal.job_id, cause=goal.event)
        local = Reading(
            name=name,
            value=value,
            timestamp=int(when.timestamp() * 1e9),
            meta={"job": goal.job_id},
            scope="node",
        )
        await self.intake.accept([local])

    # --- housekeeping ------------------------------------------------------------------

    async def _register(self, cause: Event | None = None) -> None:
        """Register when the manifest differs from the one last registered (or never was)."""
        digest = manifest_digest(self.manifest)
        if digest == self.state.registered_digest:
            return
        await self.emit(
            NodeRegistered(manifest=self.manifest, agent_version=__version__),
            cause=cause,
            state=node_state.put_value(node_state.REGISTERED, digest),
        )
        self.state.registered_digest = digest
        log.info(
            "agent.registered",
            node=self.node,
            tags=self.manifest.tags,
            sensors=[s.name for s in self.manifest.sensors],
        )

    def _apply_config(self, config: dict[str, Any]) -> None:
        self._config_overlay = dict(config)
        manifest = self._manifest(config)
        if manifest.sensors != self.manifest.sensors:
            self.sensors.reconfigure(manifest.sensors)
        self.manifest = manifest  # settings the agent does not use (allow_users...) are the hub's
        task = asyncio.ensure_future(self._register())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def _heartbeat_seconds(self) -> float:
        return float(self._config_overlay.get("heartbeat_seconds") or self.config.heartbeat_seconds)

    def _setting(self, key: str) -> float:
        raw = self._config_overlay.get("settings", {}).get(key)
        try:
            value = float(raw) if raw is not None else None
        except ValueError:
            value = None
        return value if value and value > 0 else float(getattr(self.config, key))

    async def heartbeat(self) -> Event:
        backlog = await self.outbox.backlog()
        held = await self._refusal_to_report()
        beat = NodeHeartbeat(
            node=self.node,
            resources=housekeeping.resources(self.config.data_dir, self.manifest),
            backlog=OutboxBacklog(
                messages=backlog.messages,
                bytes=backlog.bytes,
                oldest_age_seconds=backlog.oldest_age_seconds,
            ),
            dropped=self.outbox.dropped(),
            uptime_seconds=time.monotonic() - self.started,
            refusal=None if held is None else refusal.for_heartbeat(held),
        )
        event = Event.new(beat, source=self.source, subject=self.node)
        (nodeseq,) = await self.outbox.append_many([event])
        if held is not None and not held.ongoing and nodeseq is not None:
            refusal.reported_in(self.config.data_dir, held, nodeseq)
        return event

    async def _refusal_to_report(self) -> refusal.Refusal | None:
        """The hub's refusal the next heartbeat carries (edge.refusal). An ended one is carried
        until the heartbeat noted as reporting it has left the outbox acked by the hub; then
        its record is removed. One parked instead (refused for what it is) is carried again."""
        data_dir = self.config.data_dir
        held = refusal.read(data_dir)
        if held is None or held.reported is None:
            return held
        seq = held.reported
        where = await self.db.call(lambda: _held_in(self.db.conn, seq))
        if where == "lifecycle":
            return held  # on its way: carried again meanwhile
        if where == "parked":
            refusal.unreported(data_dir, held)
        else:
            refusal.done(data_dir, held)
        return refusal.read(data_dir)  # (a new refusal may have begun meanwhile)

    async def publish_metrics(self) -> None:
        await self.intake.accept(housekeeping.system_readings(self.config.data_dir))

    async def check_sensors(self) -> None:
        for change in self.sensors.check():
            payload: Payload
            if change.change == "lost":
                payload = SensorLost(node=self.node, sensor=change.sensor, reason=change.reason)
                log.warning("agent.sensor_lost", sensor=change.sensor, reason=change.reason)
            else:
                payload = SensorRestored(node=self.node, sensor=change.sensor, reason=change.reason)
                log.info("agent.sensor_restored", sensor=change.sensor)
            await self.emit(
                payload,
                state=node_state.put_value(node_state.LOST_SENSORS, dict(self.sensors.lost)),
            )

    async def publish_virtual(self) -> None:
        if not hasattr(self, "_bme680"):
            self._bme680 = VirtualBme680(readings_per_second=self.config.virtual_rate)
        await self.intake.accept(self._bme680.due(time.time_ns(), meta={"task": "virtual-bme680"}))


def _held_in(conn: sqlite3.Connection, nodeseq: int) -> str | None:
    """Where the outbox holds the event ``nodeseq``: ``lifecycle`` (not acked yet), ``parked``
    (refused by the hub for what it is), or None (acked: the hub stored it)."""
    for table in ("lifecycle", "parked"):
        if conn.execute(f"SELECT 1 FROM {table} WHERE nodeseq = ?", (nodeseq,)).fetchone():
            return table
    return None
