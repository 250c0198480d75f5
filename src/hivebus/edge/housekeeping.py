"""Housekeeping measurements: the resources a heartbeat offers and the ``sys.*`` readings.

Names are Waggle's: ``sys.load1``, ``sys.mem.avail`` (bytes), ``sys.fs.avail`` (bytes free on
the data directory's file system, ``meta.fs``), ``sys.net.rx_bytes`` (bytes received since
boot, one reading per network interface, ``meta.device``), ``sys.thermal`` (deg C, one per
sensor the kernel exposes, ``meta.zone``; absent where there are none, as in most VMs) and
``sys.boot_time`` (Unix seconds).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import psutil

from hivebus.schemas.data import Reading
from hivebus.schemas.node import NodeManifest, NodeResources

_SKIP_INTERFACES = ("lo",)


def resources(data_dir: Path, manifest: NodeManifest) -> NodeResources:
    """What the node offers right now (cpus and totals from the machine, not the manifest)."""
    mem = psutil.virtual_memory()
    disk = shutil.disk_usage(data_dir)
    return NodeResources(
        cpus=psutil.cpu_count() or 1,
        mem_total=mem.total,
        mem_avail=mem.available,
        disk_total=disk.total,
        disk_avail=disk.free,
        load1=max(0.0, os.getloadavg()[0]),
        gpu=manifest.hardware.gpu is not None,
    )


def system_readings(data_dir: Path, now_ns: int | None = None) -> list[Reading]:
    """One round of ``sys.*`` readings."""
    t = now_ns or time.time_ns()
    out = [
        Reading(name="sys.load1", value=round(os.getloadavg()[0], 3), timestamp=t),
        Reading(name="sys.mem.avail", value=psutil.virtual_memory().available, timestamp=t),
        Reading(
            name="sys.fs.avail",
            value=shutil.disk_usage(data_dir).free,
            timestamp=t,
            meta={"fs": str(data_dir.resolve())},
        ),
        Reading(name="sys.boot_time", value=int(psutil.boot_time()), timestamp=t),
    ]
    for device, counters in sorted(psutil.net_io_counters(pernic=True).items()):
        if device not in _SKIP_INTERFACES:
            out.append(
                Reading(
                    name="sys.net.rx_bytes",
                    value=counters.bytes_recv,
                    timestamp=t,
                    meta={"device": device},
                )
            )
    for zone, value in _temperatures():
        out.append(Reading(name="sys.thermal", value=value, timestamp=t, meta={"zone": zone}))
    return out


def _temperatures() -> list[tuple[str, float]]:
    sensors = getattr(psutil, "sensors_temperatures", None)
    if sensors is None:
        return []
    try:
        found = sensors()
    except (OSError, RuntimeError):
        return []
    out = []
    for chip, entries in sorted(found.items()):
        for i, entry in enumerate(entries):
            label = entry.label or str(i)
            out.append((f"{chip}.{label}", round(float(entry.current), 2)))
    return out
