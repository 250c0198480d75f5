"""``hivebus.data.query`` (sage-data-client style) through the hub and on a DuckDB file."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import warnings
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import hivebus.data
from hivebus.bus.client import Bus
from hivebus.errors import QueryError
from hivebus.projections.runner import Projector, running
from hivebus.replay.build import stream_ends
from hivebus.schemas import Event
from hivebus.schemas.data import Reading

pytestmark = pytest.mark.integration

NOW_NS = time.time_ns()
MINUTE = 60 * 10**9
HIVEBUS = [sys.executable, "-c", "from hivebus.cli import main; main()"]


def reading(node: str, name: str, minutes_ago: float, value: Any, n: int, **meta: str) -> Event:
    return Event.new(
        Reading(name=name, value=value, timestamp=NOW_NS - int(minutes_ago * MINUTE) + n,
                meta={"vsn": node, "sensor": "bme680", **meta}),
        source=f"node/{node}", subject=node, nodeseq=n,
    )


def fleet() -> list[Event]:
    """Two nodes x (temperature, humidity) every 10 min for 3 h, plus a label and a big counter."""
    events, n = [], 0
    for node in ("W001", "W002"):
        for minutes in range(0, 180, 10):
            for name in ("env.temperature", "env.relative_humidity"):
                n += 1
                events.append(reading(node, name, minutes + 1, float(minutes), n))
        n += 1
        events.append(reading(node, "cam.label", 5, "bird", n))
        n += 1
        events.append(reading(node, "sys.counter", 5, 2**60 + 1, n, task="counter"))
    return events


@pytest.fixture
async def hub(nats_server: Any, tmp_path: Path) -> AsyncIterator[tuple[Bus, Projector, Path]]:
    bus = await Bus.connect(nats_server.url, connect_timeout=5)
    await bus.ensure_streams()
    await bus.publish_many(fleet())
    db = tmp_path / "views.duckdb"
    async with running(bus, db) as projector:
        assert await projector.wait_for(await stream_ends(bus), 30)
        yield bus, projector, db
    await bus.close()


def query_hub(url: str, *args: Any, **kwargs: Any) -> pd.DataFrame:
    return hivebus.data.query(*args, hub=url, **kwargs)


async def test_the_last_hour_of_one_name_as_sage_data_client_returns_it(hub: Any, nats_server: Any) -> None:
    frame = await asyncio.to_thread(query_hub, nats_server.url, "-1h", filter={"name": "env.temperature"})
    assert list(frame.columns[:3]) == ["timestamp", "name", "value"]
    assert {"meta.vsn", "meta.sensor", "meta.node"} <= set(frame.columns)
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert len(frame) == 2 * 6 and set(frame["name"]) == {"env.temperature"}  # minutes 1, 11, ..., 51
    for _, series in frame.groupby("meta.vsn"):  # grouped by series, time-ordered within
        assert series["timestamp"].is_monotonic_increasing
    assert list(frame["meta.vsn"]) == sorted(frame["meta.vsn"])
    assert set(frame["meta.vsn"]) == {"W001", "W002"} and set(frame["meta.node"]) == {"W001", "W002"}
    assert frame["timestamp"].min() >= pd.Timestamp(NOW_NS - 60 * MINUTE, tz="UTC")
    expected = sorted(e.data.timestamp for e in fleet()
                      if e.data.name == "env.temperature" and e.data.timestamp > NOW_NS - 55 * MINUTE)
    assert sorted(t.value for t in frame["timestamp"]) == expected  # to the nanosecond
    assert frame["value"].dtype == float


async def test_regex_filters_alternatives_and_meta_keys(hub: Any, nats_server: Any) -> None:
    url = nats_server.url
    both = await asyncio.to_thread(query_hub, url, "-2h", filter={"name": "env.*", "vsn": "W002"})
    assert set(both["name"]) == {"env.temperature", "env.relative_humidity"} and set(both["meta.vsn"]) == {"W002"}
    alternatives = await asyncio.to_thread(query_hub, url, "-15m", filter={"name": "cam.label|sys.*"})
    assert sorted(set(alternatives["name"])) == ["cam.label", "sys.counter"] and len(alternatives) == 4
    # Beehive: a value with * or | is an anchored regex ("W0*1" is W, zeros, 1), not a glob
    by_node = await asyncio.to_thread(query_hub, url, "-15m", filter={"node": "W0*1", "task": "count.*"})
    assert list(by_node["name"]) == ["sys.counter"] and list(by_node["meta.task"]) == ["counter"]
    glob = await asyncio.to_thread(query_hub, url, "-15m", filter={"task": "count*"})
    assert glob.empty  # "coun" then t's: "counter" does not match
    literal = await asyncio.to_thread(query_hub, url, "-4h", filter={"name": "env_temperature"})
    assert literal.empty  # no regex: '_' and '.' are literal


async def test_mixed_values_keep_strings_and_every_digit(hub: Any, nats_server: Any) -> None:
    frame = await asyncio.to_thread(query_hub, nats_server.url, "-15m", filter={"vsn": "W001", "name": "cam.*|sys.*"})
    values = dict(zip(frame["name"], frame["value"], strict=True))
    assert values == {"cam.label": "bird", "sys.counter": 2**60 + 1}


async def test_head_and_tail_are_per_series(hub: Any, nats_server: Any) -> None:
    url = nats_server.url
    tail = await asyncio.to_thread(query_hub, url, "-4h", filter={"name": "env.*"}, tail=2)
    assert len(tail) == 4 * 2  # 2 nodes x 2 names
    assert set(tail.groupby(["name", "meta.vsn"])["value"].max()) == {10.0}  # minutes 1 and 11 ago
    head = await asyncio.to_thread(query_hub, url, "-4h", filter={"name": "env.*"}, head=1)
    assert len(head) == 4 and set(head["value"]) == {170.0}
    with pytest.raises(ValueError, match="only one of"):
        hivebus.data.query("-1h", head=1, tail=1, hub=url)


async def test_absolute_times_an_end_and_an_empty_result(hub: Any, nats_server: Any) -> None:
    start = datetime.fromtimestamp(NOW_NS / 1e9, UTC) - timedelta(minutes=35)
    end = (start + timedelta(minutes=20)).isoformat().replace("+00:00", "Z")
    frame = await asyncio.to_thread(query_hub, nats_server.url, start.isoformat(), end, filter={"name": "env.temperature"})
    assert sorted(set(frame["value"])) == [20.0, 30.0]  # 31 and 21 minutes ago
    empty = await asyncio.to_thread(query_hub, nats_server.url, "-1h", filter={"name": "nothing.here"})
    assert list(empty.columns) == ["timestamp", "name", "value"] and empty.empty
    with pytest.raises(QueryError, match="not a time"):
        hivebus.data.query("yesterday", hub=nats_server.url)


async def test_the_same_frame_from_a_file(hub: Any, nats_server: Any, tmp_path: Path) -> None:
    _, projector, _ = hub
    through_hub = await asyncio.to_thread(query_hub, nats_server.url, "-4h", filter={"name": "env.*"})
    copy = tmp_path / "copy.duckdb"
    await asyncio.to_thread(_copy_views, projector, copy)
    from_file = await asyncio.to_thread(hivebus.data.query, "-4h", filter={"name": "env.*"}, db=copy)
    pd.testing.assert_frame_equal(through_hub, from_file)
    with pytest.raises(QueryError, match="does not exist"):
        hivebus.data.query("-1h", db=tmp_path / "missing.duckdb")


def _copy_views(projector: Projector, path: Path) -> None:
    """A copy of the live readings, as an analyst would take one for offline work."""
    import duckdb

    con = duckdb.connect(str(path))
    con.register("live", projector._cursor().sql("SELECT * FROM readings").to_arrow_table())
    con.execute("CREATE TABLE readings AS SELECT * FROM live")
    con.close()


def test_relative_and_absolute_times_resolve_to_nanoseconds() -> None:
    now = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    now_ns = 1_746_100_800 * 10**9
    assert hivebus.data.resolve_time("-1h", now) == now_ns - 3600 * 10**9
    assert hivebus.data.resolve_time("-30m", now) == now_ns - 1800 * 10**9
    assert hivebus.data.resolve_time("-2d", now) == now_ns - 2 * 86400 * 10**9
    assert hivebus.data.resolve_time("2025-05-01T12:00:00.000000001Z", now) == now_ns + 1
    assert hivebus.data.resolve_time("2025-05-01T12:00:00", now) == now_ns  # no zone: UTC
    assert hivebus.data.resolve_time("2025-05-01T14:00:00+02:00", now) == now_ns


@pytest.mark.parametrize(("text", "days"), [("-1d", 1), ("-2d12h", 2.5), ("-3 d", 3), ("-1days", 1), ("+1d", -1)])
def test_days_written_d_resolve_without_the_pandas_deprecation(text: str, days: float) -> None:
    """pandas 3 warns on the unit "d" (pandas 4 drops it); users write "-1d" for
    sage-data-client, so hivebus reads it as "D"."""
    now = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = hivebus.data.resolve_time(text, now)
    assert got == 1_746_100_800 * 10**9 - int(days * 86400 * 10**9)


async def test_the_data_query_command(hub: Any, nats_server: Any) -> None:
    process = await asyncio.create_subprocess_exec(
        *HIVEBUS, "data", "query", "--start", "-1h", "--filter", "name=env.*", "--filter", "vsn=W001",
        "--tail", "1", "--format", "json",
        env={"HIVEBUS_NATS_URL": nats_server.url, "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    records = json.loads(out)
    assert sorted(r["name"] for r in records) == ["env.relative_humidity", "env.temperature"]
    assert all(r["meta.vsn"] == "W001" and r["timestamp"].endswith("Z") and r["value"] == 0.0 for r in records)
