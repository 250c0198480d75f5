"""A data query as the Sage data API receives it, checked: ``DataQuery.from_body``.

The body sage-data-client 0.9.1 sends to ``POST /api/v1/query``: ``start`` (required),
``end``, ``head`` or ``tail`` (earliest/latest N points of each series, never both),
``filter`` (Beehive's, ``filters``), ``experimental_func`` (``mean``, ``min``, ``max``,
``sum``, ``count``) and ``experimental_window`` (a duration such as ``"1m"``, ``"1h30m"``;
without one the function aggregates each series over the whole window), ``bucket`` (ignored:
hivebus has one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from hivebus.data.filters import check_filter
from hivebus.data.times import resolve_time
from hivebus.errors import QueryError

FUNCTIONS: Final = ("mean", "min", "max", "sum", "count")
BODY_KEYS: Final = frozenset({"start", "end", "head", "tail", "filter", "experimental_func",
                              "experimental_window", "bucket"})


class HeadAndTailError(QueryError, ValueError):
    """head and tail together (sage-data-client raises ValueError for it)."""


@dataclass(frozen=True, kw_only=True)
class DataQuery:
    start_ns: int
    end_ns: int
    head: int | None = None
    tail: int | None = None
    filter: Mapping[str, str] = field(default_factory=dict)
    func: str | None = None
    window_ns: int | None = None

    @classmethod
    def build(cls, start: Any, end: Any = None, head: Any = None, tail: Any = None, filter: Any = None,
              experimental_func: Any = None, experimental_window: Any = None, now: Any = None) -> DataQuery:
        import pandas as pd

        if head is not None and tail is not None:
            raise HeadAndTailError("only one of `head` or `tail` can be provided")
        for what, n in (("head", head), ("tail", tail)):
            if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
                raise QueryError(f"{what} must be a positive number of points per series, not {n!r}")
        if start is None:
            raise QueryError("start is required", hint='e.g. "-1h" or "2025-05-01T10:30:00Z"')
        from hivebus.data.times import now_utc

        now = pd.Timestamp(now) if now is not None else now_utc()
        window_ns = None
        if experimental_func is not None and experimental_func not in FUNCTIONS:
            raise QueryError(f"experimental_func {experimental_func!r} is not one of {', '.join(FUNCTIONS)}")
        if experimental_window is not None:
            if experimental_func is None:
                raise QueryError("experimental_window needs an experimental_func", hint="e.g. mean")
            try:
                window_ns = int(pd.to_timedelta(experimental_window).value)
            except (TypeError, ValueError):
                window_ns = 0
            if window_ns <= 0:
                raise QueryError(f"experimental_window {experimental_window!r} is not a positive duration",
                                 hint='e.g. "1m", "10s", "1h30m"')
        return cls(
            start_ns=resolve_time(start, now, "start"),
            end_ns=resolve_time(end, now, "end") if end is not None else resolve_time("now", now),
            head=head, tail=tail, filter=check_filter(filter), func=experimental_func, window_ns=window_ns,
        )

    @classmethod
    def from_body(cls, body: Any, now: Any = None) -> DataQuery:
        """The Sage data API's request body (a JSON object), checked; QueryError names what is wrong."""
        if not isinstance(body, Mapping):
            raise QueryError("the query must be a JSON object", hint='e.g. {"start": "-1h"}')
        unknown = sorted(set(body) - BODY_KEYS)
        if unknown:
            raise QueryError(f"unknown query field(s): {', '.join(map(str, unknown))}",
                             hint=f"fields are {', '.join(sorted(BODY_KEYS))}")
        return cls.build(body.get("start"), body.get("end"), body.get("head"), body.get("tail"),
                         body.get("filter"), body.get("experimental_func"), body.get("experimental_window"),
                         now=now)
