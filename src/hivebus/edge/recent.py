"""Recent readings on the node, and the ``RuleContext`` science rules are evaluated against.

Rules run on the node, offline too, over what the node itself measured. The latest value of
every reading name is kept (one entry per name); a time series is kept only for the names a
rule aggregates (``avg``/``sum``/``rate``... over a window), for as long as the longest window
asks, with a hard cap on points, so memory stays bounded whatever plugins publish.

``TickContext`` is one evaluation round: ``cron_due(plugin, expr)`` is true when the cron
expression fires between the previous round and this one, independent of how the rest of the
condition short-circuits, so ``v('x') > 3 and cronjob(...)`` runs at the cron slots where the
reading is high -- not late, at the first round after a slot where it was low.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from datetime import datetime
from typing import Final

from hivebus.rules import cron_due

MAX_POINTS: Final = 100_000


class RecentReadings:
    def __init__(self, *, retention_seconds: float = 3600.0, max_points: int = MAX_POINTS) -> None:
        self._latest: dict[str, tuple[int, float | str]] = {}
        self._series: dict[str, deque[tuple[int, float]]] = {}
        self._retention_ns = int(retention_seconds * 1e9)
        self._max_points = max_points

    def watch(self, names: Iterable[str], retention_seconds: float) -> None:
        """Keep series for ``names`` (and only those) covering ``retention_seconds``."""
        wanted = set(names)
        self._series = {n: self._series.get(n) or deque(maxlen=self._max_points) for n in wanted}
        self._retention_ns = int(max(retention_seconds, 1.0) * 1e9)

    def add(self, name: str, value: float | int | str, timestamp_ns: int) -> None:
        latest = self._latest.get(name)
        if latest is None or timestamp_ns >= latest[0]:
            self._latest[name] = (timestamp_ns, value)
        series = self._series.get(name)
        if series is None or isinstance(value, str):
            return
        series.append((timestamp_ns, float(value)))
        horizon = timestamp_ns - self._retention_ns
        while series and series[0][0] < horizon:
            series.popleft()

    def value(self, name: str) -> float | str | None:
        latest = self._latest.get(name)
        if latest is None:
            return None
        value = latest[1]
        return value if isinstance(value, str) else float(value)

    def values(self, name: str, since_seconds: float, now_ns: int) -> list[tuple[int, float]]:
        series = self._series.get(name)
        if not series:
            return []
        horizon = now_ns - int(since_seconds * 1e9)
        return [(ts, v) for ts, v in series if ts >= horizon]

    @property
    def names(self) -> list[str]:
        return sorted(self._latest)


class TickContext:
    """The ``hivebus.rules.RuleContext`` of one evaluation round."""

    def __init__(self, recent: RecentReadings, now: datetime, previous: datetime) -> None:
        self._recent = recent
        self._now = now
        self._now_ns = int(now.timestamp() * 1e9)
        self._previous = previous

    def value(self, name: str) -> float | None:
        return self._recent.value(name)  # type: ignore[return-value]  # a str is allowed too

    def values(self, name: str, since_seconds: float) -> list[tuple[int, float]]:
        return self._recent.values(name, since_seconds, self._now_ns)

    def now(self) -> datetime:
        return self._now

    def cron_due(self, plugin: str, expr: str) -> bool:
        return cron_due(expr, self._previous, self._now)
