"""DuckDB at the adapter boundary: opening a views file safely, and Arrow out of relations.

``connect`` opens a file with external access disabled (no file reads, ``ATTACH``, ``COPY``,
extension loads: whatever SQL later runs on any cursor of it), times in UTC and the
configuration locked so no statement can undo that. DuckDB's lock errors become
``StoreBusy`` (one writer process per file; in one process a file is opened once).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from hivebus.errors import ProjectionError, StoreBusy


def connect(path: Path | str, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A connection to ``path`` that can read no file but its own, with UTC times."""
    try:
        con = duckdb.connect(str(path), read_only=read_only, config={"enable_external_access": False})
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise StoreBusy(
                f"{path} is in use by another process (a running projector?)",
                hint="query it through the hub (`hivebus query`), or stop the projector first",
            ) from None
        raise ProjectionError(f"cannot open {path}: {exc}") from None
    except duckdb.Error as exc:
        if "different configuration" in str(exc):
            raise _busy_here(path) from None
        raise ProjectionError(f"cannot open {path}: {exc}") from None
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET lock_configuration = true")
    except duckdb.InvalidInputException as exc:  # the file is already open in this process
        con.close()
        if "locked" in str(exc):
            raise _busy_here(path) from None
        raise
    return con


def _busy_here(path: Path | str) -> StoreBusy:
    return StoreBusy(f"{path} is in use by a projector in this process",
                     hint="query it through the projector, or stop it first")


def to_arrow_table(relation: duckdb.DuckDBPyRelation) -> pa.Table:
    """A relation's rows as Arrow (``to_arrow_table`` in DuckDB 2, ``arrow`` before)."""
    method: Any = getattr(relation, "to_arrow_table", None) or getattr(relation, "arrow")  # noqa: B009
    return method()


def to_arrow_reader(relation: duckdb.DuckDBPyRelation, batch_size: int) -> pa.RecordBatchReader:
    """A relation's rows as a stream of Arrow batches."""
    method: Any = getattr(relation, "to_arrow_reader", None) or getattr(relation, "record_batch")  # noqa: B009
    return method(batch_size)
