"""Rows of ``readings`` as the Sage data API's records, and records as sage-data-client's frame.

A record is ``{"timestamp": <int ns>, "name", "value", "meta": {...}}``, the value as the
plugin published it: a str stays a str, an int keeps every digit (``value_text``), a bool or a
non-finite float that the SDK carried encoded (``meta["enc"]`` ``bool``/``float``) is decoded and
its marker dropped. The frame is built the way sage-data-client 0.9.1 builds it from the API's
records (``pd.DataFrame`` of one dict per record: ``timestamp``, ``name``, ``value``, then
``meta.<key>`` in the record's key order), so dtypes follow: ``value`` int64 when every value is
an int, float64 when all are numbers, object otherwise; an empty result is its empty frame.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hivebus.plugin.checks import BOOL_ENCODING, FLOAT_ENCODING, decode_value

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

Record = dict[str, Any]


def records_of(table: pa.Table) -> list[Record]:
    """Records from rows of ``timestamp, name, value, value_text, node, meta``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    timestamps = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
    values = table.column("value").to_pylist()
    texts = table.column("value_text").to_pylist()
    out: list[Record] = []
    for ts, name, value, text, node, meta_items in zip(
        timestamps, table.column("name").to_pylist(), values, texts,
        table.column("node").to_pylist(), table.column("meta").to_pylist(), strict=True,
    ):
        meta = dict(meta_items or ())
        if text is not None:
            value = text if value is None else int(text)
        if meta.get("enc") in (BOOL_ENCODING, FLOAT_ENCODING):
            value, decoded = decode_value(value, meta)
            if decoded:
                del meta["enc"]
        if "node" not in meta and node is not None:
            meta["node"] = node
        out.append({"timestamp": ts, "name": name, "value": value, "meta": dict(sorted(meta.items()))})
    return out


def to_frame(records: Iterable[Record]) -> pd.DataFrame:
    """sage-data-client's DataFrame over ``records`` (timestamps as int nanoseconds)."""
    import pandas as pd

    stamps: list[int] = []

    def row(record: Record) -> dict[str, Any]:
        stamps.append(record["timestamp"])
        out = {"timestamp": None, "name": record["name"], "value": record["value"]}
        for key, value in record["meta"].items():
            out[f"meta.{key}"] = value
        return out

    frame = pd.DataFrame(map(row, records))
    if len(frame) == 0:
        return pd.DataFrame({"timestamp": pd.to_datetime([], utc=True), "name": pd.Series([], dtype=str),
                             "value": []})
    frame["timestamp"] = pd.to_datetime(pd.Series(stamps, dtype="int64"), unit="ns", utc=True)
    return frame


def wire_record(record: Record) -> Record:
    """A record as the data API writes it in its ndjson response (RFC 3339 time, nanoseconds)."""
    import pandas as pd

    stamp = pd.Timestamp(record["timestamp"], unit="ns", tz="UTC")
    text = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.value % 10**9:09d}Z"
    return {"timestamp": text, "name": record["name"], "value": record["value"], "meta": record["meta"]}


def load(path_or_buf: str | os.PathLike[str] | IO[Any]) -> pd.DataFrame:
    """sage-data-client's ``load``: a saved query response or a pywaggle run log (ndjson, .gz too)."""
    if isinstance(path_or_buf, str | os.PathLike):
        path = Path(path_or_buf)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            return _frame_of_lines(f)
    return _frame_of_lines(path_or_buf)


def _frame_of_lines(lines: Iterable[Any]) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for line in lines:
        data = json.loads(line)
        row = {"timestamp": pd.to_datetime(data["timestamp"], unit="ns", utc=True), "name": data["name"],
               "value": data["value"]}
        for key, value in data["meta"].items():
            row[f"meta.{key}"] = value
        rows.append(row)
    if not rows:
        return to_frame([])
    return pd.DataFrame(rows)


def iter_wire(records: Iterable[Record]) -> Iterator[Record]:
    return (wire_record(r) for r in records)
