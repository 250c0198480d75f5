"""``hivebus replay what-if`` on histories stored in a real nats-server: the decisions land
in a DuckDB file, nothing is published, and the CLI prints the comparison."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from hivebus.bus.client import Bus
from hivebus.replay.whatif_run import run_what_if, write_tables
from tests.unit.test_whatif import contested_history

pytestmark = pytest.mark.integration

HIVEBUS = [sys.executable, "-c", "from hivebus.cli import main; main()"]


@pytest.fixture
async def bus(nats_server: Any) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_server.url, connect_timeout=5)
    await b.ensure_streams()
    yield b
    await b.close()


async def hivebus(url: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *HIVEBUS, *args, env={"HIVEBUS_NATS_URL": url, "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    return process.returncode or 0, stdout.decode(), stderr.decode()


async def test_score_over_a_fit_history_places_differently_and_publishes_nothing(
    bus: Bus, nats_server: Any, tmp_path: Path
) -> None:
    await bus.publish_many(contested_history().events)
    before = await bus.last_seq("EVENTS")
    out = tmp_path / "what-if.duckdb"
    code, stdout, stderr = await hivebus(nats_server.url, "replay", "what-if", "--policy", "score", "--out", str(out))
    assert code == 0, stderr
    assert "2 submissions, 2 decided differently" in stdout, stdout
    assert "1 caused" in stdout and "placements that differ" in stdout, stdout
    assert await bus.last_seq("EVENTS") == before  # a what-if publishes nothing
    con = duckdb.connect(str(out), read_only=True)
    rows = con.execute(
        "select job_id, actual_decision, actual_nodes, whatif_decision, whatif_nodes, whatif_fit_refused "
        "from whatif_decisions order by seq"
    ).fetchall()
    assert rows == [
        ("big", "scheduled", ["W001"], "scheduled", ["W002"], False),
        ("pinned", "scheduled", ["W002"], "rejected", [], True),
    ]
    loads = con.execute("select node, world, cpu from whatif_node_load order by node, world").fetchall()
    assert loads == [("W001", "actual", 3.0), ("W001", "whatif", 0.0), ("W002", "actual", 6.0 - 3.0),
                     ("W002", "whatif", 3.0)]
    (caused,) = con.execute("select caused from whatif_summary").fetchone() or (None,)
    assert caused == 1


async def test_the_window_limits_what_is_decided_again(bus: Bus) -> None:
    events = contested_history().events
    await bus.publish_many(events)
    pinned_at = next(e.time for e in events if e.type == "ses.job.submitted" and e.data.job_id == "pinned")
    # both submissions folded as recorded: big stays on W001, so pinned fits on W002 again
    engine, span = await run_what_if(bus, "score", since=pinned_at)
    assert [r.job_id for r in engine.rows()] == ["pinned"]
    assert not engine.rows()[0].differs and span.first_seq > 1
    engine, _ = await run_what_if(bus, "score", until=pinned_at - timedelta(milliseconds=1))
    assert [r.job_id for r in engine.rows()] == ["big"]


async def test_round_robin_reports_progress_to_the_end_and_agrees_here(bus: Bus, tmp_path: Path) -> None:
    await bus.publish_many(contested_history().events)
    seen: list[tuple[int, int]] = []
    engine, span = await run_what_if(bus, "roundrobin", progress=lambda n, total: seen.append((n, total)))
    end = await bus.last_seq("EVENTS")
    assert seen[-1] == (end, end) and span.last_seq == end and span.first_seq == 1
    # no cursor yet: round-robin starts at W001, as fit did; pinned names W002
    assert [(r.job_id, sorted(r.whatif.nodes), r.differs) for r in engine.rows()] == [
        ("big", ["W001"], False), ("pinned", ["W002"], False)]
    write_tables(engine, span, tmp_path / "w.duckdb")
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    assert con.execute("select count(*) from whatif_decisions where whatif_policy = 'roundrobin'").fetchone() == (2,)


async def test_a_bad_policy_is_one_line_naming_the_policies(nats_server: Any) -> None:
    code, _, stderr = await hivebus(nats_server.url, "replay", "what-if", "--policy", "best")
    assert code == 1 and "unknown placement policy 'best'" in stderr and "fit, score, roundrobin" in stderr
    assert "Traceback" not in stderr
