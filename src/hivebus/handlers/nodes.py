"""What the scheduler knows about a node: manifest, last offer, presence, sensors, access.

Folded from ``node.registered`` (the manifest), ``node.heartbeat`` (the offer: cores,
memory, GPU, load, outbox backlog), ``node.online``/``node.offline`` and the hub's
``node.sensor.lost``/``restored`` (from the health handler), and ``node.config.updated``
(tags, and who may run there: settings ``allow_users`` / ``allow_groups``, comma lists;
a node with neither is open to every user; ``allow_privileged: true`` lets plugins ask for
``privileged: true``, which no node allows by default; ``zone``, the node's compute unit for
a ``zone`` selector, ``core`` by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from hivebus.schemas.ecr import HardwareProfile
from hivebus.schemas.node import NodeManifest, NodeResources, OutboxBacklog


@dataclass(frozen=True, slots=True)
class Usage:
    """Cores, bytes of memory, percent of one GPU."""

    cpu: float = 0.0
    memory: int = 0
    gpu: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.cpu + other.cpu, self.memory + other.memory, self.gpu + other.gpu)


@dataclass(slots=True)
class NodeView:
    id: str
    manifest: NodeManifest | None = None
    resources: NodeResources | None = None
    backlog: OutboxBacklog = field(default_factory=OutboxBacklog)
    last_heartbeat: datetime | None = None
    online: bool = False
    lost_sensors: set[str] = field(default_factory=set)
    tags_override: list[str] | None = None
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def registered(self) -> bool:
        return self.manifest is not None

    @property
    def tags(self) -> set[str]:
        if self.tags_override is not None:
            return set(self.tags_override)
        return set(self.manifest.tags) if self.manifest else set()

    @property
    def virtual(self) -> bool:
        return "virtual" in self.tags

    @property
    def arch(self) -> str | None:
        return self.manifest.hardware.arch if self.manifest else None

    @property
    def has_gpu(self) -> bool:
        hw_gpu = bool(self.manifest and self.manifest.hardware.gpu)
        return hw_gpu or bool(self.resources and self.resources.gpu)

    @property
    def hardware(self) -> HardwareProfile | None:
        if self.manifest is None:
            return None
        hw = self.manifest.hardware
        return _hardware(hw.arch, hw.gpu, self.manifest.node_class)

    @property
    def capacity(self) -> Usage:
        """The offer: the last heartbeat's cores and memory, else the manifest's."""
        if self.resources is not None:
            cpu, memory = float(self.resources.cpus), self.resources.mem_total
        elif self.manifest is not None:
            cpu, memory = float(self.manifest.hardware.cpus), self.manifest.hardware.memory
        else:
            cpu, memory = 0.0, 0
        return Usage(cpu, memory, 100.0 if self.has_gpu else 0.0)

    def sensors_working(self) -> set[str]:
        """Names and kinds of the manifest's sensors that are not reported lost."""
        if self.manifest is None:
            return set()
        working: set[str] = set()
        for sensor in self.manifest.sensors:
            if sensor.name not in self.lost_sensors:
                working |= {sensor.name, sensor.kind}
        return working

    def device_names(self) -> set[str]:
        """Names and types of the manifest's devices."""
        if self.manifest is None:
            return set()
        return {d.name for d in self.manifest.devices} | {d.type for d in self.manifest.devices}

    @property
    def allows_privileged(self) -> bool:
        return self.settings.get("allow_privileged", "").strip().lower() in ("true", "yes", "1")

    def allows(self, user: str, groups: frozenset[str]) -> bool:
        users = _names(self.settings.get("allow_users", ""))
        allowed_groups = _names(self.settings.get("allow_groups", ""))
        if not users and not allowed_groups:
            return True
        return user in users or bool(groups & allowed_groups)


@lru_cache(maxsize=4096)
def _hardware(arch: str, gpu: str | None, node_class: str | None) -> HardwareProfile:
    """One profile object per hardware class, not one per lookup."""
    return HardwareProfile(arch=arch, gpu=gpu, node_class=node_class)


def _names(text: str) -> set[str]:
    return {name.strip() for name in text.split(",") if name.strip()}
