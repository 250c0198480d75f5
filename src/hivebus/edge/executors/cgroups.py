"""The kernel's own accounting of a run's cgroup, read from the host (docker executor).

The docker executor puts each container under a parent cgroup of its own
(``--cgroup-parent /hivebus/<run>``, with the engine's ``cgroupfs`` driver). The container's
cgroup is removed when it exits, but its parent keeps what was charged to it: total CPU time
and the memory high-water mark of everything that ran in the container. So the figures are
the kernel's, complete to the last instant, read after the exit; no sampling can miss the end.

cgroup v1: ``cpuacct.usage`` (ns) and ``memory.max_usage_in_bytes``; v2: ``cpu.stat``
``usage_usec`` and ``memory.peak`` (Linux >= 5.19). Page cache still counted as inactive is
taken off the peak, as ``docker stats`` does.
"""

from __future__ import annotations

import contextlib
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path("/sys/fs/cgroup")
PARENT: Final = "hivebus"


def parent_of(run_id: str) -> str:
    """The ``cgroup_parent`` a run's container is created under."""
    return f"/{PARENT}/" + "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)[:80]


@dataclass(frozen=True)
class Accounting:
    cpu_seconds: float
    peak_bytes: int


@dataclass(frozen=True)
class RunCgroup:
    """Where a run's parent cgroup is on this host (v1: per controller, v2: one dir)."""

    parent: str
    cpu: Path  # dir holding cpuacct.usage (v1) or cpu.stat (v2)
    memory: Path  # dir holding memory.max_usage_in_bytes (v1) or memory.peak (v2)
    version: int

    @classmethod
    def find(cls, parent: str, root: Path = ROOT) -> RunCgroup | None:
        """The run's cgroup if this host shows it (a local engine with the cgroupfs driver)."""
        rel = parent.lstrip("/")
        if (root / "cgroup.controllers").exists():  # v2, unified
            d = root / rel
            if (d / "cpu.stat").exists() and (d / "memory.peak").exists():
                return cls(parent=parent, cpu=d, memory=d, version=2)
            return None
        cpu = next(
            (
                root / c / rel
                for c in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu")
                if (root / c / rel / "cpuacct.usage").exists()
            ),
            None,
        )
        memory = root / "memory" / rel
        if cpu is None or not (memory / "memory.max_usage_in_bytes").exists():
            return None
        return cls(parent=parent, cpu=cpu, memory=memory, version=1)

    def read(self) -> Accounting | None:
        try:
            if self.version == 1:
                cpu_ns = int((self.cpu / "cpuacct.usage").read_text())
                peak = int((self.memory / "memory.max_usage_in_bytes").read_text())
            else:
                stat = _keyed(self.cpu / "cpu.stat")
                cpu_ns = stat.get("usage_usec", 0) * 1000
                peak = int((self.memory / "memory.peak").read_text())
            memory = _keyed(self.memory / "memory.stat")
        except (OSError, ValueError):
            return None
        inactive = memory.get("total_inactive_file", memory.get("inactive_file", 0))
        return Accounting(cpu_seconds=cpu_ns / 1e9, peak_bytes=max(peak - inactive, 0))

    def remove(self) -> None:
        """rmdir the run's parent in every hierarchy (empty once the container is gone)."""
        rel = self.parent.lstrip("/")
        for d in sorted([*glob.glob(str(ROOT / "*" / rel)), str(ROOT / rel)], reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(d)


def _keyed(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out
