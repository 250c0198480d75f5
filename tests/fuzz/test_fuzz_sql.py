"""Fuzz the query guard (``projections.guard``), the first line in front of ``hivebus.query``.

Three properties:

- any text: ``check_sql`` passes it or raises ``QueryError`` (``QueryRefused`` for what is
  not allowed), nothing else; what passes is exactly one statement the engine will run;
- generated attacks (a file read, a write, an ATTACH, a setting, an extension, a second
  statement...) in every place SQL can hide them (sub-queries, CTEs, LATERAL, UNION, EXISTS,
  DESCRIBE/SUMMARIZE/EXPLAIN, FROM-first) and disguised (case, quotes, comments, schema
  qualification, dollar quotes, concatenated paths) never pass;
- judged by effect, not by syntax: every statement the guard passes is run on a *honeypot*
  DuckDB with none of the other defences (external access on, configuration unlocked, no
  read-only transaction, the raw text run as it is), and afterwards no file was read, listed
  or written, no table changed, no setting changed, nothing was attached or created.

The service and the database behind it (the other two lines) are tested against the real
projector in ``test_query_refusals.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hivebus.errors import QueryError
from hivebus.projections.guard import Checked, check_sql, statement_to_run
from tests.fuzz import fuzz

CANARY = "CANARY_c0ffee_5b1e"  # the content of a file no query may read
UNLISTED = "unlisted_7f3a"  # a file no SQL ever names: seeing it means a directory was listed


def checked_or_refused(sql: str) -> Checked | QueryError:
    try:
        checked = check_sql(sql)
    except QueryError as exc:
        assert str(exc), sql
        return exc
    statement_to_run(checked)  # what passes is one statement of a runnable type
    return checked


# --- any text ------------------------------------------------------------------------------------

_SQL_BITS = ["SELECT ", "FROM ", "WHERE ", "nodes", "readings", "*", ",", "(", ")", ";", "'", '"', "$$", "--", "\n",
             "/*", "*/", " UNION ALL ", " WITH x AS ", "INSERT INTO ", "DELETE ", "DROP ", "COPY ", "ATTACH ", "SET ",
             "PRAGMA ", "CALL ", "read_csv", "glob", "'/etc/passwd'", "1", "::", "?", "$1", "E'\\x41'", "\\",
             " RETURNING *", "EXPLAIN ", "DESCRIBE ", "SUMMARIZE ", "PIVOT ", "LATERAL ", "VALUES ", "\x00", "é"]  # fmt: skip


@fuzz(300)
@given(st.text(max_size=120) | st.lists(st.sampled_from(_SQL_BITS) | st.text(max_size=3), max_size=25).map("".join))
@example("\x00")
@example("SELECT '\ud800'")
@example(";;;")
@example("SELECT 1 -- ; DROP TABLE nodes")
def test_any_text_is_checked_or_refused_with_a_query_error(sql: str) -> None:
    checked_or_refused(sql)


# --- generated attacks -----------------------------------------------------------------------------


def paths_in(root: Path) -> dict[str, str]:
    return {
        "file": str(root / "canary.csv"),
        "out": str(root / "out.csv"),
        "db": str(root / "other.duckdb"),
        "dir": str(root / "export"),
        "glob": str(root / "*"),
    }


def literal(draw: st.DrawFn, text: str) -> str:
    """``text`` as a SQL string expression, disguised in one of the ways SQL allows."""
    form = draw(st.sampled_from(["plain", "concat", "dollar", "cast", "escape", "concat_fn"]))
    if form == "plain":
        return "'" + text.replace("'", "''") + "'"
    if form == "concat":
        cut = len(text) // 2
        return f"'{text[:cut]}' || '{text[cut:]}'"
    if form == "dollar":
        return f"$${text}$$"
    if form == "cast":
        return f"CAST('{text}' AS VARCHAR)"
    if form == "escape":
        return "E'" + text.replace("\\", "\\\\") + "'"
    return f"concat('{text[:3]}', '{text[3:]}')"


def name(draw: st.DrawFn, function: str) -> str:
    """A function name as written: any case, quoted, schema-qualified, a comment before '('."""
    form = draw(st.sampled_from(["plain", "upper", "mixed", "quoted", "main", "system", "comment"]))
    if form == "upper":
        return function.upper()
    if form == "mixed":
        return "".join(c.upper() if i % 2 else c for i, c in enumerate(function))
    if form == "quoted":
        return f'"{function}"'
    if form == "main":
        return f"main.{function}"
    if form == "system":
        return f"system.main.{function}"
    if form == "comment":
        return f"{function} /* x */"
    return function


FILE_TABLE_FUNCTIONS = ["read_csv", "read_csv_auto", "read_parquet", "parquet_scan", "read_json", "read_json_auto",
                        "read_ndjson", "read_ndjson_auto", "read_json_objects", "read_text", "read_blob", "sniff_csv",
                        "parquet_metadata", "parquet_schema", "parquet_file_metadata", "parquet_kv_metadata"]  # fmt: skip


@st.composite
def file_tables(draw: st.DrawFn, root: Path) -> str:
    """A FROM item that reads (or lists) a file."""
    p = paths_in(root)
    kind = draw(st.sampled_from(["function", "glob", "string", "identifier", "list", "named", "query", "other"]))
    if kind == "function":
        return f"{name(draw, draw(st.sampled_from(FILE_TABLE_FUNCTIONS)))}({literal(draw, p['file'])})"
    if kind == "glob":
        return f"{name(draw, 'glob')}({literal(draw, p['glob'])})"
    if kind == "string":
        return "'" + p["file"] + "'"
    if kind == "identifier":
        return '"' + p["file"] + '"'
    if kind == "list":
        return f"{name(draw, 'read_csv')}([{literal(draw, p['file'])}, {literal(draw, p['file'])}])"
    if kind == "named":
        return f"{name(draw, 'read_csv')}({literal(draw, p['file'])}, header = false, columns = {{'a': 'VARCHAR'}})"
    if kind == "query":
        inner = "SELECT * FROM read_csv(''" + p["file"] + "'')"
        return f"{name(draw, draw(st.sampled_from(['query', 'query_table'])))}('{inner}')"
    return draw(st.sampled_from([
        f"sqlite_scan('{p['db']}', 'x')", f"iceberg_scan('{p['dir']}')", f"delta_scan('{p['dir']}')",
        "checkpoint()", "force_checkpoint()", "duckdb_secrets()", "duckdb_temporary_files()",
        f"read_xlsx('{p['file']}')", f"sqlite_attach('{p['db']}')",
    ]))  # fmt: skip


@st.composite
def dml(draw: st.DrawFn) -> str:
    return draw(st.sampled_from([
        "DELETE FROM nodes RETURNING *", "INSERT INTO nodes VALUES ('x', 1) RETURNING *",
        "UPDATE nodes SET n = n + 1 RETURNING *", "DELETE FROM readings WHERE true RETURNING 1",
    ]))  # fmt: skip


@st.composite
def statements(draw: st.DrawFn, root: Path) -> str:
    """A whole statement that is not a read: a write, another database, a file, a setting."""
    p = paths_in(root)
    return draw(st.sampled_from([
        "INSERT INTO nodes VALUES ('x', 1)", "UPDATE nodes SET n = 0", "DELETE FROM readings", "TRUNCATE readings",
        "DROP TABLE nodes", "DROP VIEW IF EXISTS v", "ALTER TABLE nodes ADD COLUMN z INT", "ALTER TABLE nodes RENAME TO n2",
        "CREATE TABLE t2 AS SELECT 1", "CREATE TEMP TABLE t3 AS SELECT 1", "CREATE OR REPLACE VIEW nodes2 AS SELECT 1",
        "CREATE MACRO m(x) AS x", "CREATE TEMP MACRO m2(x) AS TABLE SELECT x", "CREATE SEQUENCE s", "CREATE SCHEMA s2",
        "CREATE TYPE mood AS ENUM ('a')", "CREATE INDEX i ON nodes (n)", "CREATE SECRET (TYPE s3, KEY_ID 'k', SECRET 's')",
        "MERGE INTO nodes USING nodes AS o ON true WHEN MATCHED THEN DELETE", "COMMENT ON TABLE nodes IS 'x'",
        f"ATTACH '{p['db']}' AS o", "ATTACH ':memory:' AS m", f"ATTACH IF NOT EXISTS '{p['db']}'", "DETACH o", "USE memory",
        f"COPY nodes TO '{p['out']}'", f"COPY (SELECT * FROM nodes) TO '{p['out']}' (FORMAT parquet)",
        f"COPY nodes FROM '{p['file']}'", "COPY FROM DATABASE memory TO o", f"EXPORT DATABASE '{p['dir']}'",
        f"IMPORT DATABASE '{p['dir']}'", "INSTALL httpfs", "LOAD httpfs", "LOAD json", "FORCE INSTALL x FROM 'y'",
        "SET threads = 1", "SET GLOBAL threads = 1", "SET SESSION search_path = 'x'", "RESET threads",
        "SET enable_external_access = true", "SET lock_configuration = false", "SET VARIABLE v = 1", "RESET VARIABLE v",
        f"SET temp_directory = '{p['dir']}'", "PRAGMA enable_profiling", "PRAGMA threads = 1", "PRAGMA version",
        f"PRAGMA profiling_output = '{p['out']}'", "CALL pragma_version()", "CALL checkpoint()", "CHECKPOINT",
        "FORCE CHECKPOINT", "VACUUM", "ANALYZE", "BEGIN TRANSACTION", "COMMIT", "ROLLBACK", "ABORT",
        "PREPARE p AS SELECT 1", "EXECUTE p", "DEALLOCATE p", "UPDATE EXTENSIONS", "DESCRIBE read_csv('x')",
        "EXPLAIN ANALYZE DELETE FROM nodes", "EXPLAIN INSERT INTO nodes VALUES ('x', 1)", "PIVOT nodes ON n",
    ]))  # fmt: skip


@st.composite
def attacks(draw: st.DrawFn, root: Path) -> str:
    """One attack in one of the places a statement can carry it."""
    kind = draw(st.sampled_from(["table", "table", "table", "dml", "statement", "smuggled", "scalar"]))
    if kind == "statement":
        return draw(statements(root))
    if kind == "smuggled":
        first, second = "SELECT * FROM nodes", draw(statements(root))
        glue = draw(st.sampled_from([";", "; ", ";\n", " ; -- x\n", "; /* ; */ "]))
        return draw(st.sampled_from([f"{first}{glue}{second}", f"{second}{glue}{first}",
                                     f"SELECT ';'{glue}{second}", f"{first}{glue}COMMIT{glue}{second}"]))  # fmt: skip
    if kind == "scalar":
        return draw(st.sampled_from([
            "SELECT getenv('HOME')", "SELECT nextval('s')", "SELECT setseed(0.1)", "SELECT * FROM nodes WHERE getenv('X') IS NULL",
            "SELECT current_setting('s3_secret_access_key')", "SELECT which_secret('s3://x', 's3')",
            "SELECT * FROM duckdb_settings()", "SELECT value FROM duckdb_settings() WHERE name = 'temp_directory'",
        ]))  # fmt: skip
    if kind == "dml":
        t = draw(dml())
        return draw(st.sampled_from([
            f"WITH w AS ({t}) SELECT count(*) FROM w", f"WITH a AS (SELECT 1), w AS ({t}) SELECT * FROM a, w",
            f"WITH w AS MATERIALIZED ({t}) SELECT 1", f"WITH RECURSIVE w AS ({t}) SELECT 1",
            f"SELECT * FROM nodes WHERE EXISTS (WITH w AS ({t}) SELECT 1 FROM w)", f"EXPLAIN ANALYZE WITH w AS ({t}) SELECT 1",
        ]))  # fmt: skip
    t = draw(file_tables(root))
    return draw(st.sampled_from([
        f"SELECT * FROM {t}", f"FROM {t}", f"SELECT (SELECT count(*) FROM {t}) AS n",
        f"SELECT * FROM nodes WHERE n IN (SELECT 1 FROM {t})", f"SELECT * FROM nodes, LATERAL (SELECT * FROM {t}) x",
        f"SELECT 1 UNION ALL SELECT count(*) FROM {t}", f"WITH c AS MATERIALIZED (SELECT * FROM {t}) SELECT * FROM c",
        f"SELECT EXISTS (SELECT 1 FROM {t})", f"SELECT * FROM nodes JOIN {t} ON true", f"DESCRIBE SELECT * FROM {t}",
        f"SUMMARIZE SELECT * FROM {t}", f"EXPLAIN SELECT * FROM {t}", f"EXPLAIN ANALYZE SELECT * FROM {t}",
        f"SELECT * FROM json_each((SELECT to_json(list(t)) FROM {t} t))", f"SELECT * FROM (FROM {t})",
        f"SELECT CASE WHEN true THEN (SELECT 1 FROM {t} LIMIT 1) END", f"SELECT * FROM range(1) r, {t}",
        f"SELECT list(x) FROM (SELECT * FROM {t}) x", f"FROM nodes SELECT * WHERE n = (SELECT count(*) FROM {t})",
        f"SELECT * FROM unnest((SELECT list(c) FROM {t} c))", f"SELECT 1 INTERSECT SELECT count(*) FROM {t}",
        f"SELECT * FROM nodes WHERE n > ANY (SELECT 1 FROM {t})", f"SELECT (FROM {t} LIMIT 1)",
        f"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r, {t} WHERE n < 2) SELECT * FROM r",
    ]))  # fmt: skip


ROOT = Path("/nonexistent-hivebus-fuzz")  # the guard never touches the paths it reads


@fuzz(600)
@given(attacks(ROOT))
@example("SELECT * FROM nodes; COMMIT; DROP TABLE readings")
@example("SELECT 1;\nATTACH ':memory:' AS m")
def test_no_attack_passes_the_guard(sql: str) -> None:
    result = checked_or_refused(sql)
    assert isinstance(result, QueryError), f"the guard let this through: {sql}"


# --- judged by effect: a honeypot with no other defence ------------------------------------------------------

benign = st.sampled_from([
    "SELECT * FROM nodes", "SELECT count(*) FROM readings", "FROM nodes", "SELECT n, count(*) FROM nodes GROUP BY n",
    "SELECT * FROM nodes, LATERAL (SELECT * FROM range(2)) r", "SELECT * FROM range(3)", "VALUES (1, 'a')",
    "WITH c AS (SELECT * FROM nodes) SELECT * FROM c", "DESCRIBE nodes", "SUMMARIZE nodes", "SHOW TABLES",
    "EXPLAIN SELECT * FROM nodes", "SELECT * FROM duckdb_tables()", "SELECT * FROM pragma_table_info('nodes')", "SHOW 'canary.csv'",
    "SELECT * FROM unnest([1, 2])", "SELECT * FROM json_each('{\"a\": 1}')", "SELECT getvariable('v')",
    "SELECT * FROM duckdb_databases()", "SELECT * FROM generate_series(1, 3)", "UNPIVOT nodes ON n",
])  # fmt: skip


class Honeypot:
    """A DuckDB with every defence but the guard turned off, and ways to tell what changed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "canary.csv").write_text(f"secret\n{CANARY}\n")
        (root / f"{UNLISTED}.txt").write_text("x")
        (root / "repo").mkdir()
        self.con = duckdb.connect(str(root / "honey.duckdb"), config={
            "enable_external_access": True,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "custom_extension_repository": str(root / "repo"),  # an INSTALL that got through stays on this machine
        })  # fmt: skip
        self.con.execute("CREATE TABLE nodes (node_id VARCHAR, n INTEGER)")
        self.con.execute("INSERT INTO nodes VALUES ('W001', 1), ('W002', 2)")
        self.con.execute("CREATE TABLE readings AS SELECT range AS seq, 'env.t' AS name FROM range(5)")
        self.con.execute("CHECKPOINT")
        self.before = self.state()

    def state(self) -> dict[str, Any]:
        c = self.con
        return {
            "files": sorted((str(p.relative_to(self.root)), p.stat().st_size) for p in self.root.rglob("*")
                            if not p.name.startswith("honey.duckdb")),
            "data": c.execute("SELECT (SELECT sum(hash(n)) FROM nodes), (SELECT count(*) FROM nodes),"
                              " (SELECT sum(hash(seq)) FROM readings), (SELECT count(*) FROM readings)").fetchall(),
            "catalog": c.execute("SELECT database_name, schema_name, table_name, column_count FROM duckdb_tables()"
                                 " ORDER BY ALL").fetchall(),
            "databases": c.execute("SELECT database_name FROM duckdb_databases() ORDER BY 1").fetchall(),
            "settings": c.execute("SELECT name, value FROM duckdb_settings() ORDER BY 1").fetchall(),
            "functions": c.execute("SELECT count(*) FROM duckdb_functions()").fetchall(),
            "sequences": c.execute("SELECT count(*) FROM duckdb_sequences()").fetchall(),
            "variables": c.execute("SELECT count(*) FROM duckdb_variables()").fetchall(),
        }  # fmt: skip

    def run(self, sql: str) -> str:
        """Run the raw text as the engine once did; the result as text."""
        try:
            relation = self.con.sql(sql)
            return repr(relation.fetchall()) if relation is not None else ""
        except duckdb.Error as exc:
            return f"error: {exc}"


