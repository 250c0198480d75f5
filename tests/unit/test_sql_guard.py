"""The query guard: one read-only statement over the views, checked with DuckDB's own parser."""

from __future__ import annotations

import pytest

from hivebus.errors import QueryError, QueryRefused
from hivebus.projections.guard import check_sql

ALLOWED = [
    "SELECT * FROM nodes",
    "select name, avg(value) from readings where name like 'env.%' group by name order by name",
    "WITH recent AS (SELECT * FROM readings WHERE timestamp > now() - INTERVAL 1 HOUR) SELECT count(*) FROM recent",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
    "SELECT 1 UNION ALL SELECT 2",
    "FROM jobs",
    "VALUES (1, 'a')",
    "DESCRIBE nodes",
    "SHOW TABLES",
    "SUMMARIZE readings",
    "EXPLAIN SELECT * FROM events",
    "EXPLAIN ANALYZE SELECT * FROM events",
    "SELECT * FROM range(3)",
    "SELECT * FROM duckdb_tables()",
    "SELECT * FROM pragma_table_info('nodes')",
    "SELECT data->>'$.bundle_id' FROM events WHERE type = ?",
    "SELECT * FROM projector.checkpoints",
    "SELECT 1;",
    "  select 1  ;  ",
]

REFUSED = [
    # writes
    ("INSERT INTO nodes (node_id) VALUES ('x')", "INSERT"),
    ("UPDATE nodes SET status = 'online'", "UPDATE"),
    ("DELETE FROM readings", "DELETE"),
    ("MERGE INTO nodes USING jobs ON true WHEN MATCHED THEN DELETE", "MERGE"),
    ("CREATE TABLE x AS SELECT 1", "CREATE"),
    ("CREATE VIEW v AS SELECT 1", "CREATE"),
    ("CREATE SECRET (TYPE s3)", "CREATE"),
    ("CREATE MACRO m(x) AS x + 1", "CREATE"),
    ("DROP TABLE nodes", "DROP"),
    ("ALTER TABLE nodes ADD COLUMN x INT", "ALTER"),
    ("TRUNCATE readings", "DELETE"),
    ("WITH gone AS (DELETE FROM readings RETURNING *) SELECT count(*) FROM gone", "DELETE"),
    ("WITH n AS (INSERT INTO nodes (node_id) VALUES ('x') RETURNING *) SELECT * FROM n", "INSERT"),
    ("EXPLAIN ANALYZE DELETE FROM readings", "DELETE"),
    # other databases, files, extensions, settings
    ("ATTACH 'other.db' AS other", "ATTACH"),
    ("DETACH other", "DETACH"),
    ("USE memory", "SET"),
    ("COPY nodes TO '/tmp/nodes.csv'", "COPY"),
    ("COPY nodes FROM '/tmp/nodes.csv'", "COPY"),
    ("EXPORT DATABASE '/tmp/db'", "EXPORT"),
    ("IMPORT DATABASE '/tmp/db'", "PRAGMA"),
    ("PRAGMA version", "PRAGMA"),
    ("SET threads = 1", "SET"),
    ("SET enable_external_access = true", "SET"),
    ("RESET threads", "SET"),
    ("SET VARIABLE x = 1", "SET"),
    ("INSTALL httpfs", "LOAD"),
    ("LOAD httpfs", "LOAD"),
    ("CALL pragma_version()", "CALL"),
    ("CHECKPOINT", "CALL"),
    ("VACUUM", "VACUUM"),
    ("ANALYZE", "VACUUM"),
    ("BEGIN TRANSACTION", "TRANSACTION"),
    ("COMMIT", "TRANSACTION"),
    ("PREPARE p AS SELECT 1", "PREPARE"),
    ("EXECUTE p", "EXECUTE"),
    ("UPDATE EXTENSIONS", "other than SELECT"),
    ("PIVOT nodes ON status", "MULTI"),
    # reading files or other sources from a SELECT
    ("SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
    ("SELECT * FROM read_csv_auto('/etc/passwd')", "read_csv_auto"),
    ("SELECT * FROM read_parquet('x.parquet')", "read_parquet"),
    ("SELECT * FROM parquet_scan('x.parquet')", "parquet_scan"),
    ("SELECT * FROM read_json('x.json')", "read_json"),
    ("SELECT * FROM read_json_auto('x.json')", "read_json_auto"),
    ("SELECT * FROM read_ndjson('x.json')", "read_ndjson"),
    ("SELECT * FROM read_text('/etc/passwd')", "read_text"),
    ("SELECT * FROM read_blob('/etc/passwd')", "read_blob"),
    ("SELECT * FROM glob('/etc/*')", "glob"),
    ("SELECT * FROM sniff_csv('/etc/passwd')", "sniff_csv"),
    ("SELECT * FROM parquet_metadata('x.parquet')", "parquet_metadata"),
    ("SELECT * FROM '/etc/passwd'", "/etc/passwd"),
    ("SELECT * FROM 'readings.csv'", "readings.csv"),
    ("SELECT * FROM 's3://bucket/x.parquet'", "s3://"),
    ("SELECT (SELECT count(*) FROM read_csv('/etc/passwd')) AS n", "read_csv"),
    ("SELECT * FROM nodes WHERE node_id IN (SELECT * FROM read_csv('/etc/hosts'))", "read_csv"),
    ("SELECT * FROM query('DROP TABLE nodes')", "query"),
    ("SELECT * FROM query_table('nodes')", "query_table"),
    ("SELECT getenv('HOME')", "getenv"),
    ("SELECT * FROM duckdb_secrets()", "duckdb_secrets"),
    ("SELECT * FROM sqlite_scan('x.db', 't')", "sqlite_scan"),
    ("EXPLAIN SELECT * FROM read_csv('x')", "read_csv"),
    # more than one statement
    ("SELECT 1; DROP TABLE nodes", "2 statements"),
    ("SELECT 1; SELECT 2", "2 statements"),
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_read_only_statements_pass(sql: str) -> None:
    checked = check_sql(sql)
    assert checked.sql and not checked.sql.endswith(";")


@pytest.mark.parametrize(("sql", "named"), REFUSED)
def test_everything_else_is_refused_with_a_reason(sql: str, named: str) -> None:
    with pytest.raises(QueryRefused) as refused:
        check_sql(sql)
    assert named in str(refused.value)


@pytest.mark.parametrize("sql", ["", "   ", "SELEC 1", "SELECT * FROM", "SELECT 'unterminated"])
def test_syntax_errors_and_empty_queries_are_errors_not_refusals(sql: str) -> None:
    with pytest.raises(QueryError) as error:
        check_sql(sql)
    assert not isinstance(error.value, QueryRefused)


def test_an_oversized_query_is_refused() -> None:
    with pytest.raises(QueryRefused, match="bytes"):
        check_sql("SELECT " + " + ".join(["1"] * 60_000))
