"""What a plugin needs on a node, and whether a node can hold it.

A plugin's demand on a node is, per resource, the larger of its profile (the worst of its
recent real runs on that hardware class, else on that arch, else anywhere: ``ecr.profile.recorded``)
and what the job requests (``pluginSpec.resource``: ``request.cpu: 250m``, ``limit.memory: 1Gi``,
``gpu: 1``; ``device.<name>`` keys claim devices, see ``devices``). With no profile and no request, the bundle's declared ``resources`` count, and
failing that ``HandlerConfig.default_cpu``/``default_memory``. A node holds a set of plugins
when what its current goals need plus theirs stays within its offer, on every resource:
goals are counted as if all their plugins ran at once, which is what a cron schedule can do.
"""

from __future__ import annotations

from dataclasses import dataclass

from hivebus.formats import parse_bytes, parse_cpu
from hivebus.handlers.catalog import Catalog
from hivebus.handlers.devices import DEVICE_KEY
from hivebus.handlers.nodes import NodeView, Usage
from hivebus.schemas.ses import ResourceRequest

_CPU_KEYS = ("request.cpu", "limit.cpu", "cpu", "requests.cpu", "limits.cpu")
_MEMORY_KEYS = ("request.memory", "limit.memory", "memory", "requests.memory", "limits.memory")
_GPU_KEYS = ("request.gpu", "limit.gpu", "gpu", "nvidia.com/gpu")


@dataclass(frozen=True, slots=True)
class Demand:
    usage: Usage
    wall: float | None
    """Profiled wall seconds of one run, when there is a profile."""
    basis: str
    """Where the figures come from: ``profiled on linux/arm64``, ``requested``, ``declared``..."""


def parse_request(resource: dict[str, str]) -> tuple[ResourceRequest, list[str]]:
    """The numbers in a plugin's ``resource`` map, and a problem per value that is not one."""
    problems: list[str] = []
    cpu = _first(resource, _CPU_KEYS, parse_cpu, problems)
    memory = _first(resource, _MEMORY_KEYS, parse_bytes, problems)
    gpu = _first(resource, _GPU_KEYS, _gpu_count, problems)
    known = {*_CPU_KEYS, *_MEMORY_KEYS, *_GPU_KEYS}
    problems += [
        f"unknown resource key {key!r}"
        for key in sorted(resource)
        if key not in known and not key.startswith(DEVICE_KEY)  # devices.job_claims reads those
    ]
    request = ResourceRequest(
        cpu=float(cpu) if cpu is not None else None,
        memory=int(memory) if memory is not None else None,
        gpu=int(gpu) if gpu is not None else 0,
    )
    return request, problems


def _first(
    resource: dict[str, str], keys: tuple[str, ...], parse: object, problems: list[str]
) -> float | int | None:
    values = []
    for key in keys:
        if key in resource:
            try:
                values.append(parse(resource[key]))  # type: ignore[operator]
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
    return max(values) if values else None


def _gpu_count(value: str) -> int:
    if value.strip().lower() in ("true", "yes"):
        return 1
    if value.strip().lower() in ("false", "no"):
        return 0
    count = int(value)
    if count < 0:
        raise ValueError(f"GPU count {value!r} is negative")
    return count


def demand(catalog: Catalog, bundle_id: str, request: ResourceRequest, node: NodeView) -> Demand:
    """What one plugin of ``bundle_id`` with ``request`` needs on ``node``."""
    config = catalog.config
    profile, basis = catalog.profile(bundle_id, node.hardware)
    bundle = catalog.bundles.get(bundle_id)
    declared = bundle.app.resources if bundle is not None else None
    requested_gpu = float(request.gpu * 100)
    if profile is not None:
        cpu = max(profile.cpu, request.cpu or 0.0)
        memory = max(profile.memory, request.memory or 0)
        gpu = max(profile.gpu, requested_gpu)
        return Demand(Usage(cpu, memory, gpu), profile.wall, basis)
    if request.cpu is not None or request.memory is not None or request.gpu:
        cpu = (
            request.cpu if request.cpu is not None else _declared_cpu(declared, config.default_cpu)
        )
        memory = (
            request.memory
            if request.memory is not None
            else _declared_memory(declared, config.default_memory)
        )
        return Demand(Usage(cpu, memory, requested_gpu), None, "requested")
    if declared is not None and (
        declared.cpu is not None or declared.memory is not None or declared.gpu
    ):
        return Demand(
            Usage(
                _declared_cpu(declared, config.default_cpu),
                _declared_memory(declared, config.default_memory),
                float((declared.gpu or 0) * 100),
            ),
            None,
            "declared by the bundle",
        )
    return Demand(
        Usage(config.default_cpu, config.default_memory, 0.0), None, "assumed (no profile yet)"
    )


def _declared_cpu(declared: object, default: float) -> float:
    value = getattr(declared, "cpu", None)
    return float(value) if value is not None else default


def _declared_memory(declared: object, default: int) -> int:
    value = getattr(declared, "memory", None)
    return int(value) if value is not None else default


def over(capacity: Usage, committed: Usage, need: Usage) -> list[str]:
    """Which resources ``committed + need`` exceeds on a node offering ``capacity``."""
    problems = []
    if committed.cpu + need.cpu > capacity.cpu + 1e-9:
        problems.append(
            f"cpu: {committed.cpu:g} of {capacity.cpu:g} cores committed, needs {need.cpu:g} more"
        )
    if committed.memory + need.memory > capacity.memory:
        problems.append(
            f"memory: {_mib(committed.memory)} of {_mib(capacity.memory)} committed, needs {_mib(need.memory)} more"
        )
    if need.gpu > 0 and committed.gpu + need.gpu > capacity.gpu + 1e-9:
        if capacity.gpu == 0:
            problems.append("gpu: the node has no GPU")
        else:
            problems.append(
                f"gpu: {committed.gpu:g}% of the GPU committed, needs {need.gpu:g}% more"
            )
    return problems


def headroom(capacity: Usage, used: Usage) -> float:
    """The smallest free fraction of cpu and memory once ``used`` is placed (0..1)."""
    fractions = []
    if capacity.cpu > 0:
        fractions.append((capacity.cpu - used.cpu) / capacity.cpu)
    if capacity.memory > 0:
        fractions.append((capacity.memory - used.memory) / capacity.memory)
    return max(0.0, min(fractions)) if fractions else 0.0


def _mib(value: int) -> str:
    return f"{value / 2**20:.0f}Mi" if value < 2**30 else f"{value / 2**30:.1f}Gi"


class Demands:
    """``demand`` memoized for one decision: the state does not change while it is made."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._memo: dict[tuple[object, ...], Demand] = {}

    def __call__(self, bundle_id: str, request: ResourceRequest, node: NodeView) -> Demand:
        hw = node.hardware
        key = (
            bundle_id,
            request.cpu,
            request.memory,
            request.gpu,
            hw.arch if hw else None,
            hw.gpu if hw else None,
            hw.node_class if hw else None,
        )
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = demand(self.catalog, bundle_id, request, node)
        return found
