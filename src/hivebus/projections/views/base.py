"""What a view is: its tables (DDL), a version, and a pure ``apply`` from a batch to row changes.

A view never touches DuckDB. The store hands it the decoded messages of one batch (and, for a
stateful view, the rows the batch is about, loaded beforehand); the view answers with row
changes, which the store writes in the same transaction as the stream checkpoint. Two shapes
cover every view:

- ``AppendView``: each message adds rows (``events``, ``readings``, ``triggers``).
- ``FoldView``: rows are grouped by a *scope* (a bundle id, a job id, a node); each message is
  folded into the rows of its scope, and the store replaces the scopes the batch touched
  (``bundles``, ``jobs``, ``nodes``...). Upserts, deletions and state machines are all folds.

A message a view cannot apply (its code raises) is reported as a failure with the reason; the
store dead-letters it and the rest of the batch goes on. Views use event times, never the
wall clock, so a replay of the same log gives the same rows (guarantee 6).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, NamedTuple, overload

EVENTS = "EVENTS"
DATA = "DATA"
DEADLETTERS = "DEADLETTERS"
STREAMS = (EVENTS, DATA, DEADLETTERS)
"""Stream names (the same as ``hivebus.bus.streams``; repeated so views import no NATS code)."""

Row = dict[str, Any]
Scope = tuple[Any, ...]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


FailureKey = int | tuple[int, int]
"""Names an item in ``Applied.failures``: its stream seq, or (seq, index) for a packed reading."""


class Item(NamedTuple):
    """One message of a batch as a view sees it: its stream sequence, NATS subject and body.

    ``event`` is a decoded ``Event`` for EVENTS and DATA, a ``DeadLetter`` (or None when the
    dead letter itself is malformed) for DEADLETTERS; ``raw`` is the body (DEADLETTERS, and a
    reading of a packed DATA message: its own bytes). ``batch_index`` is that reading's place in its
    message (None: the message is the event). A NamedTuple: one is built per reading, on the
    hot path.
    """

    seq: int
    subject: str
    event: Any
    raw: bytes = b""
    batch_index: int | None = None

    @property
    def key(self) -> FailureKey:
        """What names this item in ``Applied.failures``: its seq, or (seq, index) in a batch."""
        return self.seq if self.batch_index is None else (self.seq, self.batch_index)


@dataclass(frozen=True)
class Table:
    """A table a view owns. ``ddl`` creates it (``{name}`` is filled in)."""

    name: str
    ddl: str

    def create_sql(self, name: str | None = None) -> str:
        return self.ddl.format(name=name or self.name)


@dataclass(slots=True)
class Append:
    """Rows to add to ``table``, column-wise (each list has one value per row), or as an Arrow
    table (``frame``: a view's rows decoded in bulk, its columns named as the table's)."""

    table: str
    columns: dict[str, list[Any]]
    frame: Any = None
    """A ``pyarrow.Table`` of the rows (``columns`` is then empty)."""

    def __len__(self) -> int:
        if self.frame is not None:
            return int(self.frame.num_rows)
        return len(next(iter(self.columns.values()), []))


@dataclass(slots=True)
class Replace:
    """``scopes`` of ``table`` are replaced by ``rows`` (delete the scopes, insert the rows)."""

    table: str
    scope_columns: tuple[str, ...]
    scopes: list[Scope]
    rows: list[Row]


Change = Append | Replace


@dataclass(slots=True)
class Applied:
    """A view's answer for one batch: the row changes and the messages it could not apply."""

    changes: list[Change] = field(default_factory=list)
    failures: dict[FailureKey, str] = field(default_factory=dict)  # Item.key -> reason


class View(ABC):
    """A projection: tables, a version, the stream it reads, and a pure ``apply``."""

    name: ClassVar[str]
    version: ClassVar[int]
    stream: ClassVar[str] = EVENTS
    tables: ClassVar[tuple[Table, ...]]
    sql_views: ClassVar[tuple[str, ...]] = ()
    """``CREATE OR REPLACE VIEW`` statements over the tables (run after every table exists)."""
    public: ClassVar[tuple[str, ...]] = ()
    """The table and view names users query (documented in docs/views.md)."""

    def wanted(self, items: Sequence[Item]) -> dict[str, set[Scope]]:
        """Which scopes of which table ``apply`` needs loaded; stateless views need none."""
        return {}

    @abstractmethod
    def apply(self, items: Sequence[Item], state: dict[str, dict[Scope, list[Row]]]) -> Applied:
        """Row changes for ``items`` (already de-duplicated, in stream order)."""


