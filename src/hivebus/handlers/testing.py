"""Builders for handler tests: payloads with sensible defaults and a simulated log.

``Log`` plays the part of the EVENTS stream and of a live handler: ``log.add(event)`` appends
the event, lets the handler decide on it through a ``Driver`` and appends what it emitted,
so a test reads like a story (push, approve, register a node, submit) and asserts on the
events that came out. Pure: no server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hivebus.handlers.runtime import Driver, Step
from hivebus.schemas.ecr import AppInput, AppResources, AppSource, AppSpec, BundlePushed
from hivebus.schemas.envelope import Event, Payload
from hivebus.schemas.node import (
    DeviceSpec,
    Hardware,
    NodeHeartbeat,
    NodeManifest,
    NodeRegistered,
    NodeResources,
    OutboxBacklog,
    SensorSpec,
)
from hivebus.schemas.ses import JobPlugin, JobSpec, JobSubmitted, PluginSpec

GiB = 2**30
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def app_spec(
    bundle: str = "waggle/plugin-bme680:0.2.1",
    *,
    architectures: Sequence[str] = ("linux/amd64", "linux/arm64"),
    cpu: float | None = None,
    memory: int | None = None,
    gpu: int | None = None,
    inputs: Sequence[AppInput] = (),
    frozen: bool = False,
    url: str = "https://github.com/example/plugin",
    resource_list: Sequence[dict[str, Any]] = (),
) -> AppSpec:
    namespace, rest = bundle.split("/", 1)
    name, version = rest.split(":", 1)
    return AppSpec(
        namespace=namespace,
        name=name,
        version=version,
        description=f"{name} for tests",
        source=AppSource(url=url, architectures=list(architectures), git_commit="3f2c9a1"),
        resources=AppResources(cpu=cpu, memory=memory, gpu=gpu),
        resource_list=[dict(item) for item in resource_list],
        inputs=list(inputs),
        frozen=frozen,
    )


def manifest(
    node: str,
    *,
    tags: Sequence[str] = (),
    arch: str = "linux/arm64",
    cpus: int = 4,
    memory: int = 8 * GiB,
    gpu: str | None = None,
    sensors: Sequence[str] = ("bme680",),
    node_class: str | None = None,
    devices: Sequence[DeviceSpec | dict[str, Any]] = (),
) -> NodeManifest:
    return NodeManifest(
        node_id=node,
        vsn=node,
        tags=list(tags),
        hardware=Hardware(arch=arch, cpus=cpus, memory=memory, disk=100 * GiB, gpu=gpu),
        executors=["process", "docker"],
        sensors=[SensorSpec(name=s, kind="env") for s in sensors],
        node_class=node_class,
        devices=[DeviceSpec.model_validate(d) if isinstance(d, dict) else d for d in devices],
    )


def resources(
    cpus: int = 4, memory: int = 8 * GiB, *, load1: float = 0.2, gpu: bool = False
) -> NodeResources:
    return NodeResources(
        cpus=cpus,
        mem_total=memory,
        mem_avail=memory // 2,
        disk_total=100 * GiB,
        disk_avail=50 * GiB,
        load1=load1,
        gpu=gpu,
    )


def job_spec(
    plugins: Iterable[tuple[str, str]] = (("bme680", "waggle/plugin-bme680:0.2.1"),),
    *,
    nodes: Sequence[str] = (),
    tags: Sequence[str] = (),
    rules: Sequence[str] | None = None,
    criteria: Sequence[str] = (),
    selector: dict[str, str] | None = None,
    resource: dict[str, str] | None = None,
    name: str = "job",
) -> JobSpec:
    items = list(plugins)
    if rules is None:
        rules = [f"schedule({p}): cronjob('{p}', '*/5 * * * *')" for p, _ in items]
    return JobSpec(
        name=name,
        plugins=[
            JobPlugin(
                name=plugin,
                plugin_spec=PluginSpec(
                    image=f"registry.sagecontinuum.org/{bundle}",
                    selector=dict(selector or {}),
                    resource=dict(resource or {}),
                ),
            )
            for plugin, bundle in items
        ],
        nodes=list(nodes),
        node_tags=list(tags),
        science_rules=list(rules),
        success_criteria=list(criteria),
    )


@dataclass
class Log:
    """A simulated EVENTS stream with live handlers deciding on every event appended.

    Every event goes to every handler, in log order; what one emits is appended and goes to
    the others in turn (the ECR's registrations reach the scheduler, health's presence too).
    """

    handlers: Sequence[Any]
    now: datetime = T0
    events: list[Event] = field(default_factory=list)
    refused: list[tuple[Event, str]] = field(default_factory=list)
    """Inputs refused: dead letters, and commands answered by ``*.command.rejected``."""
    drivers: dict[str, Driver[Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.drivers = {h.name: Driver(h) for h in self.handlers}

    def state(self, name: str) -> Any:
        return self.drivers[name].state

    def later(self, seconds: float = 1.0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now

    def add(self, event: Event) -> list[Event]:
        """Append ``event`` and let every handler decide; returns everything it caused."""
        caused: list[Event] = []
        queue = [event]
        while queue:
            current = queue.pop(0)
            self.events.append(current)
            if current is not event:
                caused.append(current)
            for driver in self.drivers.values():
                step: Step = driver.deliver(current)
                if step.refused is not None:
                    self.refused.append((current, step.refused))
                for out in step.publish:  # a refused command: one rejection fact
                    if out.type.endswith(".command.rejected"):
                        self.refused.append((current, "; ".join(out.data.reasons)))
                queue += step.publish
        return caused

    def by(self, who: str, payload: Payload, subject: str | None = None) -> list[Event]:
        """An event from ``user/<who>`` (or ``node/<id>`` when ``who`` starts with ``node/``)."""
        source = who if "/" in who else f"user/{who}"
        key = subject or _subject_of(payload)
        return self.add(Event.new(payload, source=source, subject=key, time=self.later()))

    def tick(self, seconds: float = 0.0) -> list[Event]:
        """Let ``seconds`` pass and run every handler's timer."""
        now = self.later(seconds)
        caused: list[Event] = []
        for driver in self.drivers.values():
            for out in driver.tick(now):
                caused.append(out)
                caused += self.add(out)
        return caused

    # --- stories ----------------------------------------------------------------------------

    def push(self, app: AppSpec, pusher: str = "alice") -> list[Event]:
        return self.by(pusher, BundlePushed(app=app, pusher=pusher), app.bundle_id)

    def register_node(self, m: NodeManifest) -> list[Event]:
        return self.by(f"node/{m.node_id}", NodeRegistered(manifest=m), m.node_id)

    def heartbeat(
        self, node: str, res: NodeResources | None = None, backlog_age: float | None = None
    ) -> list[Event]:
        backlog = (
            OutboxBacklog(messages=1, bytes=1, oldest_age_seconds=backlog_age)
            if backlog_age
            else OutboxBacklog()
        )
        beat = NodeHeartbeat(
            node=node, resources=res or resources(), backlog=backlog, uptime_seconds=10.0
        )
        return self.by(f"node/{node}", beat, node)

    def submit(
        self, spec: JobSpec, job_id: str = "j1", user: str = "alice", **extra: Any
    ) -> list[Event]:
        return self.by(user, JobSubmitted(job_id=job_id, user=user, spec=spec, **extra), job_id)

    def of_type(self, event_type: str) -> list[Event]:
        return [e for e in self.events if e.type == event_type]


def _subject_of(payload: Payload) -> str:
    for name in ("bundle_id", "job_id", "node", "resource"):
        value = getattr(payload, name, None)
        if isinstance(value, str):
            return value
    return "x"
