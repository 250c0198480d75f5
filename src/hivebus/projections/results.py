"""Query results on the wire: JSON rows (the contract) or Arrow IPC, split to fit NATS messages.

JSON: ``{"columns", "types", "rows", "positions", "truncated"}``; times are ISO 8601 UTC
strings with their full precision (nanoseconds for ``readings.timestamp``), BLOBs base64,
MAPs and STRUCTs objects, NaN and infinities null, DECIMALs numbers. Arrow: an IPC stream
whose schema metadata carries ``positions`` and ``truncated``.

A reply larger than the server's ``max_payload`` is split into chunks (each a complete JSON
object or Arrow stream) for clients that ask for chunks; for the others the rows are cut to
fit and ``truncated`` is set.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

ISO = "%Y-%m-%dT%H:%M:%SZ"
ENVELOPE_BYTES = 4096  # room for the JSON envelope and headers around the rows


def json_rows(table: pa.Table) -> tuple[list[str], list[str], list[list[Any]]]:
    """(column names, Arrow type names, rows of JSON-ready values)."""
    columns = [_jsonable_column(table.column(i)) for i in range(table.num_columns)]
    rows = [list(values) for values in zip(*columns, strict=True)] if columns else []
    return table.column_names, [str(f.type) for f in table.schema], rows


def _jsonable_column(column: pa.ChunkedArray) -> list[Any]:
    kind = column.type
    if pa.types.is_timestamp(kind):
        return pc.strftime(column, format=ISO).to_pylist()
    if pa.types.is_floating(kind):
        return [v if v is None or math.isfinite(v) else None for v in column.to_pylist()]
    if pa.types.is_map(kind):
        return [None if v is None else {str(k): _plain(x) for k, x in v} for v in column.to_pylist()]
    if pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_boolean(kind):
        return column.to_pylist()
    return [_plain(v) for v in column.to_pylist()]


def _plain(value: Any) -> Any:
    """A Python value from Arrow as something ``json.dumps`` writes faithfully."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat() + "Z"
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if value and all(isinstance(p, tuple) and len(p) == 2 for p in value):
            return {str(k): _plain(v) for k, v in value}  # a nested MAP
        return [_plain(v) for v in value]
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)  # intervals and anything else: their text


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def json_replies(
    table: pa.Table, *, positions: dict[str, int], truncated: bool, max_bytes: int, chunked: bool
) -> list[bytes]:
    """The JSON reply bodies for ``table``: one when it fits, else chunks or a cut."""
    columns, types, rows = json_rows(table)
    head = {"columns": columns, "types": types, "positions": positions}
    whole = dumps({**head, "rows": rows, "truncated": truncated})
    if len(whole) <= max_bytes:
        return [whole]
    if not chunked:
        kept = _rows_that_fit(head, rows, max_bytes)
        return [dumps({**head, "rows": rows[:kept], "truncated": True,
                       "note": f"cut to {kept} of {len(rows)} rows to fit one NATS message; "
                               "use the hivebus client (chunked) or a smaller limit"})]
    bodies = []
    for start, end in _row_chunks(head, rows, max_bytes):
        bodies.append(dumps({**head, "rows": rows[start:end], "truncated": truncated}))
    return bodies


def _rows_that_fit(head: dict[str, Any], rows: list[list[Any]], max_bytes: int) -> int:
    lo, hi = 0, len(rows)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(dumps({**head, "rows": rows[:mid], "truncated": True, "note": "x" * 200})) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _row_chunks(head: dict[str, Any], rows: list[list[Any]], max_bytes: int) -> Iterator[tuple[int, int]]:
    budget = max_bytes - len(dumps({**head, "rows": [], "truncated": False})) - 64
    start, size = 0, 0
    for i, row in enumerate(rows):
        row_bytes = len(dumps(row)) + 1
        if row_bytes > budget:
            raise ValueError(f"row {i} alone is {row_bytes} bytes, more than a NATS message holds")
        if size + row_bytes > budget and i > start:
            yield start, i
            start, size = i, 0
        size += row_bytes
    yield start, len(rows)


def arrow_replies(table: pa.Table, *, positions: dict[str, int], truncated: bool, max_bytes: int) -> list[bytes]:
    """Arrow IPC streams of ``table``, each at most ``max_bytes`` (at least one, for the schema)."""
    meta = {b"hivebus.positions": dumps(positions), b"hivebus.truncated": b"true" if truncated else b"false"}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    if table.num_rows == 0:
        return [_ipc(table)]
    per_row = max(1, table.nbytes // max(table.num_rows, 1))
    step = max(1, (max_bytes - ENVELOPE_BYTES) // (per_row * 2))
    out = []
    start = 0
    while start < table.num_rows:
        n = min(step, table.num_rows - start)
        body = _ipc(table.slice(start, n))
        while len(body) > max_bytes and n > 1:
            n //= 2
            body = _ipc(table.slice(start, n))
        if len(body) > max_bytes:
            raise ValueError(f"row {start} alone is more than a NATS message holds ({len(body)} bytes)")
        out.append(body)
        start += n
    return out


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def read_ipc(body: bytes) -> pa.Table:
    with pa.ipc.open_stream(pa.py_buffer(body)) as reader:
        return reader.read_all()
