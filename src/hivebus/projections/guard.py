"""Which SQL the query service runs: one read-only statement over the views, and nothing else.

The check uses DuckDB's own parser, never a regular expression: ``extract_statements`` gives
the statement type (only SELECT, and EXPLAIN of a SELECT, pass; INSERT, UPDATE, DELETE,
CREATE, DROP, ALTER, ATTACH, DETACH, COPY, EXPORT, IMPORT, PRAGMA, SET, RESET, INSTALL, LOAD,
CALL, CHECKPOINT, VACUUM, transactions, PREPARE/EXECUTE are refused), then the parsed tree
(``json_serialize_sql``) is walked so that a SELECT cannot write through a CTE
(``WITH x AS (DELETE ... RETURNING *) SELECT ...``, which DuckDB runs) or read a file: table functions
must be on an allow-list (``range``, ``unnest``, ``duckdb_*`` catalog functions...), so
``read_csv``, ``read_parquet``, ``read_json``, ``glob``, ``query`` and friends are refused, as
is ``FROM 'file.csv'`` (a table name that is a path).

This is the first line. The second is ``statement_to_run``: the engine executes the one
parsed statement object (never the text, which DuckDB would run whole, a ``COMMIT; DROP ...``
after a SELECT included), and only if DuckDB's own parser calls it a SELECT or an EXPLAIN.
The third is the database itself: the query cursors belong to a DuckDB instance opened with
external access disabled and its configuration locked, and each query runs in a read-only
transaction, so a statement that slipped past both checks still could not write the views,
read a file or change a setting.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb

from hivebus.errors import QueryError, QueryRefused

MAX_SQL_BYTES = 100_000

ALLOWED_TABLE_FUNCTIONS = frozenset(
    {"range", "generate_series", "unnest", "json_each", "json_tree", "repeat", "repeat_row"}
)
ALLOWED_TABLE_FUNCTION_PREFIXES = ("duckdb_", "pragma_")
# Settings can hold credentials (s3_secret_access_key, http_proxy_password...) and paths:
# a query reads the views, not the configuration.
REFUSED_TABLE_FUNCTIONS = frozenset(
    {"duckdb_secrets", "duckdb_logs", "duckdb_temporary_files", "duckdb_settings"}
)
REFUSED_FUNCTIONS = frozenset(
    {"getenv", "nextval", "currval", "setseed", "query", "query_table", "glob", "sniff_csv",
     "read_text", "read_blob", "load_aws_credentials", "which_secret", "current_setting"}
)  # fmt: skip
_FILE_FUNCTION = re.compile(r"^(read_|parquet_|iceberg_|delta_|sqlite_|postgres_|mysql_)|_scan$")
# Query nodes a read-only statement may contain; a SELECT can hide a DELETE ... RETURNING in a
# CTE (``DELETE_QUERY_NODE``), which DuckDB runs.
READ_QUERY_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
_PATH_LIKE = re.compile(r"[./\\:~]")
_EXPLAIN = re.compile(r"^\s*explain\s+(analyze\s+)?", re.IGNORECASE)

READ_ONLY_HINT = "the query service runs one read-only SELECT (or WITH, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN)"


@dataclass(frozen=True)
class Checked:
    """A statement that passed: its text, ready to run."""

    sql: str
    kind: str  # "select" or "explain"


def check_sql(sql: str) -> Checked:
    """The one read-only statement in ``sql``; ``QueryRefused`` says what is not allowed."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryError("the query is empty", hint="write a SELECT over the views, e.g. SELECT * FROM nodes")
    try:
        size = len(sql.encode())
    except UnicodeEncodeError as exc:  # a lone surrogate (JSON "\ud800") has no UTF-8 form
        raise QueryError(f"the query is not valid text ({exc.reason} at character {exc.start})") from None
    if size > MAX_SQL_BYTES:
        raise QueryRefused(f"the query is {size} bytes, more than {MAX_SQL_BYTES}")
    statements = _statements(sql)
    if len(statements) != 1:
        raise QueryRefused(f"{len(statements)} statements: send exactly one", hint=READ_ONLY_HINT)
    statement = statements[0]
    kind = _type_name(statement)
    text = statement.query.strip().rstrip(";").strip()
    if kind == "EXPLAIN":
        inner = _EXPLAIN.sub("", text, count=1)
        if inner == text:
            raise QueryRefused("cannot read this EXPLAIN statement", hint=READ_ONLY_HINT)
        check_sql(inner)
        return Checked(text, "explain")
    if kind == "UNKNOWN":
        raise QueryRefused("statements other than SELECT are refused", hint=READ_ONLY_HINT)
    if kind != "SELECT":
        raise QueryRefused(f"{kind} statements are refused", hint=READ_ONLY_HINT)
    _check_tree(text)
    return Checked(text, "select")


