"""The DuckDB file the views live in: one writer, checkpoints, and atomic batches.

A batch goes through two steps, both on the writer's thread:

``prepare``
    decode the messages, drop per-node duplicates, load the rows the stateful views need and
    ask every view for its row changes (pure). Nothing is written yet; what could not be
    decoded or applied is returned for dead-lettering.
``commit``
    in **one** transaction: every view's rows, the new checkpoint of each stream and the
    per-node sequence sets (guarantee 2). A crash before the commit leaves the previous
    checkpoint, so the batch is read and applied again, once.

Rows go in as Arrow tables (one insert per table per batch), never row by row. The stateful
views' current rows come from a write-through cache (``cache``), so a batch costs a handful
of statements whatever its size. The file is opened with external access disabled and the
configuration locked (``duck.connect``), so SQL run on it (the query service's) can read no
file, attach no database and load no extension.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import structlog

from hivebus.errors import ProjectionError
from hivebus.projections.bulk import ReadingRows
from hivebus.projections.cache import StateCache
from hivebus.projections.decode import Decoded, Message, Rejected, decode_slice, deduplicate
from hivebus.projections.dedup import NodeSeqs, SeenSeqs
from hivebus.projections.duck import connect, to_arrow_reader, to_arrow_table
from hivebus.projections.views.base import (
    STREAMS,
    Append,
    Change,
    FailureKey,
    FoldView,
    Replace,
    Row,
    Scope,
    View,
)

log = structlog.get_logger()


META_DDL = (
    "CREATE SCHEMA IF NOT EXISTS projector",
    """CREATE TABLE IF NOT EXISTS projector.checkpoints (
        stream VARCHAR NOT NULL, seq BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS projector.views (
        name VARCHAR NOT NULL, version INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS projector.node_seqs (
        node VARCHAR NOT NULL, watermark BIGINT NOT NULL, los BIGINT[] NOT NULL,
        his BIGINT[] NOT NULL, highs MAP(VARCHAR, BIGINT) NOT NULL, duplicates BIGINT NOT NULL,
        compacted BIGINT NOT NULL)""",
)


@dataclass(frozen=True, slots=True)
class Slice:
    """Messages of one stream, in stream order."""

    stream: str
    messages: Sequence[Message]


@dataclass(frozen=True, slots=True)
class Decoding:
    """A batch's slices decoded ahead of ``prepare`` (``Store.decode``), and the checkpoints
    they were decoded after: ``prepare`` uses a slice's part only for that very slice and only
    if its stream still stands there (else it decodes that slice again)."""

    slices: list[Slice]
    after: dict[str, int]
    parts: list[Decoded]


@dataclass(slots=True)
class Prepared:
    """A batch ready to commit: its row changes, new positions and what to dead-letter."""

    positions: dict[str, int]
    changes: list[Change] = field(default_factory=list)
    deletes: dict[int, list[Scope]] = field(default_factory=dict)
    """For each Replace (by index in ``changes``): the scopes that have rows to delete."""
    rejected: list[Rejected] = field(default_factory=list)
    messages: int = 0
    applied: int = 0
    duplicates: int = 0
    nodes: dict[str, SeenSeqs] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(len(c) if isinstance(c, Append) else len(c.rows) for c in self.changes)


class Store:
    """One DuckDB file of views, written by one thread (the writer) and read by many cursors."""

    def __init__(self, path: Path | str, views: Sequence[View], *, sql_views: bool = True, bulk: bool = True) -> None:
        self.path = Path(path)
        self.bulk = bulk
        """Decode packed readings in bulk (``projections.bulk``); False: one by one (the reference)."""
        self.views = list(views)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = connect(self.path)
        self._cursor_lock = threading.Lock()
        self._w = self._con.cursor()
        self._schemas: dict[str, pa.Schema] = {}
        self._names = itertools.count()
        self._caches: dict[str, StateCache] = defaultdict(StateCache)
        self._scope_columns = {v.table.name: v.scope_columns for v in self.views if isinstance(v, FoldView)}
        for ddl in META_DDL:
            self._w.execute(ddl)
        self.positions = self._load_positions()
        missing = [s for s in STREAMS if s not in self._stored_streams()]
        for stream in missing:
            self._w.execute("INSERT INTO projector.checkpoints VALUES (?, 0)", [stream])
        self.seen = NodeSeqs(self._load_node_seqs())
        self.stale = self._install_views()
        self.active = {v.name for v in self.views} - {v.name for v in self.stale}
        if sql_views:
            self.create_sql_views()

    # --- set-up -------------------------------------------------------------------------

    def _load_positions(self) -> dict[str, int]:
        positions = dict.fromkeys(STREAMS, 0)
        for stream, seq in self._w.execute("SELECT stream, seq FROM projector.checkpoints").fetchall():
            positions[stream] = seq
        return positions

    def _stored_streams(self) -> set[str]:
        return {row[0] for row in self._w.execute("SELECT stream FROM projector.checkpoints").fetchall()}

    def _load_node_seqs(self) -> dict[str, SeenSeqs]:
        rows = self._w.execute(
            "SELECT node, watermark, los, his, highs, duplicates, compacted FROM projector.node_seqs"
        ).fetchall()
        return {
            node: SeenSeqs(watermark, list(los), list(his), dict(highs), duplicates, compacted)
            for node, watermark, los, his, highs, duplicates, compacted in rows
        }

    def installed_versions(self) -> dict[str, int]:
        return dict(self._w.execute("SELECT name, version FROM projector.views").fetchall())

    def _install_views(self) -> list[View]:
        """Create the tables of views not installed yet; return the views that need a rebuild
        (a version changed, or a view added to a store that already holds events)."""
        installed = self.installed_versions()
        fresh = not any(self.positions.values())
        stale = []
        for view in self.views:
            have = installed.get(view.name)
            if have == view.version:
                continue
            if have is None:
                self._create_tables(view)
                if fresh:
                    self._set_version(view)
                    continue
            stale.append(view)
        return stale

    def _create_tables(self, view: View, *, replace: bool = False) -> None:
        for table in view.tables:
            if replace:
                self._w.execute(f"DROP TABLE IF EXISTS {table.name}")
            elif self._exists(table.name):
                continue
            self._w.execute(table.create_sql())
            self._schemas.pop(table.name, None)

    def _set_version(self, view: View) -> None:
        self._w.execute("DELETE FROM projector.views WHERE name = ?", [view.name])
        self._w.execute("INSERT INTO projector.views VALUES (?, ?)", [view.name, view.version])

    def _exists(self, name: str) -> bool:
        schema, _, table = name.rpartition(".")
        rows = self._w.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND schema_name = ?", [table, schema or "main"]
        ).fetchall()
        return bool(rows[0][0])

    def create_sql_views(self) -> None:
        """The SQL views over the tables (``bundles``, ``profiles``); one whose tables this store
        does not hold (a build of a few views) is left out."""
        for view in self.views:
            for statement in view.sql_views:
                try:
                    self._w.execute(statement)
                except duckdb.CatalogException as exc:
                    log.debug("store.sql_view_skipped", view=view.name, error=str(exc).splitlines()[0])

    def schema(self, table: str) -> pa.Schema:
        schema = self._schemas.get(table)
        if schema is None:
            schema = to_arrow_table(self._w.sql(f"SELECT * FROM {table} LIMIT 0")).schema
            self._schemas[table] = schema
        return schema

    # --- a batch --------------------------------------------------------------------------

    def decode(self, slices: Sequence[Slice], after: dict[str, int]) -> Decoding:
        """The decoding step of ``prepare`` alone, for the messages above ``after`` (each
        stream's checkpoint once the batches before this one are committed). It touches no
        state of the store, so it may run on another thread while the writer commits the
        previous batch (``Pump``: decoding overlaps the commit)."""
        after = {p.stream: after.get(p.stream, 0) for p in slices}
        parts = [decode_slice(p.stream, p.messages, after[p.stream], bulk=self.bulk) for p in slices]
        return Decoding(list(slices), after, parts)

    def prepare(self, slices: Iterable[Slice], decoded: Decoding | None = None) -> Prepared:
        """Decode, de-duplicate and apply ``slices`` without writing (see the module doc).
        ``decoded``: the slices already decoded (``decode``); a part decoded after another
        checkpoint than its stream's now is decoded again."""
        slices = list(slices)
        self.seen.begin()
        prepared = Prepared(positions=dict(self.positions))
        parts = [
            decoded.parts[i]
            if decoded is not None and i < len(decoded.slices) and decoded.slices[i] is p
            and decoded.after[p.stream] == prepared.positions[p.stream]
            else decode_slice(p.stream, p.messages, prepared.positions[p.stream], bulk=self.bulk)
            for i, p in enumerate(slices)
        ]
        for part in parts:
            prepared.positions[part.stream] = max(prepared.positions[part.stream], part.last_seq)
            prepared.messages += part.messages
            prepared.rejected.extend(part.rejected)
        unique = deduplicate(parts, self.seen)
        prepared.duplicates = unique.duplicates
        prepared.rejected.extend(unique.rejected)
        failures: dict[tuple[str, FailureKey], list[str]] = defaultdict(list)
        for view in self.views:
            items = unique.items.get(view.stream)
            if not items or view.name not in self.active:
                continue
            state = self._load_state(view.wanted(items))
            applied = view.apply(items, state)
            for change in applied.changes:
                if isinstance(change, Replace):
                    known = state.get(change.table, {})
                    prepared.deletes[len(prepared.changes)] = [s for s in change.scopes if known.get(s)]
                prepared.changes.append(change)
            for key, reason in applied.failures.items():
                failures[(view.stream, key)].append(reason)
        if failures:
            raw = {(p.stream, m.seq): m for p in slices for m in p.messages}
            packed = {(s, i.seq, i.batch_index): i for s, items in unique.items.items() for i in items if i.batch_index is not None}
            for (stream, key), reasons in sorted(failures.items(), key=lambda f: (f[0][0], _order(f[0][1]))):
                reason = "; ".join(reasons)
                if isinstance(key, tuple):  # one reading of a packed message: that reading alone
                    item = packed[(stream, *key)]
                    prepared.rejected.append(Rejected(stream, item.seq, item.subject, item.raw, reason, index=item.batch_index))
                else:
                    m = raw[(stream, key)]
                    prepared.rejected.append(Rejected(stream, key, m.subject, bytes(m.data), reason))
        prepared.applied = sum(len(i.event) if type(i.event) is ReadingRows else 1
                               for items in unique.items.values() for i in items) - len(failures)
        prepared.nodes = self.seen.touched()
        return prepared

    def _load_state(self, wanted: dict[str, set[Scope]]) -> dict[str, dict[Scope, list[Row]]]:
        """The committed rows of each wanted scope: from the cache, the rest in one query."""
        state: dict[str, dict[Scope, list[Row]]] = {}
        for table, scopes in wanted.items():
            cache = self._caches[table]
            found: dict[Scope, list[Row]] = {}
            missing = []
            for scope in scopes:
                rows = cache.get(scope)
                if rows is None:
                    missing.append(scope)
                else:
                    found[scope] = rows
            if missing:
                loaded = self._select_scopes(table, missing)
                for scope in missing:
                    rows = loaded.get(scope, [])
                    cache.put(scope, rows)
                    found[scope] = rows
            state[table] = found
        return state

    def _select_scopes(self, table: str, scopes: list[Scope]) -> dict[Scope, list[Row]]:
        columns = self._scope_columns[table]
        with self._registered(_scopes_table(columns, scopes)) as name:
            cur = self._w.execute(f"SELECT t.* FROM {table} t SEMI JOIN {name} USING ({', '.join(columns)})")
            names = [d[0] for d in cur.description]
            positions = [names.index(c) for c in columns]
            grouped: dict[Scope, list[Row]] = defaultdict(list)
            for values in cur.fetchall():
                grouped[tuple(values[i] for i in positions)].append(dict(zip(names, values, strict=True)))
        return grouped

    def commit(self, prepared: Prepared) -> None:
        """Write ``prepared`` and its checkpoints in one transaction."""
        w = self._w
        w.execute("BEGIN TRANSACTION")
        try:
            for i, change in enumerate(prepared.changes):
                self._write(change, prepared.deletes.get(i, []))
            self._write_positions(prepared.positions)
            self._write_node_seqs(prepared.nodes)
            w.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(duckdb.Error):
                w.execute("ROLLBACK")
            self.seen.rollback()
            if isinstance(exc, Exception):
                raise ProjectionError(f"cannot write the batch: {type(exc).__name__}: {exc}") from exc
            raise
        self.seen.commit()
        self.positions = dict(prepared.positions)
        for change in prepared.changes:
            if isinstance(change, Replace):
                self._remember(change)

    def _remember(self, change: Replace) -> None:
        """The committed rows of the replaced scopes go to the cache."""
        cache = self._caches[change.table]
        columns = change.scope_columns
        grouped: dict[Scope, list[Row]] = {scope: [] for scope in change.scopes}
        for row in change.rows:
            grouped.setdefault(tuple(row[c] for c in columns), []).append(row)
        for scope, rows in grouped.items():
            cache.put(scope, rows)

    def skip(self, stream: str, seq: int) -> None:
        """Move ``stream``'s checkpoint past ``seq`` without applying it (it was dead-lettered)."""
        self.seen.begin()
        self.commit(Prepared(positions={**self.positions, stream: max(self.positions[stream], seq)}))

    def _write(self, change: Change, deletes: list[Scope]) -> None:
        if isinstance(change, Append):
            if change.frame is not None:
                if len(change):
                    self._insert(change.table, self._frame_table(change.table, change.frame))
            elif len(change):
                self._insert(change.table, self._columns_table(change.table, change.columns))
            return
        if deletes:
            keys = _scopes_table(change.scope_columns, deletes)
            with self._registered(keys) as name:
                match = " AND ".join(f"t.{c} = k.{c}" for c in change.scope_columns)
                self._w.execute(f"DELETE FROM {change.table} t USING {name} k WHERE {match}")
        if change.rows:
            self._insert(change.table, pa.Table.from_pylist(change.rows, schema=self.schema(change.table)))

    def _frame_table(self, table: str, frame: pa.Table) -> pa.Table:
        """``frame`` with ``table``'s exact columns and types (missing ones null)."""
        schema = self.schema(table)
        n = frame.num_rows
        arrays = [frame.column(f.name).cast(f.type) if f.name in frame.column_names else pa.nulls(n, f.type)
                  for f in schema]
        return pa.Table.from_arrays(arrays, schema=schema)

    def _columns_table(self, table: str, columns: dict[str, list[Any]]) -> pa.Table:
        """An Arrow table with ``table``'s exact columns (missing ones null)."""
        schema = self.schema(table)
        n = len(next(iter(columns.values())))
        arrays = [pa.array(columns[f.name], type=f.type) if f.name in columns else pa.nulls(n, f.type)
                  for f in schema]
        return pa.Table.from_arrays(arrays, schema=schema)

    def _insert(self, table: str, rows: pa.Table) -> None:
        """Append ``rows`` (with ``table``'s columns, in order) to ``table``."""
        self._w.from_arrow(rows).insert_into(table)

    def _write_positions(self, positions: dict[str, int]) -> None:
        self._w.execute(
            "UPDATE projector.checkpoints SET seq = CASE stream "
            + " ".join("WHEN ? THEN ?::BIGINT" for _ in positions) + " ELSE seq END",
            [v for item in positions.items() for v in item],
        )

    def _write_node_seqs(self, nodes: dict[str, SeenSeqs]) -> None:
        if not nodes:
            return
        names = sorted(nodes)
        keys = pa.table({"node": names})
        with self._registered(keys) as name:
            self._w.execute(f"DELETE FROM projector.node_seqs WHERE node IN (SELECT node FROM {name})")
        seen = [nodes[n] for n in names]
        rows = pa.table(
            {
                "node": names,
                "watermark": pa.array([s.watermark for s in seen], type=pa.int64()),
                "los": pa.array([s.los for s in seen], type=pa.list_(pa.int64())),
                "his": pa.array([s.his for s in seen], type=pa.list_(pa.int64())),
                "highs": pa.array([sorted(s.highs.items()) for s in seen], type=pa.map_(pa.string(), pa.int64())),
                "duplicates": pa.array([s.duplicates for s in seen], type=pa.int64()),
                "compacted": pa.array([s.compacted for s in seen], type=pa.int64()),
            }
        )
        self._insert("projector.node_seqs", rows)

    @contextlib.contextmanager
    def _registered(self, table: pa.Table | pa.RecordBatchReader) -> Iterator[str]:
        name = f"__hivebus_arrow_{next(self._names)}"
        self._w.register(name, table)
        try:
            yield name
        finally:
            self._w.unregister(name)

    # --- rebuilds -------------------------------------------------------------------------

    def copy_views_from(self, source: Store, views: Sequence[View], *, batch_rows: int = 100_000) -> None:
        """Replace ``views``' tables with ``source``'s, in one transaction (blue/green for a
        few views: readers see the old tables until the commit, the new ones after it)."""
        w = self._w
        w.execute("BEGIN TRANSACTION")
        try:
            for view in views:
                self._create_tables(view, replace=True)
                for table in view.tables:
                    reader = to_arrow_reader(source.reader().sql(f"SELECT * FROM {table.name}"), batch_rows)
                    with self._registered(reader) as name:
                        w.execute(f"INSERT INTO {table.name} BY NAME SELECT * FROM {name}")
                self._set_version(view)
            self.create_sql_views()
            w.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                w.execute("ROLLBACK")
            raise
        self._schemas.clear()
        for view in views:
            for table in view.tables:
                self._caches.pop(table.name, None)
        names = {v.name for v in views}
        self.stale = [v for v in self.stale if v.name not in names]
        self.active |= names

    def mark_stale(self, views: Sequence[View]) -> None:
        """Stop applying ``views`` until a rebuild replaces them."""
        names = {v.name for v in views}
        self.active -= names
        self.stale = [v for v in self.views if v.name in names or v in self.stale]

    def set_versions(self) -> None:
        for view in self.views:
            self._set_version(view)

    # --- reading --------------------------------------------------------------------------

    def reader(self) -> duckdb.DuckDBPyConnection:
        """A new cursor for one reader thread (DuckDB cursors are not shared between threads)."""
        with self._cursor_lock:
            return self._con.cursor()

    def checkpoint(self) -> None:
        self._w.execute("CHECKPOINT")

    def close(self) -> None:
        with contextlib.suppress(duckdb.Error):
            self._w.close()
        with contextlib.suppress(duckdb.Error):
            self._con.close()


def _order(key: FailureKey) -> tuple[int, int]:
    return (key, -1) if isinstance(key, int) else key


def _scopes_table(columns: Sequence[str], scopes: Iterable[Scope]) -> pa.Table:
    values = list(zip(*scopes, strict=True)) if scopes else [() for _ in columns]
    return pa.table({name: list(col) for name, col in zip(columns, values, strict=True)})
