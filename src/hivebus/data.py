"""Sensor data as a pandas DataFrame, in the manner of sage-data-client.

    import hivebus.data
    df = hivebus.data.query(start="-1h", filter={"name": "env.temperature", "vsn": "W0*"})
    df.groupby(["meta.vsn"]).value.agg(["size", "min", "max", "mean"])

``start`` (required) and ``end`` are relative (``"-30s"``, ``"-10m"``, ``"-1h"``, ``"-2d"``,
``"-1w"``) or absolute (ISO 8601, e.g. ``"2025-05-01T10:30:00Z"``; no zone means UTC; a
``datetime`` works too); the window is ``start <= timestamp < end`` (no ``end``: up to now and
beyond). ``filter`` matches ``name`` and any meta key (``node``, ``vsn``, ``plugin``, ``sensor``...)
with ``*`` wildcards and ``|`` alternatives (``{"vsn": "W069|W097"}``). ``head``/``tail`` keep
the earliest/latest N readings of each series (a series is a name plus its meta), and are
mutually exclusive. Columns: ``timestamp`` (UTC, nanoseconds), ``name``, ``value``,
``meta.<key>`` for every meta key present, sorted by time.

Where the data comes from: the hub's query service by default (``hub=`` or
``HIVEBUS_NATS_URL``), or a DuckDB file directly (``db="views.duckdb"``) for offline analysis
of a copy or an as-of snapshot (``hivebus replay as-of``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import warnings
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from hivebus.errors import QueryError

if TYPE_CHECKING:
    import pandas as pd

    from hivebus.bus.client import Bus

T = TypeVar("T")

MAX_ROWS = 1_000_000
DEFAULT_TIMEOUT = 120.0
_RELATIVE = re.compile(r"^\s*-\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def query(
    start: str | datetime,
    end: str | datetime | None = None,
    head: int | None = None,
    tail: int | None = None,
    filter: Mapping[str, Any] | None = None,
    *,
    hub: str | None = None,
    db: str | Path | None = None,
    limit: int = MAX_ROWS,
    timeout: float = DEFAULT_TIMEOUT,
) -> pd.DataFrame:
    """Readings between ``start`` and ``end`` matching ``filter`` (see the module doc)."""
    sql, params = build_sql(start, end, head=head, tail=tail, filter=filter)
    if db is not None:
        table, truncated = _from_file(Path(db), sql, params, limit, timeout)
    else:
        table, truncated = _run(_from_hub(hub, sql, params, limit, timeout))
    if truncated:
        warnings.warn(f"the result was cut at {limit} rows: narrow the time range or the filter",
                      stacklevel=2)
    return to_frame(table)


async def aquery(
    bus: Bus,
    start: str | datetime,
    end: str | datetime | None = None,
    head: int | None = None,
    tail: int | None = None,
    filter: Mapping[str, Any] | None = None,
    *,
    limit: int = MAX_ROWS,
    timeout: float = DEFAULT_TIMEOUT,
) -> pd.DataFrame:
    """``query`` for async code that already has a ``Bus``."""
    from hivebus.projections.client import query as sql_query

    sql, params = build_sql(start, end, head=head, tail=tail, filter=filter)
    result = await sql_query(bus, sql, params, limit=limit, timeout=timeout, format="arrow")
    return to_frame(result.to_arrow())


# --- the SQL ----------------------------------------------------------------------------------


def build_sql(
    start: str | datetime,
    end: str | datetime | None = None,
    *,
    head: int | None = None,
    tail: int | None = None,
    filter: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> tuple[str, list[Any]]:
    """The SELECT over ``readings`` for a data query, with its parameters."""
    if head is not None and tail is not None:
        raise QueryError("only one of head or tail can be given")
    for name, n in (("head", head), ("tail", tail)):
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise QueryError(f"{name} must be a positive number of readings per series, not {n!r}")
    now = now or datetime.now(UTC)
    where = ["timestamp >= make_timestamp_ns(?::BIGINT)"]
    params: list[Any] = [resolve_time(start, now, "start")]
    if end is not None:
        where.append("timestamp < make_timestamp_ns(?::BIGINT)")
        params.append(resolve_time(end, now, "end"))
    for key, pattern in (filter or {}).items():
        clause, values = _match(_column(str(key)), str(pattern), str(key))
        where.append(clause)
        params.extend(values)
    sql = "SELECT timestamp, name, value, value_text, node, meta FROM readings WHERE " + " AND ".join(where)
    if head is not None or tail is not None:
        order = "ASC" if head is not None else "DESC"
        sql += (f" QUALIFY row_number() OVER (PARTITION BY name, node, meta ORDER BY timestamp {order}, seq {order})"
                " <= ?")
        params.append(head if head is not None else tail)
    return sql + " ORDER BY timestamp, seq", params


def resolve_time(value: str | datetime, now: datetime, what: str = "time") -> int:
    """Nanoseconds since the epoch for a relative (``-1h``) or absolute time."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return _ns(moment)
    if hasattr(value, "value") and hasattr(value, "tzinfo"):  # a pandas Timestamp
        stamp: Any = value
        return int(stamp.tz_localize("UTC").value if stamp.tzinfo is None else stamp.value)
    if not isinstance(value, str):
        raise QueryError(f"{what}: {value!r} is not a time", hint='write e.g. "-1h" or "2025-05-01T10:30:00Z"')
    text = value.strip()
    if text in ("now", "0", "-0"):
        return _ns(now)
    m = _RELATIVE.match(text)
    if m:
        return _ns(now) - int(float(m.group(1)) * _UNIT_SECONDS[m.group(2)] * 1e9)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise QueryError(f"{what}: {value!r} is neither a relative time nor an ISO 8601 time",
                         hint='write e.g. "-30m", "-1h", "-2d" or "2025-05-01T10:30:00Z"') from None
    fraction = re.search(r"\.(\d{7,9})", text)  # datetime keeps microseconds; keep the nanoseconds
    extra = int(fraction.group(1).ljust(9, "0")[6:]) if fraction else 0
    return _ns(moment if moment.tzinfo else moment.replace(tzinfo=UTC)) + extra


