"""The committed rows of the stateful views' recently touched scopes, kept in memory."""

from __future__ import annotations

from collections import OrderedDict

from hivebus.projections.views.base import Row, Scope


class StateCache:
    """The rows of recently touched scopes of one fold table, as committed (LRU).

    The store is the table's only writer, so the cache is exact: it is filled from the table
    and updated after each commit. A scope known to have no rows is cached as ``[]``.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._rows: OrderedDict[Scope, list[Row]] = OrderedDict()

    def get(self, scope: Scope) -> list[Row] | None:
        rows = self._rows.get(scope)
        if rows is not None:
            self._rows.move_to_end(scope)
        return rows

    def put(self, scope: Scope, rows: list[Row]) -> None:
        self._rows[scope] = rows
        self._rows.move_to_end(scope)
        if len(self._rows) > self.limit:
            self._rows.popitem(last=False)

    def clear(self) -> None:
        self._rows.clear()