RUNNABLE_STATEMENTS = frozenset({"SELECT", "EXPLAIN"})


def statement_to_run(checked: Checked) -> Any:
    """The parsed statement the engine executes for ``checked``: one, of a read-only type.

    A second line behind ``check_sql``, independent of its tree walk: whatever the text holds,
    only this one statement object runs.
    """
    statements = _statements(checked.sql)
    if len(statements) != 1:
        raise QueryRefused(f"{len(statements)} statements: send exactly one", hint=READ_ONLY_HINT)
    kind = _type_name(statements[0])
    if kind not in RUNNABLE_STATEMENTS:
        raise QueryRefused(f"{kind} statements are refused", hint=READ_ONLY_HINT)
    return statements[0]


def _statements(sql: str) -> list[Any]:
    try:
        return list(duckdb.extract_statements(sql))
    except duckdb.ParserException as exc:
        raise QueryError(_first_line(exc)) from None
    except (duckdb.Error, ValueError) as exc:  # e.g. a statement type this client cannot name
        raise QueryRefused(f"cannot check this statement: {_first_line(exc)}", hint=READ_ONLY_HINT) from None


def _type_name(statement: Any) -> str:
    try:
        return str(statement.type.name)
    except (AttributeError, ValueError):
        return "UNKNOWN"


def _check_tree(sql: str) -> None:
    tree = _serialize(sql)
    for node in _walk(tree):
        kind = str(node.get("type", ""))
        if kind.endswith("_NODE") and kind not in READ_QUERY_NODES:
            what = kind.removesuffix("_NODE").removesuffix("_QUERY").replace("_", " ")
            raise QueryRefused(f"{what} inside the query is refused", hint=READ_ONLY_HINT)
        if kind == "TABLE_FUNCTION":
            function = node.get("function") or {}
            name = str(function.get("function_name", "")).lower()
            if not _table_function_allowed(name):
                raise QueryRefused(
                    f"table function {name}() is refused: queries read the hivebus views, not files or other sources",
                    hint="query the tables listed in docs/views.md",
                )
        elif kind == "BASE_TABLE":
            table = str(node.get("table_name", ""))
            if _PATH_LIKE.search(table):
                raise QueryRefused(f"reading {table!r} is refused: queries cannot read files")
        if node.get("class") == "FUNCTION":
            name = str(node.get("function_name", "")).lower()
            if name in REFUSED_FUNCTIONS or _FILE_FUNCTION.search(name):
                raise QueryRefused(f"function {name}() is refused in queries")


def _table_function_allowed(name: str) -> bool:
    if name in REFUSED_TABLE_FUNCTIONS:
        return False
    return name in ALLOWED_TABLE_FUNCTIONS or name.startswith(ALLOWED_TABLE_FUNCTION_PREFIXES)


_local = threading.local()


def _parser() -> duckdb.DuckDBPyConnection:
    """A private in-memory DuckDB per thread, used only to parse (nothing is executed on it)."""
    con = getattr(_local, "con", None)
    if con is None:
        con = duckdb.connect(":memory:", config={"enable_external_access": False})
        _local.con = con
    return con


def _serialize(sql: str) -> dict[str, Any]:
    rows = _parser().execute("SELECT json_serialize_sql(?)", [sql]).fetchall()
    tree = json.loads(rows[0][0]) if rows else {"error": True, "error_message": "no result"}
    if tree.get("error"):
        raise QueryRefused(
            f"cannot check this statement: {tree.get('error_message', 'unknown parser error')}",
            hint="rewrite it as a plain SELECT (PIVOT and similar shorthands cannot be checked)",
        )
    return tree


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
