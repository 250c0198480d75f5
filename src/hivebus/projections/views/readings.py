"""``readings``: every measurement of the DATA stream, one row each (the hot path).

``timestamp`` is the reading's own time (nanoseconds, UTC), ``value`` the number as a DOUBLE
(NULL for strings, which go to ``value_text``; an int keeps its digits in ``value_text`` too,
so a query gives back an int, every digit of it), ``meta`` every meta key (keys sorted, so equal metadata is an
equal MAP and one series), ``node`` the node that sent it, ``seq`` its DATA sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from hivebus.projections.bulk import READING_FIELDS, ReadingRows
from hivebus.projections.views.base import (
    DATA,
    Append,
    Applied,
    Change,
    FailureKey,
    Item,
    Row,
    Scope,
    Table,
    View,
    failure,
    number_and_text,
)

SCHEMA = pa.schema([*READING_FIELDS, pa.field("seq", pa.int64())])
"""The table's columns as Arrow (a batch's readings, decoded in bulk or one by one, are one table)."""


class ReadingsView(View):
    name = "readings"
    version = 2  # 2: every int keeps its digits in value_text
    stream = DATA
    public = ("readings",)
    table: ClassVar[Table] = Table(
        "readings",
        """CREATE TABLE {name} (
            timestamp TIMESTAMP_NS NOT NULL,
            name VARCHAR NOT NULL,
            value DOUBLE,
            value_text VARCHAR,
            node VARCHAR,
            meta MAP(VARCHAR, VARCHAR),
            seq BIGINT NOT NULL
        )""",
    )
    tables = (table,)


    def apply(self, items: Sequence[Item], state: dict[str, dict[Scope, list[Row]]]) -> Applied:
        """Columns of the readings in order: those decoded in bulk (``ReadingRows``) as Arrow,
        the others built here, one by one (the reference the bulk path must equal)."""
        if not any(type(item.event) is ReadingRows for item in items):
            return self._apply_each(items)
        pieces: list[pa.Table] = []
        failures: dict[FailureKey, str] = {}
        run: list[Item] = []
        for item in items:
            if type(item.event) is not ReadingRows:
                run.append(item)
                continue
            if run:
                pieces.append(self._each_table(run, failures))
                run = []
            table = item.event.table
            pieces.append(table.drop_columns(["nodeseq"]).append_column(
                "seq", pa.array(np.full(table.num_rows, item.seq, dtype=np.int64))))
        if run:
            pieces.append(self._each_table(run, failures))
        frame = pa.concat_tables([p for p in pieces if p.num_rows]) if pieces else None
        changes: list[Change] = [Append(self.table.name, {}, frame)] if frame is not None and frame.num_rows else []
        return Applied(changes, failures)

    def _each_table(self, items: Sequence[Item], failures: dict[FailureKey, str]) -> pa.Table:
        applied = self._apply_each(items)
        failures.update(applied.failures)
        if not applied.changes:
            return SCHEMA.empty_table()
        change = applied.changes[0]
        assert isinstance(change, Append)
        return pa.table({f.name: pa.array(change.columns[f.name], type=f.type) for f in SCHEMA}, schema=SCHEMA)

    def _apply_each(self, items: Sequence[Item]) -> Applied:
        timestamps: list[int] = []
        names: list[str] = []
        values: list[float | None] = []
        texts: list[str | None] = []
        nodes: list[str | None] = []
        metas: list[list[tuple[str, str]]] = []
        seqs: list[int] = []
        failures: dict[FailureKey, str] = {}
        for item in items:
            event = item.event
            reading = event.data
            raw = reading.value
            value: float | None
            text: str | None
            if type(raw) is float:  # the common case, without a call
                value, text = raw, None
            else:
                try:
                    value, text = number_and_text(raw)
                except Exception as exc:
                    failures[item.key] = failure(self.name, exc)
                    continue
                if type(raw) is int:  # the data query gives back an int, not a float (int64 frames)
                    text = str(raw)
            timestamps.append(reading.timestamp)
            names.append(reading.name)
            values.append(value)
            texts.append(text)
            nodes.append(event.node)
            meta = reading.meta
            metas.append(sorted(meta.items()) if len(meta) > 1 else list(meta.items()))
            seqs.append(item.seq)
        if not seqs:
            return Applied([], failures)
        columns: dict[str, list[Any]] = {
            "timestamp": timestamps,
            "name": names,
            "value": values,
            "value_text": texts,
            "node": nodes,
            "meta": metas,
            "seq": seqs,
        }
        return Applied([Append(self.table.name, columns)], failures)
