"""The ``hivebus.query`` service and ``hivebus query``: read-only SQL with limits, over NATS."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hivebus.bus.client import Bus
from hivebus.bus.streams import DATA, EVENTS
from hivebus.errors import QueryError, QueryRefused, QueryTimeout, RequestTimeout
from hivebus.projections import query as query_module
from hivebus.projections.client import query
from hivebus.projections.guard import Checked
from hivebus.projections.query import QueryEngine
from hivebus.projections.runner import Projector, running
from hivebus.projections.service import QUERY_SUBJECT
from hivebus.replay.build import stream_ends
from hivebus.replay.synthetic import history
from hivebus.schemas import Event
from hivebus.schemas.data import Reading
from tests.unit.test_sql_guard import REFUSED

pytestmark = pytest.mark.integration

SLOW_SQL = "SELECT count(*) FROM range(100000000000) a(x), range(10) b(y) WHERE x * y % 7 = 3"
HIVEBUS = [sys.executable, "-c", "from hivebus.cli import main; main()"]


@pytest.fixture
async def bus(nats_server: Any) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_server.url, connect_timeout=5)
    await b.ensure_streams()
    yield b
    await b.close()


@pytest.fixture
async def projector(bus: Bus, tmp_path: Path) -> AsyncIterator[Projector]:
    await bus.publish_many(history(nodes=3, readings=2000))
    async with running(bus, tmp_path / "views.duckdb") as p:
        assert await p.wait_for(await stream_ends(bus), 30)
        yield p


async def raw_request(bus: Bus, body: Any, timeout: float = 10.0) -> dict[str, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return json.loads(await bus.request(QUERY_SUBJECT, data, timeout=timeout))  # type: ignore[no-any-return]


async def cli(*args: str, url: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *HIVEBUS, *args, env={"HIVEBUS_NATS_URL": url, "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_the_contract_a_plain_json_request_and_reply(bus: Bus, projector: Projector) -> None:
    reply = await raw_request(bus, {
        "sql": "SELECT node_id, status, last_heartbeat FROM nodes WHERE node_id = ? ORDER BY node_id",
        "params": ["W001"], "min_seq": 1, "limit": None, "timeout": None, "format": "json",
    })
    assert reply["columns"] == ["node_id", "status", "last_heartbeat"]
    assert reply["rows"][0][:2] == ["W001", "online"] and reply["rows"][0][2].endswith("Z")
    assert reply["positions"] == {**await stream_ends(bus), "DEADLETTERS": 0} and reply["truncated"] is False
    assert reply["types"][2].startswith("timestamp")


async def test_every_non_read_statement_is_refused_and_nothing_changes(bus: Bus, projector: Projector) -> None:
    before = (await query(bus, "SELECT count(*) FROM readings")).rows
    for sql, named in REFUSED:
        reply = await raw_request(bus, {"sql": sql})
        assert reply.get("kind") == "QueryRefused", (sql, reply)
        assert named in reply["error"], (sql, reply["error"])
    assert (await query(bus, "SELECT count(*) FROM readings")).rows == before
    tables = (await query(bus, "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'main'")).rows
    assert tables[0][0] >= 10
    with pytest.raises(QueryRefused, match="DROP"):
        await query(bus, "DROP TABLE readings")


async def test_the_database_itself_refuses_what_a_lax_guard_would_let_through(
    projector: Projector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Second line: the query cursors can neither write nor read files, whatever the guard says."""
    monkeypatch.setattr(query_module, "check_sql", lambda sql: Checked(sql, "explain"))
    engine = QueryEngine(projector._cursor, workers=1)
    try:
        for sql in ("SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM '/etc/hostname'",
                    "INSERT INTO nodes (node_id, status, updated_at, last_seq) VALUES ('x', 'online', now(), 0)",
                    "DELETE FROM readings", "SET enable_external_access = true", "ATTACH '/tmp/x.db' AS x",
                    "COPY nodes TO '/tmp/nodes.csv'", "INSTALL httpfs"):
            with pytest.raises(QueryError):
                await engine.run(sql)
        assert (await engine.run("SELECT count(*) FROM readings")).table.column(0).to_pylist() == [2000]
    finally:
        engine.close()


async def test_a_query_past_its_timeout_is_stopped_and_the_service_goes_on(bus: Bus, projector: Projector) -> None:
    slow = asyncio.create_task(query(bus, SLOW_SQL, timeout=2))
    started = time.monotonic()
    fast = await query(bus, "SELECT count(*) FROM nodes", timeout=5)  # answered while the slow one runs
    assert fast.rows == [[3]] and not slow.done()
    with pytest.raises(QueryTimeout, match="time limit"):
        await slow
    assert time.monotonic() - started < 30  # interrupted, not run to the end
    for _ in range(3):
        assert (await query(bus, "SELECT count(*) FROM jobs")).rows == [[2]]


