"""The SELECT over the ``readings`` view for a ``DataQuery``.

One point per series and timestamp: a series is the name plus the whole meta set (and the
node), and when a point was written twice the later write (higher DATA sequence; within one
packed DATA message, the later reading, inserted later) wins, as an InfluxDB point is
overwritten. head/tail keep the earliest/latest N points of each series.
Rows come grouped by series (name, then meta), time-ordered within each. An aggregation
(``experimental_func``) is applied to these rows afterwards (``aggregate``), then head/tail.
"""

from __future__ import annotations

from typing import Any

from hivebus.data.filters import where_clause
from hivebus.data.request import DataQuery

COLUMNS = "timestamp, name, value, value_text, node, meta"
SERIES = "name, node, meta"
ORDER = "name, CAST(meta AS VARCHAR), node, timestamp"


def build_sql(query: DataQuery) -> tuple[str, list[Any]]:
    where = ["timestamp >= make_timestamp_ns(?::BIGINT)", "timestamp < make_timestamp_ns(?::BIGINT)"]
    params: list[Any] = [query.start_ns, query.end_ns]
    for key, value in query.filter.items():
        clause, values = where_clause(key, value)
        where.append(clause)
        params.extend(values)
    points = (
        f"SELECT {COLUMNS}, seq FROM readings WHERE {' AND '.join(where)}"
        f" QUALIFY row_number() OVER (PARTITION BY {SERIES}, timestamp ORDER BY seq DESC, rowid DESC) = 1"
    )
    sql = f"SELECT {COLUMNS} FROM ({points})"
    limit = query.head if query.head is not None else query.tail
    if limit is not None and query.func is None:
        order = "ASC" if query.head is not None else "DESC"
        sql += f" QUALIFY row_number() OVER (PARTITION BY {SERIES} ORDER BY timestamp {order}) <= ?"
        params.append(limit)
    return f"{sql} ORDER BY {ORDER}", params
