"""What a rule reads the world through (``RuleContext``), and an in-memory implementation.

The edge agent implements the protocol over its local readings; ``MemoryContext`` is a small
self-contained one (a bounded history per reading name, a clock, cron bookkeeping) that the
agent may use as it is and that tests and dry-runs use.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import defaultdict
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from hivebus.rules.cron import cron_due


@runtime_checkable
class RuleContext(Protocol):
    """The readings, clock and cron state a rule is evaluated against."""

    def value(self, name: str) -> float | None:
        """The latest value of reading ``name`` (a str value is allowed too), None if none."""
        ...

    def values(self, name: str, since_seconds: float) -> list[tuple[int, float]]:
        """``(timestamp_ns, value)`` of ``name`` received in the last ``since_seconds``."""
        ...

    def now(self) -> datetime:
        """The current time (aware)."""
        ...

    def cron_due(self, plugin: str, expr: str) -> bool:
        """Whether ``plugin``'s cron schedule ``expr`` is due now."""
        ...


class MemoryContext:
    """Readings kept in memory for ``retention_seconds``; cron due once per scheduled slot.

    ``cron_due`` remembers when it last answered True for a (plugin, expression), so a rule
    evaluated every few seconds runs its plugin once per cron slot, not once per evaluation.
    """

    def __init__(self, *, now: datetime | None = None, retention_seconds: float = 86400.0) -> None:
        self._now = now
        self.retention_ns = int(retention_seconds * 1e9)
        self._series: dict[str, list[tuple[int, float | str]]] = defaultdict(list)
        self._cron_last: dict[tuple[str, str], datetime] = {}

    def set_now(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now if self._now is not None else datetime.now(UTC)

    def add(self, name: str, value: float | str, timestamp_ns: int) -> None:
        """Record one reading; readings older than the retention are forgotten."""
        series = self._series[name]
        insort(series, (timestamp_ns, value), key=lambda point: point[0])
        horizon = series[-1][0] - self.retention_ns
        if series[0][0] < horizon:
            del series[: bisect_left(series, horizon, key=lambda point: point[0])]

    def value(self, name: str) -> float | None:
        series = self._series.get(name)
        return series[-1][1] if series else None  # type: ignore[return-value]

    def values(self, name: str, since_seconds: float) -> list[tuple[int, float]]:
        series = self._series.get(name, [])
        horizon = int(self.now().timestamp() * 1e9) - int(since_seconds * 1e9)
        start = bisect_left(series, horizon, key=lambda point: point[0])
        return [(ts, value) for ts, value in series[start:] if not isinstance(value, str)]

    def cron_due(self, plugin: str, expr: str) -> bool:
        key = (plugin, expr)
        now = self.now()
        if cron_due(expr, self._cron_last.get(key), now):
            self._cron_last[key] = now
            return True
        return False
