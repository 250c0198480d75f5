"""Running users' SQL on the views: checked, read-only, with a row limit and a time limit.

``QueryEngine.run`` checks the statement (``guard``), then runs the one parsed statement
(``guard.statement_to_run``) on a fresh cursor in a worker thread, inside a ``READ ONLY``
transaction, fetching at most ``limit + 1`` rows (one more tells that the result was cut).
What the database itself refuses (a file, a write, a locked setting: the guard's last line)
is answered as ``QueryRefused`` with DuckDB's words for it. A query past its timeout is interrupted
(``cursor.interrupt()``), its thread freed, and ``QueryTimeout`` raised; the engine goes on
serving. The positions reported with a result are read inside the query's own transaction,
so they are exactly the checkpoints of the snapshot the rows come from.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import duckdb
import pyarrow as pa

from hivebus.errors import QueryError, QueryRefused, QueryTimeout
from hivebus.projections.duck import to_arrow_table
from hivebus.projections.guard import check_sql, statement_to_run
from hivebus.projections.views.base import STREAMS

DEFAULT_LIMIT = 10_000
MAX_LIMIT = 1_000_000
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 600.0

Format = Literal["json", "arrow"]
_HAS_CHECKPOINTS = (
    "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'projector' AND table_name = 'checkpoints'"
)


@dataclass(frozen=True)
class QueryRequest:
    """A request to ``hivebus.query`` (see the briefing's contract), validated."""

    sql: str
    params: list[Any] | dict[str, Any] | None = None
    min_seq: dict[str, int] | None = None
    limit: int = DEFAULT_LIMIT
    timeout: float = DEFAULT_TIMEOUT
    format: Format = "json"
    chunked: bool = False

    @classmethod
    def from_dict(cls, body: Any) -> QueryRequest:
        if not isinstance(body, dict):
            raise QueryError("the request must be a JSON object with at least \"sql\"")
        sql = body.get("sql")
        if not isinstance(sql, str):
            raise QueryError("\"sql\" must be a string")
        params = body.get("params")
        if params is not None and not isinstance(params, list | dict):
            raise QueryError("\"params\" must be a list (for ?) or an object (for $name), or null")
        fmt = body.get("format") or "json"
        if fmt not in ("json", "arrow"):
            raise QueryError(f"\"format\" must be \"json\" or \"arrow\", not {fmt!r}")
        return cls(
            sql=sql,
            params=params,
            min_seq=parse_min_seq(body.get("min_seq")),
            limit=_limit(body.get("limit")),
            timeout=_timeout(body.get("timeout")),
            format="arrow" if fmt == "arrow" else "json",
            chunked=bool(body.get("chunked", False)),
        )


def parse_min_seq(value: Any) -> dict[str, int] | None:
    """``min_seq`` as ``{stream: seq}``; a bare int means EVENTS."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return {"EVENTS": value}
    if isinstance(value, dict):
        out = {}
        for stream, seq in value.items():
            if stream not in STREAMS:
                raise QueryError(f"min_seq: unknown stream {stream!r} (streams: {', '.join(STREAMS)})")
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
                raise QueryError(f"min_seq[{stream}] must be a sequence number >= 0")
            out[stream] = seq
        return out
    raise QueryError("min_seq must be an int (EVENTS) or an object {stream: seq}")


def _limit(value: Any) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise QueryError("\"limit\" must be a row count >= 0")
    return min(value, MAX_LIMIT)


def _timeout(value: Any) -> float:
    if value is None:
        return DEFAULT_TIMEOUT
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise QueryError("\"timeout\" must be a number of seconds > 0")
    return min(float(value), MAX_TIMEOUT)


@dataclass(frozen=True)
class Result:
    table: pa.Table
    truncated: bool
    positions: dict[str, int]


class _Running:
    """One query's cursor, so another thread can interrupt it (and learn it was asked to)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cursor: duckdb.DuckDBPyConnection | None = None
        self.cancelled = False

    def attach(self, cursor: duckdb.DuckDBPyConnection) -> None:
        with self.lock:
            self.cursor = cursor
            if self.cancelled:
                raise QueryTimeout("the query was cancelled before it started")

    def interrupt(self) -> None:
        with self.lock:
            self.cancelled = True
            if self.cursor is not None:
                with contextlib.suppress(duckdb.Error):
                    self.cursor.interrupt()


class QueryEngine:
    """Checked SQL on cursors from ``cursors()``, in up to ``workers`` threads at once."""

    def __init__(self, cursors: Callable[[], duckdb.DuckDBPyConnection], *, workers: int = 4) -> None:
        self._cursors = cursors
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hivebus-query")
        self._running: set[_Running] = set()

    async def run(
        self,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        limit: int = DEFAULT_LIMIT,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Result:
        checked = check_sql(sql)
        statement = statement_to_run(checked)
        running = _Running()
        self._running.add(running)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, self._execute, running, statement, checked.kind, params, limit)
        future.add_done_callback(lambda _: self._running.discard(running))
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            while not future.done():  # interrupt until the thread lets go (an interrupt can land early)
                running.interrupt()
                await asyncio.wait([future], timeout=0.1)
            with contextlib.suppress(Exception):
                future.result()
            raise QueryTimeout(f"the query ran past its {timeout:.3g}s time limit and was stopped",
                               hint="narrow it (WHERE on time, LIMIT) or raise \"timeout\"") from None

    def run_sync(self, sql: str, params: Any = None, *, limit: int = DEFAULT_LIMIT,
                 timeout: float = DEFAULT_TIMEOUT) -> Result:
        """``run`` for callers without an event loop (the CLI on a file, ``hivebus.data``)."""
        return asyncio.run(self.run(sql, params, limit=limit, timeout=timeout))

    def _execute(self, running: _Running, statement: Any, kind: str, params: Any, limit: int) -> Result:
        cursor = self._cursors()
        try:
            running.attach(cursor)
            cursor.execute("BEGIN TRANSACTION READ ONLY")
            try:
                positions = dict.fromkeys(STREAMS, 0)
                if cursor.execute(_HAS_CHECKPOINTS).fetchall() != [(0,)]:  # not in a plain copy of a table
                    positions.update(cursor.execute("SELECT stream, seq FROM projector.checkpoints").fetchall())
                relation = cursor.sql(statement, params=params) if params else cursor.sql(statement)
                if relation is None:
                    raise QueryError("the statement returned no result")
                if kind == "select":
                    relation = relation.limit(limit + 1)
                table = to_arrow_table(relation)
            finally:
                with contextlib.suppress(duckdb.Error):
                    cursor.execute("ROLLBACK")
        except duckdb.InterruptException:
            raise QueryTimeout("the query was interrupted") from None
        except duckdb.Error as exc:
            if _refused_by_database(exc):
                raise QueryRefused(f"refused by the database: {_message(exc)}") from None
            raise QueryError(_message(exc)) from None
        finally:
            with contextlib.suppress(duckdb.Error):
                cursor.close()
        truncated = table.num_rows > limit
        if truncated:
            table = table.slice(0, limit)
        return Result(table, truncated, positions)

    def close(self) -> None:
        """Stop: queued queries are dropped, running ones interrupted and waited for (briefly),
        so the database can be closed under no query."""
        for running in list(self._running):
            running.interrupt()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _refused_by_database(exc: duckdb.Error) -> bool:
    """The database's own refusals: a file (external access is off), a write (the transaction
    is read-only), a setting (the configuration is locked)."""
    text = str(exc)
    return isinstance(exc, duckdb.PermissionException) or "read-only mode" in text or "configuration has been locked" in text


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return " ".join(lines[:1] + [line.strip() for line in lines[1:3] if line.strip().startswith("LINE")]) or type(exc).__name__