async def test_min_seq_gives_read_your_writes_and_a_bound(bus: Bus, projector: Projector) -> None:
    event = Event.new(Reading(name="env.fresh", value=7.0, timestamp=1_740_000_000_000_000_000),
                      source="node/W777", subject="W777")
    seq = await bus.publish(event)
    result = await query(bus, "SELECT value FROM readings WHERE name = 'env.fresh'", min_seq={DATA: seq})
    assert result.rows == [[7.0]] and result.positions[DATA] >= seq
    with pytest.raises(QueryTimeout, match="did not reach EVENTS 99999"):
        await query(bus, "SELECT 1", min_seq=99999, timeout=1)
    with pytest.raises(QueryError, match="unknown stream"):
        await query(bus, "SELECT 1", min_seq={"NOPE": 1})


async def test_limits_truncation_and_results_larger_than_a_message(bus: Bus, projector: Projector) -> None:
    five = await query(bus, "SELECT * FROM readings ORDER BY seq", limit=5)
    assert len(five.rows) == 5 and five.truncated
    all_rows = await query(bus, "SELECT *, repeat('x', 600) AS pad FROM readings ORDER BY seq", limit=None)
    assert len(all_rows.rows) == 2000 and not all_rows.truncated  # > 1 MB, sent in chunks
    assert [r["seq"] for r in all_rows.records()] == list(range(1, 2001))
    plain = await raw_request(bus, {"sql": "SELECT *, repeat('x', 600) AS pad FROM readings ORDER BY seq"})
    assert plain["truncated"] and 0 < len(plain["rows"]) < 2000 and "chunked" in plain["note"]
    arrow = await query(bus, "SELECT timestamp, name, meta FROM readings ORDER BY seq", limit=None, format="arrow")
    table = arrow.to_arrow()
    assert table.num_rows == 2000 and str(table.schema.field("timestamp").type) == "timestamp[ns]"
    frame = arrow.to_pandas()
    assert str(frame["timestamp"].dtype).startswith("datetime64[ns")


async def test_bad_requests_and_bad_sql_get_clear_errors(bus: Bus, projector: Projector) -> None:
    assert (await raw_request(bus, b"not json"))["kind"] == "QueryError"
    assert "\"sql\" must be a string" in (await raw_request(bus, {"sql": 3}))["error"]
    with pytest.raises(QueryError, match="nope"):
        await query(bus, "SELECT * FROM nope")
    with pytest.raises(QueryError, match="syntax error"):
        await query(bus, "SELEC 1")


async def test_no_projector_is_a_clear_error(bus: Bus) -> None:
    with pytest.raises(RequestTimeout, match="nothing serves"):
        await query(bus, "SELECT 1", timeout=2)


async def test_the_cli_prints_json_csv_and_tables(bus: Bus, projector: Projector, nats_server: Any) -> None:
    code, out, err = await cli("query", "--format", "json", "SELECT node_id, status FROM nodes ORDER BY node_id",
                               url=nats_server.url)
    assert code == 0, err
    assert json.loads(out) == [{"node_id": f"W00{i}", "status": "online"} for i in (1, 2, 3)]
    code, out, _ = await cli("query", "-f", "csv", "--min-seq", f"{EVENTS}=1", "SELECT name, count(*) AS n FROM "
                             "readings GROUP BY name ORDER BY name", url=nats_server.url)
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0 and rows[0] == ["name", "n"] and sum(int(r[1]) for r in rows[1:]) == 2000
    code, out, err = await cli("query", "SELECT count(*) AS n FROM jobs", url=nats_server.url)
    assert code == 0 and "n" in out and "2" in out and "row(s)" in err
    code, out, err = await cli("query", "DELETE FROM readings", url=nats_server.url)
    assert code == 1 and out == "" and "DELETE statements are refused" in err and "Traceback" not in err


async def test_the_cli_queries_a_file_directly(bus: Bus, tmp_path: Path, nats_server: Any) -> None:
    await bus.publish_many(history(nodes=2, readings=100))
    db = tmp_path / "views.duckdb"
    async with running(bus, db) as p:
        assert await p.wait_for(await stream_ends(bus), 30)
    code, out, err = await cli("query", "--db", str(db), "-f", "json", "SELECT count(*) AS n FROM readings",
                               url=nats_server.url)
    assert code == 0 and json.loads(out) == [{"n": 100}], err
    code, _, err = await cli("query", "--db", str(db), "SELECT * FROM read_csv('/etc/passwd')", url=nats_server.url)
    assert code == 1 and "read_csv() is refused" in err