@pytest.fixture(scope="module")
def honeypot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Honeypot]:
    pot = Honeypot(tmp_path_factory.mktemp("honeypot"))
    cwd = os.getcwd()
    os.chdir(pot.root)  # relative paths ('canary.csv') resolve inside the honeypot too
    try:
        yield pot
    finally:
        os.chdir(cwd)
        pot.con.close()


_TMP_ROOT = Path(os.environ.get("TMPDIR", "/tmp"))


@fuzz(300)
@given(data=st.data())
def test_what_the_guard_passes_changes_nothing_and_reads_no_file(honeypot: Honeypot, data: st.DataObject) -> None:
    sql = data.draw(benign | attacks(honeypot.root) | attacks(honeypot.root).map(lambda s: re.sub(r"/[^']*/", "", s)))
    result = checked_or_refused(sql)
    if isinstance(result, QueryError):
        return
    output = honeypot.run(result.sql)
    assert CANARY not in output, f"{sql!r} read a file: {output[:300]}"
    assert UNLISTED not in output, f"{sql!r} listed a directory: {output[:300]}"
    assert honeypot.state() == honeypot.before, f"{sql!r} changed the database or the files"


def test_the_honeypot_would_see_each_effect(honeypot: Honeypot) -> None:
    """The oracle can fail: unguarded, each kind of attack shows in what it checks."""
    assert CANARY in honeypot.run(f"SELECT * FROM read_csv('{honeypot.root / 'canary.csv'}', header = false)")
    assert UNLISTED in honeypot.run(f"SELECT * FROM glob('{honeypot.root / '*'}')")
    for sql, what in [
        ("INSERT INTO nodes VALUES ('x', 9)", "data"),
        (f"COPY nodes TO '{honeypot.root / 'out.csv'}'", "files"),
        ("SET threads = 1", "settings"),
        ("ATTACH ':memory:' AS m", "databases"),
        ("CREATE TEMP MACRO m(x) AS x", "functions"),
        ("SET VARIABLE v = 1", "variables"),
    ]:
        honeypot.run(sql)
        after = honeypot.state()
        assert after[what] != honeypot.before[what], (sql, what)
        honeypot.before = after  # the next check starts from here
