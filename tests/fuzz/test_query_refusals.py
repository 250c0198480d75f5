"""The query service cannot read files, attach databases or write: proven on the real service.

A real nats-server and an in-process projector serving ``hivebus.query`` (as in
``tests/integration/test_query.py``). Every kind of attack goes through NATS as a user's
request would, twice:

- with every line of defence on: refused by the guard, with an answer naming what;
- with the guard switched off (its check patched to pass everything): refused all the same by
  the engine (one parsed statement, of a read-only type) or by the database (external access
  off, configuration locked, read-only transaction), again naming what.

After each round: no file was read (a canary's content never comes back) or written, the views
are byte-for-byte what they were, no setting changed, nothing is attached, and the service
still answers and the projector still projects.

What only the guard stops (the database alone would run them) is listed in ``GUARD_ONLY`` and
checked to be refused by the guard.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hivebus.bus.client import Bus
from hivebus.bus.streams import DATA
from hivebus.projections import query as query_module
from hivebus.projections.client import query
from hivebus.projections.guard import Checked
from hivebus.projections.runner import Projector
from hivebus.schemas import Event
from hivebus.schemas.data import Reading
from tests.integration.test_query import bus, projector, raw_request

pytestmark = pytest.mark.integration

__all__ = ["bus", "projector"]  # fixtures, used by name

CANARY = "CANARY_c0ffee_5b1e"


def attacks(files: Path) -> list[tuple[str, str, str]]:
    """(sql, what the guard names, what the engine or the database names with the guard off)."""
    canary, out = files / "canary.csv", files / "out.csv"
    disabled = "file system operations are disabled"
    read_only = "read-only mode"
    return [
        # reading files
        (f"SELECT * FROM read_csv('{canary}')", "read_csv", disabled),
        (f"SELECT * FROM read_csv_auto('{canary}')", "read_csv_auto", disabled),
        (f"SELECT * FROM read_parquet('{canary}')", "read_parquet", disabled),
        (f"SELECT * FROM read_json('{canary}')", "read_json", disabled),
        (f"SELECT * FROM read_json_auto('{canary}')", "read_json_auto", disabled),
        (f"SELECT * FROM read_text('{canary}')", "read_text", disabled),
        (f"SELECT * FROM read_blob('{canary}')", "read_blob", disabled),
        (f"SELECT * FROM glob('{files}/*')", "glob", disabled),
        (f"SELECT * FROM sniff_csv('{canary}')", "sniff_csv", disabled),
        (f"SELECT * FROM parquet_metadata('{canary}')", "parquet_metadata", disabled),
        (f"SELECT * FROM '{canary}'", "cannot read files", disabled),
        (f"SELECT count(*) FROM readings WHERE name IN (SELECT * FROM read_csv('{canary}'))", "read_csv", disabled),
        (f"DESCRIBE SELECT * FROM read_text('{canary}')", "read_text", disabled),
        # writing files, other databases, extensions
        (f"COPY readings TO '{out}'", "COPY", "COPY statements are refused"),
        (f"COPY (SELECT 1) TO '{out}' (FORMAT parquet)", "COPY", "COPY statements are refused"),
        (f"COPY nodes FROM '{canary}'", "COPY", "COPY statements are refused"),
        (f"ATTACH '{files}/other.duckdb' AS other", "ATTACH", "ATTACH statements are refused"),
        ("ATTACH ':memory:' AS scratch", "ATTACH", "ATTACH statements are refused"),
        ("DETACH projector", "DETACH", "DETACH statements are refused"),
        (f"EXPORT DATABASE '{files}/export'", "EXPORT", "EXPORT statements are refused"),
        (f"IMPORT DATABASE '{files}'", "PRAGMA", "PRAGMA statements are refused"),
        ("INSTALL httpfs", "LOAD", "LOAD statements are refused"),
        ("LOAD httpfs", "LOAD", "LOAD statements are refused"),
        # settings
        ("SET enable_external_access = true", "SET", "SET statements are refused"),
        ("SET lock_configuration = false", "SET", "SET statements are refused"),
        ("SET threads = 1", "SET", "SET statements are refused"),
        ("RESET memory_limit", "SET", "SET statements are refused"),
        ("PRAGMA threads = 1", "SET", "SET statements are refused"),  # DuckDB reads it as a SET
        ("PRAGMA enable_profiling", "PRAGMA", "PRAGMA statements are refused"),
        ("SET VARIABLE v = 1", "SET", "SET statements are refused"),
        # writing the views
        ("CREATE TABLE x AS SELECT 1", "CREATE", "CREATE statements are refused"),
        ("CREATE TEMP TABLE x AS SELECT 1", "CREATE", "CREATE statements are refused"),
        ("CREATE OR REPLACE VIEW nodes AS SELECT 1 AS x", "CREATE", "CREATE statements are refused"),
        ("INSERT INTO nodes (node_id, status, updated_at, last_seq) VALUES ('x', 'online', now(), 0)", "INSERT",
         "INSERT statements are refused"),
        ("UPDATE readings SET value = 0", "UPDATE", "UPDATE statements are refused"),
        ("DELETE FROM readings", "DELETE", "DELETE statements are refused"),
        ("TRUNCATE readings", "DELETE", "DELETE statements are refused"),
        ("DROP TABLE readings", "DROP", "DROP statements are refused"),
        ("ALTER TABLE readings RENAME TO r2", "ALTER", "ALTER statements are refused"),
        ("UPDATE projector.checkpoints SET seq = 0", "UPDATE", "UPDATE statements are refused"),
        ("CALL checkpoint()", "CALL", "CALL statements are refused"),
        ("CHECKPOINT", "CALL", "CALL statements are refused"),
        ("VACUUM", "VACUUM", "VACUUM statements are refused"),
        ("BEGIN TRANSACTION", "TRANSACTION", "TRANSACTION statements are refused"),
        # a write hidden in a read, or after one
        ("WITH gone AS (DELETE FROM readings RETURNING *) SELECT count(*) FROM gone", "DELETE", read_only),
        ("EXPLAIN ANALYZE DELETE FROM readings", "DELETE", read_only),
        ("EXPLAIN ANALYZE WITH n AS (INSERT INTO projector.checkpoints VALUES ('X', 1) RETURNING *) SELECT 1",
         "INSERT", read_only),
        ("SELECT count(*) FROM readings; DROP TABLE readings", "2 statements", "2 statements"),
        ("SELECT 1; COMMIT; DELETE FROM readings", "3 statements", "3 statements"),
        ("SELECT ';'; ATTACH ':memory:' AS m", "2 statements", "2 statements"),
        # the environment
        ("SELECT getenv('HOME')", "getenv", "getenv does not exist"),
    ]  # fmt: skip


GUARD_ONLY = [
    # The database would run these (harmless to the views, but not a query's business):
    # settings carry paths and could carry credentials; checkpoint() writes the file.
    ("SELECT current_setting('temp_directory')", "current_setting"),
    ("SELECT * FROM duckdb_settings()", "duckdb_settings"),
    ("SELECT * FROM checkpoint()", "checkpoint"),
    ("SELECT * FROM truncate_duckdb_logs()", "truncate_duckdb_logs"),
    ("SELECT * FROM query_table('readings')", "query_table"),
]


def lax_check(sql: str) -> Checked:
    """The guard switched off: every text passes as one read."""
    return Checked(sql.strip().rstrip(";"), "explain" if sql.lstrip().lower().startswith("explain") else "select")


class World:
    """What a query must never change: the views, the settings, the attached databases, the files."""

    def __init__(self, projector: Projector, files: Path) -> None:
        self.projector = projector
        self.files = files

    def snapshot(self) -> dict[str, Any]:
        cursor = self.projector._cursor()
        try:
            tables = cursor.execute(
                "SELECT schema_name, table_name FROM duckdb_tables() WHERE NOT temporary ORDER BY ALL"
            ).fetchall()
            content = {
                f"{schema}.{table}": cursor.execute(
                    f"SELECT count(*), md5(coalesce(string_agg(t::VARCHAR, '|' ORDER BY t::VARCHAR), '')) "
                    f'FROM "{schema}"."{table}" t'
                ).fetchall()
                for schema, table in tables
            }
            return {
                "views": content,
                "catalog": cursor.execute("SELECT database_name, schema_name, table_name FROM duckdb_tables() "
                                          "ORDER BY ALL").fetchall(),
                "settings": cursor.execute("SELECT name, value FROM duckdb_settings() ORDER BY 1").fetchall(),
                "databases": cursor.execute("SELECT database_name FROM duckdb_databases() ORDER BY 1").fetchall(),
                "files": sorted(str(p.relative_to(self.files)) for p in self.files.rglob("*")),
            }  # fmt: skip
        finally:
            cursor.close()


@pytest.fixture
async def world(projector: Projector, tmp_path: Path) -> AsyncIterator[World]:
    files = tmp_path / "files"
    files.mkdir()
    (files / "canary.csv").write_text(f"secret\n{CANARY}\n")
    yield World(projector, files)


async def refused_everywhere(bus: Bus, world: World, expected: list[tuple[str, str, str]], *, guard: bool) -> None:
    before = world.snapshot()
    for sql, by_guard, by_database in expected:
        reply = await raw_request(bus, {"sql": sql})
        named = by_guard if guard else by_database
        assert "error" in reply and "rows" not in reply, (sql, reply)
        assert named in reply["error"], (sql, named, reply["error"])
        kind = "QueryError" if named == "getenv does not exist" else "QueryRefused"
        assert reply["kind"] == kind, (sql, reply)
        assert CANARY not in json.dumps(reply)
    assert world.snapshot() == before, "a refused query changed something"
    assert (await query(bus, "SELECT count(*) FROM readings")).rows == [[2000]]  # still answering


async def test_the_service_refuses_every_attack_and_names_it(bus: Bus, world: World) -> None:
    await refused_everywhere(bus, world, attacks(world.files), guard=True)
    for sql, named in GUARD_ONLY:
        reply = await raw_request(bus, {"sql": sql})
        assert reply.get("kind") == "QueryRefused" and named in reply["error"], (sql, reply)


async def test_with_the_guard_off_the_engine_and_the_database_still_refuse(
    bus: Bus, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(query_module, "check_sql", lax_check)
    assert (await raw_request(bus, {"sql": "SELECT * FROM checkpoint()"})).get("rows") == []  # the guard is off
    await refused_everywhere(bus, world, attacks(world.files), guard=False)


async def test_after_the_refusals_the_projector_still_projects(bus: Bus, world: World,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(query_module, "check_sql", lax_check)
    for sql, _, _ in attacks(world.files):
        await raw_request(bus, {"sql": sql})
    monkeypatch.undo()
    event = Event.new(Reading(name="env.after", value=1.5, timestamp=1_740_000_000_000_000_000),
                      source="node/W777", subject="W777")
    seq = await bus.publish(event)
    result = await query(bus, "SELECT value FROM readings WHERE name = 'env.after'", min_seq={DATA: seq})
    assert result.rows == [[1.5]]
