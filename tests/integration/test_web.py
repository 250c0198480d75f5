"""``hivebus web`` as a user meets it: a real process on a free port, on a real nats-server.

The routes' answers come through the bus from real services: the projector's query service
runs here over a real DuckDB file, so ``/api/v1/sql`` goes HTTP -> web -> NATS -> DuckDB.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import httpx
import pytest

from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.projections.duck import connect
from hivebus.projections.query import QueryEngine
from hivebus.projections.service import QueryService

pytestmark = pytest.mark.integration


@dataclass
class WebProcess:
    url: str
    process: subprocess.Popen[str]


@contextlib.contextmanager
def web_process(hub: str, workdir: Path, *args: str) -> Iterator[WebProcess]:
    """``hivebus web --hub HUB --http-port 0``: its URL is the first line it prints."""
    env = {**os.environ, "HIVEBUS_DATA_DIR": str(workdir / ".hivebus"), "HIVEBUS_LOG_LEVEL": "warning"}
    env.pop("HIVEBUS_NATS_CREDENTIALS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "hivebus", "web", "--hub", hub, "--http-port", "0", *args],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 30)
        line = process.stdout.readline().strip() if ready and process.stdout else ""
        if not line.startswith("http://"):
            process.kill()
            raise AssertionError(f"hivebus web did not start: {line!r}\n{process.communicate(timeout=10)[1]}")
        yield WebProcess(line, process)
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            _, stderr = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate(timeout=5)
    assert "Traceback" not in stderr, stderr  # no request, good or bad, ends in one


@pytest.fixture
def web(nats_server: NatsServer, tmp_path: Path) -> Iterator[WebProcess]:
    with web_process(nats_server.url, tmp_path) as running:
        yield running


@contextlib.asynccontextmanager
async def query_service(url: str, db: Path) -> AsyncIterator[QueryService]:
    """The projector's query service, answering ``hivebus.query`` over ``db`` (read-only)."""
    con = connect(db, read_only=True)
    engine = QueryEngine(con.cursor, workers=2)
    async with await Bus.connect(url, name="test-query") as bus:
        service = QueryService(bus, engine)
        await service.start()
        try:
            yield service
        finally:
            await service.stop()
            engine.close()
            con.close()


@pytest.fixture
def nodes_db(tmp_path: Path) -> Path:
    path = tmp_path / "views.duckdb"
    con = duckdb.connect(str(path))
    con.execute("create table nodes (node_id varchar, status varchar)")
    con.execute("insert into nodes values ('W001', 'online'), ('W002', 'offline')")
    con.close()
    return path


def test_docs_serve_openapi_and_asyncapi(web: WebProcess) -> None:
    docs = httpx.get(f"{web.url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = httpx.get(f"{web.url}/openapi.json").json()
    assert {"/api/v1/query", "/api/v1/sql"} <= set(spec["paths"])
    assert httpx.get(f"{web.url}/asyncapi").status_code == 200


def test_errors_are_json_with_the_right_status(web: WebProcess) -> None:
    missing = httpx.get(f"{web.url}/api/v1/nothing")
    assert missing.status_code == 404 and set(missing.json()) == {"error", "hint"}
    not_json = httpx.post(f"{web.url}/api/v1/query", content=b"{start: -1h")
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
    refused = httpx.post(f"{web.url}/api/v1/sql", json={"sql": "drop table nodes"})
    assert refused.status_code == 403 and "DROP" in refused.json()["error"]
    files = httpx.post(f"{web.url}/api/v1/sql", json={"sql": "select * from read_csv('/etc/passwd')"})
    assert files.status_code == 403
    bad_limit = httpx.post(f"{web.url}/api/v1/sql", json={"sql": "select 1", "limit": -1})
    assert bad_limit.status_code == 400 and "limit" in bad_limit.json()["error"]
    huge = httpx.post(f"{web.url}/api/v1/query", content=b'{"start": "-1h", "x": "' + b"a" * 2_000_000 + b'"}')
    assert huge.status_code == 413 and "larger than" in huge.json()["error"]
    nobody = httpx.post(f"{web.url}/api/v1/sql", json={"sql": "select 1"}, timeout=30)
    assert nobody.status_code == 503 and "projector" in nobody.json()["hint"]


def test_a_chunked_body_past_the_limit_is_refused(web: WebProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"start": "-1h", "pad": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    response = httpx.post(f"{web.url}/api/v1/query", content=chunks())
    assert response.status_code == 413


async def test_sql_goes_through_the_query_service(nats_server: NatsServer, web: WebProcess, nodes_db: Path) -> None:
    async with query_service(nats_server.url, nodes_db), httpx.AsyncClient(base_url=web.url, timeout=30) as client:
        answer = await client.post("/api/v1/sql", json={"sql": "select node_id, status from nodes order by node_id"})
        assert answer.status_code == 200, answer.text
        doc = answer.json()
        assert doc["columns"] == ["node_id", "status"]
        assert doc["rows"] == [["W001", "online"], ["W002", "offline"]] and doc["truncated"] is False
        cut = (await client.post("/api/v1/sql", json={"sql": "select * from nodes", "limit": 1})).json()
        assert len(cut["rows"]) == 1 and cut["truncated"] is True
        params = await client.post("/api/v1/sql", json={"sql": "select status from nodes where node_id = ?",
                                                        "params": ["W002"]})
        assert params.json()["rows"] == [["offline"]]
        unknown = await client.post("/api/v1/sql", json={"sql": "select * from no_such_view"})
        assert unknown.status_code == 400 and "no_such_view" in unknown.json()["error"]
