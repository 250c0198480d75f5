"""Replay: deterministic rebuilds (guarantee 6), blue/green swaps under queries, automatic
rebuilds of views whose version changed, as-of snapshots, and ``hivebus replay``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from hivebus.bus.client import Bus
from hivebus.bus.publisher import Outgoing
from hivebus.bus.streams import DATA, EVENTS
from hivebus.errors import StoreBusy
from hivebus.projections.client import query
from hivebus.projections.duck import connect
from hivebus.projections.query import QueryEngine
from hivebus.projections.results import json_rows
from hivebus.projections.runner import running
from hivebus.projections.views import all_views
from hivebus.projections.views.base import Table
from hivebus.projections.views.nodes import NodesView
from hivebus.projections.views.readings import ReadingsView
from hivebus.replay.build import Build, stream_ends
from hivebus.replay.offline import as_of, rebuild_file
from hivebus.replay.synthetic import history

pytestmark = pytest.mark.integration

HIVEBUS = [sys.executable, "-c", "from hivebus.cli import main; main()"]
FIXED_QUERIES = [
    "SELECT * FROM events ORDER BY seq",
    "SELECT * FROM readings ORDER BY seq",
    "SELECT name, count(*), min(value), max(value), min(timestamp), max(timestamp) FROM readings GROUP BY name ORDER BY name",
    "SELECT * FROM bundles ORDER BY bundle_id",
    "SELECT * FROM bundle_permissions ORDER BY ALL",
    "SELECT * FROM profiles ORDER BY ALL",
    "SELECT * FROM profile_runs ORDER BY run_id",
    "SELECT * FROM jobs ORDER BY job_id",
    "SELECT * FROM assignments ORDER BY job_id, node, plugin",
    "SELECT * FROM nodes ORDER BY node_id",
    "SELECT * FROM node_sensors ORDER BY node, sensor",
    "SELECT * FROM plugin_runs ORDER BY run_id",
    "SELECT * FROM triggers ORDER BY seq",
    "SELECT stream, seq, subject, consumer, reason, field, payload FROM dead_letters ORDER BY ALL",
    "SELECT * FROM projector.checkpoints ORDER BY stream",
]


@pytest.fixture
async def bus(nats_server: Any) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_server.url, connect_timeout=5)
    await b.ensure_streams()
    yield b
    await b.close()


async def results_hash(db: Path) -> str:
    """The hash of the fixed queries' results, as the query service would serialize them."""
    con = connect(db, read_only=True)
    engine = QueryEngine(con.cursor, workers=1)
    digest = hashlib.sha256()
    try:
        for sql in FIXED_QUERIES:
            columns, types, rows = json_rows((await engine.run(sql, limit=1_000_000)).table)
            digest.update(json.dumps([sql, columns, types, rows]).encode())
    finally:
        engine.close()
        con.close()
    return digest.hexdigest()


