"""``experimental_func`` over ``experimental_window``, as the data API's aggregateWindow does.

Each series' points are grouped into windows aligned to the epoch (``window_ns`` long; without
a window, the whole query range is one window); a window's point is stamped with its end,
clipped to the query's end (InfluxDB's ``_stop``), and windows without points are left out.
``count`` counts every point; ``mean``, ``min``, ``max`` and ``sum`` take the numeric points
(a series of strings gives none). ``mean`` is a float; ``count`` an int; the others keep the
points' type. head/tail then apply to the aggregated points.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import groupby
from typing import Any, Final

from hivebus.data.frame import Record
from hivebus.data.request import DataQuery

_FUNCTIONS: Final[dict[str, Callable[[list[Any]], Any]]] = {
    "mean": lambda xs: sum(xs) / len(xs),
    "min": min,
    "max": max,
    "sum": sum,
}


def _series(record: Record) -> tuple[str, tuple[tuple[str, str], ...]]:
    return record["name"], tuple(record["meta"].items())


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def aggregate(records: list[Record], query: DataQuery) -> list[Record]:
    """Records (grouped by series, time-ordered within) -> one record per series and window."""
    assert query.func is not None
    out: list[Record] = []
    for _, points in groupby(records, key=_series):
        series = list(points)
        windows: dict[int, list[Any]] = {}
        for point in series:
            if query.window_ns:
                end = (point["timestamp"] // query.window_ns + 1) * query.window_ns
                stamp = min(end, query.end_ns)
            else:
                stamp = query.end_ns
            windows.setdefault(stamp, []).append(point["value"])
        first = series[0]
        aggregated: list[Record] = []
        for stamp, values in windows.items():
            if query.func == "count":
                value: Any = len(values)
            else:
                numbers = [v for v in values if _numeric(v)]
                if not numbers:
                    continue
                value = _FUNCTIONS[query.func](numbers)
            aggregated.append({"timestamp": stamp, "name": first["name"], "value": value, "meta": first["meta"]})
        if query.head is not None:
            aggregated = aggregated[: query.head]
        elif query.tail is not None:
            aggregated = aggregated[-query.tail :]
        out.extend(aggregated)
    return out
