"""Hardware-failure detection: is every sensor of the manifest still there and reporting?

A sensor is *lost* when its device path disappears, or when one of the reading names it
``expects`` has not arrived for longer than its ``max_silence``; it is *restored* when the
device is back and every expected name has arrived within ``max_silence`` again. A sensor
gets ``max_silence`` of grace after the agent starts (or after the manifest changes) before
silence counts. Arrival is timed on the node's monotonic clock, not by reading timestamps,
so a plugin with a wrong clock does not fake a loss.

``SensorWatch`` is pure (clock and device check are injected); the agent turns its
transitions into ``node.sensor.lost`` / ``node.sensor.restored`` events.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from hivebus.schemas.node import SensorSpec


@dataclass(frozen=True)
class Transition:
    sensor: str
    change: Literal["lost", "restored"]
    reason: str


class SensorWatch:
    def __init__(
        self,
        sensors: Iterable[SensorSpec],
        *,
        lost: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        device_exists: Callable[[str], bool] = os.path.exists,
    ) -> None:
        self._clock = clock
        self._exists = device_exists
        self.lost: dict[str, str] = dict(lost or {})
        self._sensors: list[SensorSpec] = []
        self._seen: dict[str, float] = {}
        self._expected: set[str] = set()
        self.reconfigure(sensors)

    def reconfigure(self, sensors: Iterable[SensorSpec]) -> None:
        """Watch ``sensors`` from now on (each gets its grace period again)."""
        now = self._clock()
        self._sensors = list(sensors)
        self._expected = {name for s in self._sensors for name in s.expects}
        self._seen = {name: now for name in self._expected}
        names = {s.name for s in self._sensors}
        self.lost = {k: v for k, v in self.lost.items() if k in names}

    def saw(self, name: str) -> None:
        """A reading called ``name`` arrived."""
        if name in self._expected:
            self._seen[name] = self._clock()

    def check(self) -> list[Transition]:
        """Sensors whose state changed since the last check."""
        now = self._clock()
        changes: list[Transition] = []
        for sensor in self._sensors:
            problem = self._problem(sensor, now)
            was_lost = sensor.name in self.lost
            if problem is not None and not was_lost:
                self.lost[sensor.name] = problem
                changes.append(Transition(sensor.name, "lost", problem))
            elif problem is None and was_lost:
                del self.lost[sensor.name]
                changes.append(Transition(sensor.name, "restored", "reporting again"))
        return changes

    def _problem(self, sensor: SensorSpec, now: float) -> str | None:
        if sensor.device and not self._exists(sensor.device):
            return f"device {sensor.device} is gone"
        for name in sensor.expects:
            silent = now - self._seen.get(name, now)
            if silent > sensor.max_silence:
                return f"no {name} for {silent:.0f}s (max_silence {sensor.max_silence:g}s)"
        return None
