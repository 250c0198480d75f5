"""Node (WES) events: registration, heartbeats, presence, sensors, plugin runs, triggers.

A node registers with its manifest (``node.yaml``: hardware, executors, sensors as devices),
then heartbeats its resources, which the scheduler reads as offers. ``plugin.status`` reports
each run's state and measured cost, which the ECR folds into profiles; ``trigger.fired`` is a
science rule's ``publish`` action, sent from the edge.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Final, Literal, Self

from pydantic import Field, Strict, StringConstraints, model_validator

from hivebus.schemas.data import ReadingName, ReadingValue
from hivebus.schemas.ecr import BundleId, HardwareProfile
from hivebus.schemas.envelope import Payload
from hivebus.schemas.fields import (
    STRICT,
    Architecture,
    Key,
    Label,
    NodeId,
    NonNegFloat,
    NonNegInt,
    Part,
    UtcTime,
)
from hivebus.schemas.registry import event
from hivebus.schemas.ses import PluginState

Executor = Literal["process", "docker", "wasm"]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _only_process() -> list[Executor]:
    return ["process"]


class Hardware(Part):
    """What a node has: platform, cores, bytes of memory and disk, GPU model if any."""

    arch: Architecture
    cpus: Annotated[int, Field(ge=1, le=4096)]
    memory: NonNegInt
    disk: NonNegInt
    gpu: str | None = None


class SensorSpec(Part):
    """A sensor as a device, the reading names it should produce and how long it may be quiet."""

    name: Label
    kind: Label
    device: str | None = None
    expects: list[ReadingName] = Field(default_factory=list)
    max_silence: Seconds = 300.0


DEVICE_FIELDS: Final = ("name", "type", "path", "exclusive", "attributes")
AttributeValue = Annotated[str, StringConstraints(min_length=1, max_length=256)]


def _attribute_text(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise ValueError(f"attribute {key!r} must be a string or a number, not {type(value).__name__}")


class DeviceSpec(Part):
    """A device a plugin can claim (EdgeRM's resources and attributes): a camera, a microphone,
    a serial sensor, a GPU. ``type`` is what an app's ``resources`` asks for
    (``RGB_image_producer``, ``camera``, ``microphone``, ``serial``, ``gpu``...); other keys of
    the node.yaml entry are its attributes (``view: top``, ``resolution: 1920x1080``), kept as
    text. An ``exclusive`` device (the default) serves one plugin of one goal at a time."""

    name: Label
    type: Label
    path: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    """Where the device is on the node (``/dev/video0``): what an executor would pass through."""
    exclusive: bool = True
    attributes: dict[Label, AttributeValue] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flat_attributes(cls, data: Any) -> Any:
        """node.yaml writes attributes beside the fields (``view: top``), as Sage's app
        ``resources`` items do; they are gathered into ``attributes``."""
        if not isinstance(data, dict):
            return data
        extra = {k: v for k, v in data.items() if k not in DEVICE_FIELDS}
        if not extra:
            return data
        for key in extra:
            close = difflib.get_close_matches(str(key), DEVICE_FIELDS, n=1, cutoff=0.8)
            if close:
                raise ValueError(f"unknown device key {key!r}: did you mean {close[0]!r}?")
        attributes = dict(data.get("attributes") or {})
        for key, value in extra.items():
            if key in attributes:
                raise ValueError(f"attribute {key!r} is given twice")
            attributes[key] = _attribute_text(str(key), value)
        return {**{k: v for k, v in data.items() if k in DEVICE_FIELDS}, "attributes": attributes}

    def describe(self) -> str:
        """``top_camera (RGB_image_producer)``."""
        return f"{self.name} ({self.type})"


class NodeManifest(Part):
    """A node as its ``node.yaml`` describes it (see ``hivebus.formats.load_manifest``)."""

    node_id: NodeId
    vsn: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    tags: list[Label] = Field(default_factory=list)
    hardware: Hardware
    executors: Annotated[list[Executor], Field(min_length=1)] = Field(default_factory=_only_process)
    sensors: list[SensorSpec] = Field(default_factory=list)
    node_class: Label | None = None
    devices: list[DeviceSpec] = Field(default_factory=list)
    """Devices plugins claim (docs/scheduling.md); a log written before them has none."""

    @model_validator(mode="after")
    def _distinct_devices(self) -> Self:
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise ValueError(
                f"device names are not unique: {sorted({n for n in names if names.count(n) > 1})}"
            )
        return self


class NodeResources(Part):
    """A heartbeat's view of free capacity: the offer placement reads."""

    cpus: Annotated[int, Field(ge=1, le=4096)]
    mem_total: NonNegInt
    mem_avail: NonNegInt
    disk_total: NonNegInt
    disk_avail: NonNegInt
    load1: NonNegFloat
    gpu: bool = False


class OutboxBacklog(Part):
    """What the node holds that the hub has not acknowledged yet."""

    messages: NonNegInt = 0
    bytes: NonNegInt = 0
    oldest_age_seconds: NonNegFloat | None = None


RefusalReason = Annotated[str, StringConstraints(min_length=1, max_length=1000)]


class HubRefusal(Part):
    """The hub refusing this node, as the node saw it: ``credential`` (the connection's
    credential is wrong or withdrawn) or ``events`` (connected, but its events may not be
    published: no credential, or a permission the hub does not give). ``until`` is None while
    it lasts; ``reason`` is the hub's refusal as the node met it (no secrets)."""

    kind: Literal["credential", "events"]
    reason: RefusalReason
    since: UtcTime
    until: UtcTime | None = None


class Perf(Part):
    """Measured cost of one plugin run."""

    cpu_seconds: NonNegFloat
    max_rss_bytes: NonNegInt
    wall_seconds: NonNegFloat
    gpu_percent: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] | None = None