async def publish_with_junk(bus: Bus, events: list[Any]) -> None:
    await bus.publish_many(events[: len(events) // 2])
    await bus.publish_raw_many([Outgoing("evt.junk.x", b"[1, 2", "junk-a"), Outgoing("data.W001.a", b"{}", "junk-b")])
    await bus.publish_many(events[len(events) // 2 :])


async def test_a_rebuild_from_the_log_gives_byte_identical_query_results(bus: Bus, tmp_path: Path) -> None:
    live = tmp_path / "live.duckdb"
    await publish_with_junk(bus, history(nodes=3, readings=3000, seed=3))
    async with running(bus, live):
        await query(bus, "SELECT count(*) FROM dead_letters", min_seq={**await stream_ends(bus), "DEADLETTERS": 2})
    con = connect(live, read_only=True)
    positions = dict(con.execute("SELECT stream, seq FROM projector.checkpoints").fetchall())
    con.close()
    assert positions["DEADLETTERS"] == 2
    build = Build(bus, tmp_path / "rebuilt.duckdb", all_views())
    await build.run_to(positions)
    await build.close(keep=True)
    assert await results_hash(live) == await results_hash(tmp_path / "rebuilt.duckdb")


async def test_blue_green_rebuilds_keep_answering_queries(bus: Bus, tmp_path: Path) -> None:
    await bus.publish_many(history(nodes=3, readings=3000, seed=4))
    async with running(bus, tmp_path / "views.duckdb") as projector:
        assert await projector.wait_for(await stream_ends(bus), 30)
        answers: list[int] = []
        errors: list[BaseException] = []
        done = asyncio.Event()

        async def keep_asking() -> None:
            while not done.is_set():
                try:
                    answers.append((await query(bus, "SELECT count(*) FROM readings", timeout=10)).rows[0][0])
                except Exception as exc:
                    errors.append(exc)
                await asyncio.sleep(0.01)

        asker = asyncio.create_task(keep_asking())
        rebuild = projector.start_rebuild(None)
        await bus.publish_many(history(nodes=2, readings=500, seed=5, first_node=10))  # while it rebuilds
        report = await rebuild
        subset = await projector.start_rebuild(["nodes", "readings"])
        done.set()
        await asker
        assert not errors and len(answers) > 5
        assert answers == sorted(answers)  # never back in time, not even across the swap
        assert await projector.wait_for(await stream_ends(bus), 30)
        assert (await query(bus, "SELECT count(*) FROM readings")).rows == [[3500]]
        assert (await query(bus, "SELECT count(*) FROM nodes")).rows == [[5]]
        assert report["messages"] > 3000 and subset["views"] == ["nodes", "readings"]
        assert not list(tmp_path.glob("*.rebuild-*"))  # the build files are gone


class NodesWithNote(NodesView):
    """NodesView, one version on: one more column."""

    version = NodesView.version + 1
    table: ClassVar[Table] = Table(
        "nodes", NodesView.table.ddl.replace("node_id VARCHAR NOT NULL,", "node_id VARCHAR NOT NULL, note VARCHAR,")
    )
    tables = (table,)


async def test_a_view_whose_version_changed_is_rebuilt_at_start(bus: Bus, tmp_path: Path) -> None:
    db = tmp_path / "views.duckdb"
    await bus.publish_many(history(nodes=3, readings=1000, seed=6))
    async with running(bus, db) as projector:
        assert await projector.wait_for(await stream_ends(bus), 30)
    views = [NodesWithNote() if v.name == "nodes" else v for v in all_views()]
    async with running(bus, db, views=views) as projector:
        assert projector.store is not None and [v.name for v in projector.store.stale] == ["nodes"]
        report = await projector._rebuild  # type: ignore[misc]
        assert report["views"] == ["nodes"]
        versions = dict((await query(bus, "SELECT name, version FROM projector.views")).rows)
        assert versions["nodes"] == NodesView.version + 1 and versions["readings"] == ReadingsView.version
        rows = await query(bus, "SELECT node_id, note, status FROM nodes ORDER BY node_id")
        assert rows.rows == [["W001", None, "online"], ["W002", None, "online"], ["W003", None, "online"]]
        assert (await query(bus, "SELECT count(*) FROM readings")).rows == [[1000]]


async def test_as_of_a_sequence_or_a_time_builds_the_past_into_another_file(bus: Bus, tmp_path: Path) -> None:
    first = history(nodes=2, readings=400, seed=7)
    await bus.publish_many(first)
    events_then = (await stream_ends(bus))[EVENTS]
    await asyncio.sleep(0.05)
    moment = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await bus.publish_many(history(nodes=2, readings=300, seed=8, first_node=5))
    at_time = await as_of(bus, tmp_path / "then.duckdb", when=moment)
    at_seq = await as_of(bus, tmp_path / "seq.duckdb", to_seq=events_then - 5, names=["events"])
    con = connect(tmp_path / "then.duckdb", read_only=True)
    assert con.execute("SELECT count(*) FROM readings").fetchone() == (400,)
    assert con.execute("SELECT max(seq) FROM events").fetchone() == (events_then,)
    assert at_time.positions[DATA] == 400
    con.close()
    con = connect(tmp_path / "seq.duckdb", read_only=True)
    assert con.execute("SELECT count(*), max(seq) FROM events").fetchone() == (events_then - 5, events_then - 5)
    assert at_seq.views == ["events"]
    con.close()


async def test_an_offline_rebuild_refuses_a_file_a_projector_holds(bus: Bus, tmp_path: Path) -> None:
    db = tmp_path / "views.duckdb"
    await bus.publish_many(history(nodes=2, readings=200, seed=9))
    async with running(bus, db) as projector:
        assert await projector.wait_for(await stream_ends(bus), 30)
        with pytest.raises(StoreBusy, match="in use"):
            await rebuild_file(bus, db)
    before = await results_hash(db)
    report = await rebuild_file(bus, db, ["nodes"])
    assert report.views == ["nodes"] and await results_hash(db) == before
    report = await rebuild_file(bus, db)
    assert len(report.views) == len(all_views()) and await results_hash(db) == before


async def run_cli(*args: str, url: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *HIVEBUS, *args, env={"HIVEBUS_NATS_URL": url, "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, out.decode(), err.decode()


async def test_the_replay_commands(bus: Bus, tmp_path: Path, nats_server: Any) -> None:
    await bus.publish_many(history(nodes=2, readings=300, seed=10))
    db = tmp_path / "views.duckdb"
    async with running(bus, db) as projector:
        assert await projector.wait_for(await stream_ends(bus), 30)
        code, out, err = await run_cli("replay", "rebuild", "--view", "nodes", url=nats_server.url)
        assert code == 0, err
        assert "rebuilt nodes" in out and "EVENTS" in err  # the progress bars
        code, _, err = await run_cli("replay", "rebuild", "--view", "nope", url=nats_server.url)
        assert code == 1 and "unknown view 'nope'" in err
    code, out, err = await run_cli("replay", "rebuild", "--db", str(db), url=nats_server.url)
    assert code == 0 and "rebuilt events" in out, err
    then = tmp_path / "then.duckdb"
    code, out, err = await run_cli("replay", "as-of", "--to-seq", "10", "--out", str(then), url=nats_server.url)
    assert code == 0 and str(then) in out, err
    code, out, err = await run_cli("query", "--db", str(then), "-f", "json", "SELECT max(seq) AS s FROM events",
                                   url=nats_server.url)
    assert json.loads(out) == [{"s": 10}], err
    code, _, err = await run_cli("replay", "as-of", "--as-of", "yesterday", "--out", str(then), url=nats_server.url)
    assert code == 1 and "not an ISO 8601 time" in err
