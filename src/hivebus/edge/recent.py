"""Recent readings on the node, and the ``RuleContext`` science rules are evaluated against.

Rules run on the node, offline too, over what the node itself measured. The latest value of
every reading name is kept (one entry per name); a time series, with each reading's meta, is
kept only for the names a rule reads (``v``/``rate``), for as long as the longest window
asks, with a hard cap on points, so memory stays bounded whatever plugins publish.

``TickContext`` is one evaluation round of one goal: the round's time, these readings, and
when each of the goal's plugins last completed a run (for ``after`` and ``cronjob``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Final

from hivebus.rules import Point
from hivebus.rules.context import NO_META, window_start_ns

MAX_POINTS: Final = 100_000


class RecentReadings:
    def __init__(self, *, retention_seconds: float = 3600.0, max_points: int = MAX_POINTS) -> None:
        self._latest: dict[str, tuple[int, float | int | str]] = {}
        self._series: dict[str, deque[Point]] = {}
        self._retention_ns = int(retention_seconds * 1e9)
        self._max_points = max_points

    def watch(self, names: Iterable[str], retention_seconds: float) -> None:
        """Keep series for ``names`` (and only those) covering ``retention_seconds``."""
        wanted = set(names)
        self._series = {n: self._series.get(n) or deque(maxlen=self._max_points) for n in wanted}
        self._retention_ns = int(max(retention_seconds, 1.0) * 1e9)

    def add(
        self,
        name: str,
        value: float | int | str,
        timestamp_ns: int,
        meta: Mapping[str, str] | None = None,
    ) -> None:
        latest = self._latest.get(name)
        if latest is None or timestamp_ns >= latest[0]:
            self._latest[name] = (timestamp_ns, value)
        series = self._series.get(name)
        if series is None:
            return
        series.append(Point(timestamp_ns, value, meta or NO_META))
        horizon = timestamp_ns - self._retention_ns
        while series and series[0].timestamp_ns < horizon:
            series.popleft()

    def value(self, name: str) -> float | str | None:
        latest = self._latest.get(name)
        if latest is None:
            return None
        value = latest[1]
        return value if isinstance(value, str) else float(value)

    def readings(self, name: str, since_seconds: float, now: datetime) -> list[Point]:
        series = self._series.get(name)
        if not series:
            return []
        start = window_start_ns(now, since_seconds)
        return [point for point in series if point.timestamp_ns >= start]

    @property
    def names(self) -> list[str]:
        return sorted(self._latest)


class TickContext:
    """The ``hivebus.rules.RuleContext`` of one evaluation round of one goal."""

    def __init__(
        self,
        recent: RecentReadings,
        now: datetime,
        last_runs: Mapping[str, datetime] | None = None,
    ) -> None:
        self._recent = recent
        self._now = now
        self._last_runs = last_runs or {}

    def now(self) -> datetime:
        return self._now

    def readings(self, name: str, since_seconds: float) -> list[Point]:
        return self._recent.readings(name, since_seconds, self._now)

    def last_run(self, plugin: str) -> datetime | None:
        return self._last_runs.get(plugin)
