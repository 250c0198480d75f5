"""Sensor data as a pandas DataFrame, with the Sage data API's semantics (sage-data-client 0.9.1).

    import hivebus.data
    df = hivebus.data.query(start="-1h", filter={"name": "env.temperature", "vsn": "W0.*"})
    df.groupby(["meta.vsn"]).value.agg(["size", "min", "max", "mean"])

* ``start`` (required) and ``end``: every form sage-data-client accepts (``"-3min"``,
  ``"-1h30m"``, ``timedelta(hours=-1)``, ``pd.Timestamp``, ``datetime``, ISO 8601 text, a date
  alone); no zone means UTC. The window is ``start <= timestamp < end``; ``end`` defaults to
  now, so a reading stamped in the future is not returned until its time comes (``times``).
* ``filter``: Beehive's. A value containing ``*`` or ``|`` is a regular expression matched
  against the whole value (``{"vsn": "W0.*|W1.*"}``, ``{"name": "env\\.temp.*"}``); any other
  value is matched exactly. ``vsn="W0*"`` is a regex too ("W" then zeros), as on Sage. Keys
  are ``name`` or a meta key without ``meta.`` (``filters``).
* One point per series and timestamp (the later write wins); a series is the name plus the
  whole meta set. ``head``/``tail`` keep the earliest/latest N points of each series (never
  both: ``ValueError``). Rows are grouped by series, time-ordered within it (``sql``).
* ``experimental_func`` (``mean``, ``min``, ``max``, ``sum``, ``count``) with
  ``experimental_window`` (``"1m"``, ``"10s"``) aggregates each series (``aggregate``).
* Columns ``timestamp`` (UTC, nanoseconds), ``name``, ``value``, ``meta.<key>``, built as
  sage-data-client builds them; ``value`` is int64 / float64 / object as it is (``frame``).
* ``load(path)`` reads a saved response or a pywaggle run log (``data.ndjson``), as
  ``sage_data_client.load``.

Where the data comes from: the hub's query service by default (``hub=`` or
``HIVEBUS_NATS_URL``), or a DuckDB file (``db="views.duckdb"``) for offline analysis of a copy
or an as-of snapshot. ``records_for(bus, body)`` answers a Sage ``POST /api/v1/query`` body with
records (``wire_record`` renders one as the API writes it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import warnings
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hivebus.data.aggregate import aggregate
from hivebus.data.filters import check_filter
from hivebus.data.frame import Record, load, records_of, to_frame, wire_record
from hivebus.data.request import FUNCTIONS, DataQuery, HeadAndTailError
from hivebus.data.sql import build_sql
from hivebus.data.times import resolve_time
from hivebus.errors import QueryError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from hivebus.bus.client import Bus

__all__ = [
    "FUNCTIONS", "MAX_ROWS", "DataQuery", "HeadAndTailError", "Record", "answer", "aquery", "build_sql",
    "check_filter", "load", "query", "records_for", "records_of", "resolve_time", "to_frame",
    "wire_record",
]

T = TypeVar("T")

MAX_ROWS = 1_000_000
DEFAULT_TIMEOUT = 120.0


def query(
    start: Any,
    end: Any = None,
    head: int | None = None,
    tail: int | None = None,
    filter: Mapping[str, str] | None = None,
    *,
    experimental_func: str | None = None,
    experimental_window: str | None = None,
    hub: str | None = None,
    db: str | Path | None = None,
    limit: int = MAX_ROWS,
    timeout: float = DEFAULT_TIMEOUT,
) -> pd.DataFrame:
    """Readings between ``start`` and ``end`` matching ``filter`` (see the module doc)."""
    data_query = DataQuery.build(start, end, head, tail, filter, experimental_func, experimental_window)
    sql, params = build_sql(data_query)
    if db is not None:
        table, truncated = _from_file(Path(db), sql, params, limit, timeout)
    else:
        table, truncated = _run(_from_hub(hub, sql, params, limit, timeout))
    if truncated:
        warnings.warn(f"the result was cut at {limit} rows: narrow the time range or the filter", stacklevel=2)
    return to_frame(_finish(table, data_query))


async def aquery(bus: Bus, start: Any, end: Any = None, head: int | None = None, tail: int | None = None,
                 filter: Mapping[str, str] | None = None, *, experimental_func: str | None = None,
                 experimental_window: str | None = None, limit: int = MAX_ROWS,
                 timeout: float = DEFAULT_TIMEOUT) -> pd.DataFrame:
    """``query`` for async code that already has a ``Bus``."""
    data_query = DataQuery.build(start, end, head, tail, filter, experimental_func, experimental_window)
    return to_frame(await _records(bus, data_query, limit, timeout))


async def records_for(bus: Bus, body: Mapping[str, Any], *, limit: int = MAX_ROWS,
                      timeout: float = DEFAULT_TIMEOUT, now: Any = None) -> list[Record]:
    """The records answering a Sage data API body (``{"start": "-1h", "filter": {...}, ...}``).

    QueryError (with what to write) for a bad body; ``to_frame`` makes sage-data-client's
    frame of them, ``wire_record`` the API's ndjson line.
    """
    return await _records(bus, DataQuery.from_body(body, now=now), limit, timeout)


def answer(body: Mapping[str, Any], *, hub: str | None = None, db: str | Path | None = None,
           limit: int = MAX_ROWS, timeout: float = DEFAULT_TIMEOUT, now: Any = None) -> list[Record]:
    """``records_for`` without an event loop, from the hub or a DuckDB file."""
    data_query = DataQuery.from_body(body, now=now)
    sql, params = build_sql(data_query)
    if db is not None:
        table, _ = _from_file(Path(db), sql, params, limit, timeout)
    else:
        table, _ = _run(_from_hub(hub, sql, params, limit, timeout))
    return _finish(table, data_query)


async def _records(bus: Bus, data_query: DataQuery, limit: int, timeout: float) -> list[Record]:
    from hivebus.projections.client import query as sql_query

    sql, params = build_sql(data_query)
    result = await sql_query(bus, sql, params, limit=limit, timeout=timeout, format="arrow")
    return _finish(result.to_arrow(), data_query)


def _finish(table: pa.Table, data_query: DataQuery) -> list[Record]:
    records = records_of(table)
    return aggregate(records, data_query) if data_query.func is not None else records


# --- running the SQL ------------------------------------------------------------------------


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
