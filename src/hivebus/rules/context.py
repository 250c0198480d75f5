"""What a rule reads the world through (``RuleContext``), and an in-memory implementation.

A context answers three questions: the time, the readings of a name in the last N seconds
(with their meta, so ``v('env.temperature', sensor='bme680')`` can filter), and when a plugin
last ran (Sage's ``sys.scheduler.plugin.lastexecution``, for ``after`` and ``cronjob``).
The edge agent implements it over the node's recent readings (``hivebus.edge.recent``);
``MemoryContext`` is the self-contained one that dry-runs and tests use. Both give the same
answers for the same readings, runs and clock: the evaluation is the same code.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import NamedTuple, Protocol, runtime_checkable

from hivebus.rules.syntax import Scalar

NO_META: Mapping[str, str] = MappingProxyType({})


class Point(NamedTuple):
    timestamp_ns: int
    value: Scalar
    meta: Mapping[str, str] = NO_META


def window_start_ns(now: datetime, since_seconds: float) -> int:
    """The first nanosecond a window of ``since_seconds`` back from ``now`` holds."""
    return int(now.timestamp() * 1e9) - int(since_seconds * 1e9)


@runtime_checkable
class RuleContext(Protocol):
    """The clock, readings and plugin runs a rule is evaluated against."""

    def now(self) -> datetime:
        """The current time (aware)."""
        ...

    def readings(self, name: str, since_seconds: float) -> Sequence[Point]:
        """Readings of ``name`` from ``since_seconds`` before now on (later ones included)."""
        ...

    def last_run(self, plugin: str) -> datetime | None:
        """When ``plugin`` last completed a run, None if it never did."""
        ...


class MemoryContext:
    """Readings kept in memory for ``retention_seconds``, plugin runs recorded by the caller."""

    def __init__(self, *, now: datetime | None = None, retention_seconds: float = 86400.0) -> None:
        self._now = now
        self.retention_ns = int(retention_seconds * 1e9)
        self._series: dict[str, list[Point]] = defaultdict(list)
        self._runs: dict[str, datetime] = {}

    def set_now(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now if self._now is not None else datetime.now(UTC)

    def add(
        self, name: str, value: Scalar, timestamp_ns: int, meta: Mapping[str, str] | None = None
    ) -> None:
        """Record one reading; readings older than the retention are forgotten."""
        series = self._series[name]
        insort(series, Point(timestamp_ns, value, meta or NO_META), key=lambda p: p.timestamp_ns)
        horizon = series[-1].timestamp_ns - self.retention_ns
        if series[0].timestamp_ns < horizon:
            del series[: bisect_left(series, horizon, key=lambda p: p.timestamp_ns)]

    def record_run(self, plugin: str, at: datetime | None = None) -> None:
        """``plugin`` completed a run at ``at`` (default: now)."""
        self._runs[plugin] = at or self.now()

    def value(self, name: str) -> Scalar | None:
        """The latest value of ``name``, None if none."""
        series = self._series.get(name)
        return series[-1].value if series else None

    def readings(self, name: str, since_seconds: float) -> list[Point]:
        series = self._series.get(name, [])
        start = bisect_left(
            series, window_start_ns(self.now(), since_seconds), key=lambda p: p.timestamp_ns
        )
        return series[start:]

    def last_run(self, plugin: str) -> datetime | None:
        return self._runs.get(plugin)