# --- events ---------------------------------------------------------------------------------


@event("node.registered")
class NodeRegistered(Payload):
    model_config = STRICT

    manifest: NodeManifest
    agent_version: str | None = None

    @property
    def node_id(self) -> str:
        return self.manifest.node_id


@event("node.heartbeat")
class NodeHeartbeat(Payload):
    model_config = STRICT

    node: NodeId
    resources: NodeResources
    backlog: OutboxBacklog = Field(default_factory=OutboxBacklog)
    dropped: dict[str, NonNegInt] = Field(default_factory=dict)
    """Counters of what the node had to drop, by reason (``readings.outbox_full``...)."""
    uptime_seconds: NonNegFloat
    refusal: HubRefusal | None = None
    """The hub's current or most recent refusal of this node, carried until a heartbeat
    reporting its end was stored (docs/security.md); a log written before it has none."""


@event("node.online")
class NodeOnline(Payload):
    model_config = STRICT

    node: NodeId


@event("node.offline")
class NodeOffline(Payload):
    model_config = STRICT

    node: NodeId
    last_seen: UtcTime | None = None
    reason: str = ""


@event("node.sensor.lost")
class SensorLost(Payload):
    """A sensor stopped reporting (silent longer than ``max_silence``) or its device vanished."""

    model_config = STRICT

    node: NodeId
    sensor: Label
    reason: str


@event("node.sensor.restored")
class SensorRestored(Payload):
    model_config = STRICT

    node: NodeId
    sensor: Label
    reason: str = ""


@event("node.config.updated", route="toedge")
class NodeConfigUpdated(Payload):
    """New settings for one node's agent; fields left None are unchanged."""

    model_config = STRICT

    node: NodeId
    heartbeat_seconds: Seconds | None = None
    tags: list[Label] | None = None
    sensors: list[SensorSpec] | None = None
    settings: dict[str, str] = Field(default_factory=dict)


@event("plugin.status")
class PluginStatus(Payload):
    """One plugin run changed state on a node; terminal states carry exit code and perf."""

    model_config = STRICT

    node: NodeId
    job_id: Key
    plugin: Label
    bundle_id: BundleId
    run_id: Key
    state: Annotated[PluginState, Strict(False)]  # "running" as well as PluginState.RUNNING
    reason: str = ""
    exit_code: int | None = None
    log_tail: list[str] = Field(default_factory=list)
    perf: Perf | None = None
    hardware: HardwareProfile | None = None


@event("trigger.fired")
class TriggerFired(Payload):
    """A science rule's ``publish`` action fired on a node."""

    model_config = STRICT

    node: NodeId
    job_id: Key
    rule: Annotated[str, StringConstraints(min_length=1)]
    name: ReadingName
    value: ReadingValue
    time: UtcTime


@event("node.toedge.applied")
class ToEdgeApplied(Payload):
    """A node stored a to-edge message (a goal, its removal, a config update) and applied it,
    or refused it with the reason. ``goals`` lists the job ids the node holds afterwards;
    ``causationid`` is the to-edge event's id."""

    model_config = STRICT

    node: NodeId
    applied_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    applied_type: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    job_id: Key | None = None
    outcome: Literal["applied", "refused"] = "applied"
    reason: str = ""
    goals: list[Key] = Field(default_factory=list)


__all__ = [
    "DeviceSpec",
    "Executor",
    "Hardware",
    "HubRefusal",
    "NodeConfigUpdated",
    "NodeHeartbeat",
    "NodeManifest",
    "NodeOffline",
    "NodeOnline",
    "NodeRegistered",
    "NodeResources",
    "OutboxBacklog",
    "Perf",
    "PluginStatus",
    "SensorLost",
    "SensorRestored",
    "SensorSpec",
    "ToEdgeApplied",
    "TriggerFired",
]
