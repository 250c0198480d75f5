"""The manifest a node registers with: from ``node.yaml``, from this machine, or virtual.

``hivebus node run`` without ``--manifest`` describes the machine it runs on (architecture,
cores, memory, the disk holding the data directory, a GPU if one is visible); ``--virtual``
adds the tag ``virtual`` and a simulated BME680 sensor. A ``node.config.updated`` from the hub
overlays tags and sensors; the node registers again whenever the result changes
(``manifest_digest``).
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import psutil

from hivebus.errors import SetupError
from hivebus.schemas.node import Hardware, NodeManifest, SensorSpec

VIRTUAL_TAG: Final = "virtual"
VIRTUAL_SENSOR: Final = SensorSpec(
    name="bme680",
    kind="env",
    device=None,
    expects=["env.temperature", "env.relative_humidity", "env.pressure"],
    max_silence=120.0,
)

_ARCH: Final = {
    "x86_64": "linux/amd64",
    "amd64": "linux/amd64",
    "aarch64": "linux/arm64",
    "arm64": "linux/arm64",
    "armv7l": "linux/arm/v7",
    "armv6l": "linux/arm/v6",
    "i686": "linux/386",
    "ppc64le": "linux/ppc64le",
    "s390x": "linux/s390x",
    "riscv64": "linux/riscv64",
}
_NODE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_GPU_DEVICES: Final = ("/dev/nvidia0", "/dev/nvhost-gpu", "/dev/dri/renderD128")


def host_arch() -> str:
    machine = platform.machine().lower()
    try:
        return _ARCH[machine]
    except KeyError:
        raise SetupError(
            f"unknown machine architecture {machine!r}", hint="write a node.yaml with hardware.arch"
        ) from None


def host_gpu() -> str | None:
    """A GPU visible to this machine (device node), or None."""
    for device in _GPU_DEVICES:
        if os.path.exists(device):
            return Path(device).name
    return None


def host_hardware(data_dir: Path) -> Hardware:
    data_dir.mkdir(parents=True, exist_ok=True)
    return Hardware(
        arch=host_arch(),
        cpus=psutil.cpu_count() or 1,
        memory=psutil.virtual_memory().total,
        disk=shutil.disk_usage(data_dir).total,
        gpu=host_gpu(),
    )


def host_manifest(
    node_id: str, data_dir: Path, *, executors: list[str] | None = None
) -> NodeManifest:
    """A manifest describing this machine, with no sensors."""
    check_node_id(node_id)
    return NodeManifest(
        node_id=node_id,
        vsn=node_id[-32:],
        hardware=host_hardware(data_dir),
        executors=executors or ["process"],  # type: ignore[arg-type]
    )


def check_node_id(node_id: str) -> str:
    """``node_id`` if it can name a node (one subject token), else a ``SetupError`` saying why."""
    if not _NODE_ID.fullmatch(node_id):
        raise SetupError(
            f"node id {node_id!r} is not valid",
            hint="1-64 letters, digits, '-' or '_', starting with a letter or digit (e.g. W012)",
        )
    return node_id


def virtual_manifest(base: NodeManifest) -> NodeManifest:
    """``base`` tagged ``virtual``, with the simulated BME680 unless it lists one already."""
    tags = [*base.tags, VIRTUAL_TAG] if VIRTUAL_TAG not in base.tags else list(base.tags)
    sensors = list(base.sensors)
    if not any(s.name == VIRTUAL_SENSOR.name for s in sensors):
        sensors.append(VIRTUAL_SENSOR)
    return base.model_copy(update={"tags": tags, "sensors": sensors})


def with_config(base: NodeManifest, config: Mapping[str, object]) -> NodeManifest:
    """``base`` with the tags and sensors a ``node.config.updated`` set (None = unchanged)."""
    update: dict[str, object] = {}
    if config.get("tags") is not None:
        update["tags"] = list(config["tags"])  # type: ignore[call-overload]
    if config.get("sensors") is not None:
        update["sensors"] = [SensorSpec.model_validate(s) for s in config["sensors"]]  # type: ignore[attr-defined]
    if not update:
        return base
    return NodeManifest.model_validate(
        {**base.model_dump(), **{k: _dump(v) for k, v in update.items()}}
    )


def _dump(value: object) -> object:
    if isinstance(value, list):
        return [v.model_dump() if isinstance(v, SensorSpec) else v for v in value]
    return value


def manifest_digest(manifest: NodeManifest) -> str:
    return hashlib.sha256(manifest.model_dump_json().encode()).hexdigest()