class AppendView(View):
    """A view whose rows are a function of one message each."""

    table: ClassVar[Table]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "table" in cls.__dict__ and "tables" not in cls.__dict__:
            cls.tables = (cls.table,)

    @abstractmethod
    def rows(self, item: Item) -> Iterable[Row]:
        """The rows ``item`` adds (none for a message this view does not record)."""

    def apply(self, items: Sequence[Item], state: dict[str, dict[Scope, list[Row]]]) -> Applied:
        out: list[Row] = []
        failures: dict[FailureKey, str] = {}
        for item in items:
            try:
                out.extend(self.rows(item))
            except Exception as exc:
                failures[item.key] = failure(self.name, exc)
        return Applied([Append(self.table.name, columnar(out))] if out else [], failures)


class FoldView(View):
    """A view whose rows are grouped by scope and evolve with each message of the scope."""

    table: ClassVar[Table]
    scope_columns: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "table" in cls.__dict__ and "tables" not in cls.__dict__:
            cls.tables = (cls.table,)

    @abstractmethod
    def scope(self, item: Item) -> Scope | None:
        """The scope ``item`` changes, or None if this view ignores it."""

    @abstractmethod
    def evolve(self, rows: list[Row], item: Item) -> list[Row] | None:
        """The scope's rows after ``item`` (``rows`` is a private copy); None: unchanged."""

    def wanted(self, items: Sequence[Item]) -> dict[str, set[Scope]]:
        scopes = set()
        for item in items:
            try:
                key = self.scope(item)
            except Exception:  # reported by apply
                continue
            if key is not None:
                scopes.add(key)
        return {self.table.name: scopes} if scopes else {}

    def apply(self, items: Sequence[Item], state: dict[str, dict[Scope, list[Row]]]) -> Applied:
        loaded = state.get(self.table.name, {})
        touched: dict[Scope, list[Row]] = {}
        failures: dict[FailureKey, str] = {}
        for item in items:
            try:
                key = self.scope(item)
                if key is None:
                    continue
                before = touched[key] if key in touched else loaded.get(key, [])
                after = self.evolve([dict(r) for r in before], item)
            except Exception as exc:
                failures[item.key] = failure(self.name, exc)
                continue
            if after is not None:
                touched[key] = after
        if not touched:
            return Applied([], failures)
        rows = [row for scope_rows in touched.values() for row in scope_rows]
        return Applied([Replace(self.table.name, self.scope_columns, list(touched), rows)], failures)


# --- helpers the views share ------------------------------------------------------------


def failure(view: str, exc: BaseException) -> str:
    return f"view {view}: {type(exc).__name__}: {exc}"


def columnar(rows: list[Row]) -> dict[str, list[Any]]:
    if not rows:
        return {}
    names = list(rows[0])
    return {name: [row.get(name) for row in rows] for name in names}


@overload
def utc(moment: datetime) -> datetime: ...
@overload
def utc(moment: None) -> None: ...
def utc(moment: datetime | None) -> datetime | None:
    """A naive UTC datetime (the views' TIMESTAMP columns hold UTC without a zone)."""
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def bigint(value: int | None, what: str) -> int | None:
    """``value`` if it fits DuckDB's BIGINT, else ValueError naming ``what``."""
    if value is not None and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{what} {value} does not fit in 64 bits")
    return value


def number_and_text(value: int | float | str) -> tuple[float | None, str | None]:
    """A reading value as (DOUBLE, text): text for strings, and for ints a double cannot hold
    exactly (the text keeps every digit); OverflowError for ints beyond any double."""
    if isinstance(value, str):
        return None, value
    if isinstance(value, int):
        as_float = float(value)  # OverflowError past ~1.8e308: the message is dead-lettered
        return as_float, (str(value) if int(as_float) != value else None)
    return float(value), None
