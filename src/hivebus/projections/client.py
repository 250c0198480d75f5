"""Query the views from any process: ``await query(bus, "SELECT ...")`` -> ``QueryResult``.

It speaks the ``hivebus.query`` protocol (see ``service``) with chunked replies, so results
larger than one NATS message arrive whole; ``format="arrow"`` fetches Arrow record batches
instead of JSON rows (what ``hivebus.data`` uses for large pulls). Errors come back as
``QueryRefused`` (not a read-only statement), ``QueryTimeout`` or ``QueryError``; no projector
answering is a ``RequestTimeout``.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from hivebus.bus.client import Bus
from hivebus.errors import QueryError, QueryRefused, QueryTimeout, RequestTimeout
from hivebus.projections.query import DEFAULT_TIMEOUT
from hivebus.projections.results import read_ipc
from hivebus.projections.service import ARROW_TYPE, CHUNK, CHUNKS, CONTENT_TYPE, QUERY_SUBJECT

if TYPE_CHECKING:
    import pandas as pd

_ERRORS: dict[str, type[QueryError]] = {
    "QueryRefused": QueryRefused,
    "QueryTimeout": QueryTimeout,
    "QueryError": QueryError,
}


@dataclass
class QueryResult:
    """Rows of one query, with the view positions they reflect."""

    columns: list[str]
    rows: list[list[Any]]
    positions: dict[str, int] = field(default_factory=dict)
    truncated: bool = False
    types: list[str] = field(default_factory=list)
    arrow: pa.Table | None = None

    def records(self) -> list[dict[str, Any]]:
        """Each row as a dict ``{column: value}``."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def to_arrow(self) -> pa.Table:
        if self.arrow is not None:
            return self.arrow
        return pa.Table.from_pylist(self.records()) if self.rows else pa.table({c: [] for c in self.columns})

    def to_pandas(self) -> pd.DataFrame:
        """A DataFrame; timestamp columns are UTC datetimes."""
        import pandas as pd

        if self.arrow is not None:
            return self.arrow.to_pandas()
        frame = pd.DataFrame(self.rows, columns=self.columns)
        for name, kind in zip(self.columns, self.types or [""] * len(self.columns), strict=True):
            if kind.startswith("timestamp"):
                frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601")
        return frame

    def __len__(self) -> int:
        return self.arrow.num_rows if self.arrow is not None else len(self.rows)


async def query(
    bus: Bus,
    sql: str,
    params: list[Any] | dict[str, Any] | None = None,
    min_seq: dict[str, int] | int | None = None,
    limit: int | None = None,
    *,
    timeout: float | None = None,
    format: Literal["json", "arrow"] = "json",
    subject: str = QUERY_SUBJECT,
) -> QueryResult:
    """Run ``sql`` on the projector's views (read-only; see the module doc)."""
    wait = timeout if timeout is not None else DEFAULT_TIMEOUT
    request = {"sql": sql, "params": params, "min_seq": min_seq, "limit": limit, "timeout": timeout,
               "format": format, "chunked": True}
    nc = bus.nc
    inbox = f"{nc.new_inbox()}.{uuid.uuid4().hex}"
    sub = await nc.subscribe(inbox, pending_msgs_limit=1_000_000, pending_bytes_limit=2**31)
    try:
        await nc.publish(subject, json.dumps(request).encode(), reply=inbox)
        parts: dict[int, Any] = {}
        total: int | None = None
        deadline = time.monotonic() + wait + 10.0
        while total is None or len(parts) < total:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestTimeout(f"no complete reply on {subject!r} within {wait + 10:g}s")
            try:
                msg = await sub.next_msg(timeout=remaining)
            except TimeoutError:
                continue
            except Exception as exc:  # nats TimeoutError is not the builtin on every version
                if "Timeout" in type(exc).__name__:
                    continue
                raise
            headers = msg.headers or {}
            if headers.get("Status") == "503":
                raise RequestTimeout(f"nothing serves {subject!r}", hint="is the projector running? (`hivebus projector`)")
            total = int(headers.get(CHUNKS, "1"))
            parts[int(headers.get(CHUNK, "0"))] = msg
    finally:
        with contextlib.suppress(Exception):  # the connection may be closing
            await sub.unsubscribe()
    return _assemble([parts[i] for i in range(len(parts))])


def _assemble(messages: list[Any]) -> QueryResult:
    first = messages[0]
    if (first.headers or {}).get(CONTENT_TYPE) == ARROW_TYPE:
        tables = [read_ipc(m.data) for m in messages]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        meta = table.schema.metadata or {}
        positions = json.loads(meta.get(b"hivebus.positions", b"{}"))
        truncated = meta.get(b"hivebus.truncated") == b"true"
        return QueryResult(table.column_names, [], positions, truncated, [str(f.type) for f in table.schema], table)
    bodies = [json.loads(m.data) for m in messages]
    if "error" in bodies[0]:
        cls = _ERRORS.get(bodies[0].get("kind", ""), QueryError)
        raise cls(bodies[0]["error"])
    rows = [row for body in bodies for row in body["rows"]]
    head = bodies[0]
    return QueryResult(head["columns"], rows, head.get("positions", {}), head.get("truncated", False),
                       head.get("types", []))