def _ns(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta // timedelta(microseconds=1)) * 1000


def _column(key: str) -> tuple[str, list[Any]]:
    if key == "name":
        return "name", []
    if key == "node":
        return "coalesce(meta['node'], node)", []
    return "meta[?]", [key]


def _match(column: tuple[str, list[Any]], pattern: str, key: str) -> tuple[str, list[Any]]:
    expr, expr_params = column
    alternatives = [p for p in pattern.split("|")] or [""]
    parts, params = [], []
    for alt in alternatives:
        if "*" in alt:
            like = alt.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%")
            parts.append(f"{expr} LIKE ? ESCAPE '\\'")
            params += [*expr_params, like]
        else:
            parts.append(f"{expr} = ?")
            params += [*expr_params, alt]
    return "(" + " OR ".join(parts) + ")", params


# --- running it -------------------------------------------------------------------------------


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` here, or on a private thread when this thread already runs a loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _from_hub(hub: str | None, sql: str, params: list[Any], limit: int, timeout: float) -> tuple[pa.Table, bool]:
    from hivebus.bus.client import Bus
    from hivebus.config import Settings
    from hivebus.projections.client import query as sql_query

    url = Settings.from_env(nats_url=hub).nats_url
    async with await Bus.connect(url, name="hivebus-data") as bus:
        result = await sql_query(bus, sql, params, limit=limit, timeout=timeout, format="arrow")
    return result.to_arrow(), result.truncated


def _from_file(path: Path, sql: str, params: list[Any], limit: int, timeout: float) -> tuple[pa.Table, bool]:
    from hivebus.projections.duck import connect
    from hivebus.projections.query import QueryEngine

    if not path.exists():
        raise QueryError(f"{path} does not exist", hint="give the projector's DuckDB file (views.duckdb) or an as-of file")
    con = connect(path, read_only=True)
    engine = QueryEngine(con.cursor, workers=1)
    try:
        result = _run(engine.run(sql, params, limit=limit, timeout=timeout))
    finally:
        engine.close()
        con.close()
    return result.table, result.truncated


# --- the DataFrame ------------------------------------------------------------------------------


def to_frame(table: pa.Table) -> pd.DataFrame:
    """``timestamp`` (UTC), ``name``, ``value``, ``meta.<key>`` from rows of ``readings``."""
    import numpy as np
    import pandas as pd

    n = table.num_rows
    if n == 0:
        return pd.DataFrame({"timestamp": pd.to_datetime([], utc=True), "name": pd.Series([], dtype=str),
                             "value": pd.Series([], dtype=float)})
    timestamps = pd.to_datetime(pc.cast(table.column("timestamp"), pa.int64()).to_numpy(), unit="ns", utc=True)
    values = table.column("value").to_numpy(zero_copy_only=False)
    texts = table.column("value_text")
    if texts.null_count == n:
        value: Any = values
    else:
        value = np.array(values, dtype=object)
        for i, text in enumerate(texts.to_pylist()):
            if text is not None:
                value[i] = text if np.isnan(values[i]) else int(text)  # a string, or an int's exact digits
    frame = {"timestamp": timestamps, "name": table.column("name").to_numpy(zero_copy_only=False), "value": value}
    frame.update(_meta_columns(table, n))
    return pd.DataFrame(frame)


def _meta_columns(table: pa.Table, n: int) -> dict[str, Any]:
    import numpy as np

    meta = table.column("meta").combine_chunks()
    offsets = meta.offsets.to_numpy()
    base, size = int(offsets[0]), int(offsets[-1] - offsets[0])
    keys, items = meta.keys, meta.items
    if len(keys) != size:  # a sliced array: its children still hold the rows around the slice
        keys, items = keys.slice(base, size), items.slice(base, size)
    parents = np.repeat(np.arange(len(meta)), np.diff(offsets))
    columns: dict[str, Any] = {}
    for key in sorted(k for k in pc.unique(keys).to_pylist() if k is not None):
        mask = pc.equal(keys, key)
        column = np.full(n, None, dtype=object)
        column[parents[mask.to_numpy(zero_copy_only=False)]] = pc.filter(items, mask).to_numpy(zero_copy_only=False)
        columns[f"meta.{key}"] = column
    if "meta.node" not in columns:
        columns["meta.node"] = table.column("node").to_numpy(zero_copy_only=False)
    return dict(sorted(columns.items()))
