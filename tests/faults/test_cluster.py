"""A 3-server cluster, streams with ``replicas=3``, losing the EVENTS stream leader under load.

The publisher (the control-plane workload, with readings) and a real projector process are
connected with all three URLs; the projector is started without ``HIVEBUS_REPLICAS`` and must
leave the streams replicated. The server leading the EVENTS stream is SIGKILLed mid-load:
publishing must go on (acks keep coming while it is down), and so must projecting; then it
is restarted and catches up its replicas. Finally every acknowledged event is stored exactly
once and every view equals a clean replay of the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from itertools import pairwise
from pathlib import Path

import pytest

from hivebus.bus.client import Bus
from hivebus.bus.cluster import NatsCluster
from hivebus.bus.streams import DATA, DEADLETTERS, EVENTS
from hivebus.config import Settings
from hivebus.errors import RequestTimeout
from hivebus.projections.runner import STATUS_SUBJECT
from hivebus.replay.build import stream_ends
from tests.faults.conftest import (
    Processes,
    Workload,
    assert_acked_stored_once,
    assert_views_equal_clean_replay,
    caught_up,
    until,
)
from tests.integration.test_server import local_stream_state

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.cluster,
    pytest.mark.timeout(150),
]


async def projected(bus: Bus) -> dict[str, int]:
    """The projector's positions now ({} while it does not answer)."""
    try:
        return dict(json.loads(await bus.request(STATUS_SUBJECT, b"", timeout=2))["positions"])
    except RequestTimeout:
        return {}


async def test_losing_the_stream_leader_under_load_loses_nothing(
    nats_cluster: NatsCluster, processes: Processes, tmp_path: Path
) -> None:
    urls = ",".join(nats_cluster.urls)
    db = tmp_path / "live.duckdb"
    settings = Settings(nats_url=urls, replicas=3)
    async with await Bus.connect(urls, settings=settings) as admin:
        await admin.ensure_streams()
        for stream in (EVENTS, DATA, DEADLETTERS):
            assert (await admin.js.stream_info(stream)).config.num_replicas == 3
        # The harder case: one server leads every stream, and the publisher is on it.
        info = await admin.js.stream_info(EVENTS)
        assert info.cluster is not None and info.cluster.leader is not None
        leader = nats_cluster.server(info.cluster.leader)
        for stream in (DATA, DEADLETTERS):
            await lead(admin, stream, leader.server_name)
    others = [s.url for s in nats_cluster.servers if s is not leader]
    async with await Bus.connect(
        [leader.url, *others], settings=settings, dont_randomize=True
    ) as bus:
        # started as an operator might, without HIVEBUS_REPLICAS: its ensure_streams must
        # not scale the streams down to one copy
        projector = processes.projector(urls, db).start()
        await caught_up(bus)
        for stream in (EVENTS, DATA, DEADLETTERS):
            assert (await bus.js.stream_info(stream)).config.num_replicas == 3, stream
        workload = Workload(bus)
        await workload.publish(workload.opening())
        stop = asyncio.Event()
        publisher = asyncio.create_task(workload.run(stop))
        try:
            await until(lambda: rounds_done(workload, 30), 60, "load before the kill")
            assert bus.nc.connected_url is not None and bus.nc.connected_url.port == leader.port
            at_kill = await projected(bus)
            acked_at_kill = len(workload.acked)
            killed = time.monotonic()
            leader.kill()
            # publishing goes on: 30 more rounds acknowledged with the leader dead
            rounds = len(workload.ack_times)
            await until(
                lambda: rounds_done(workload, rounds + 30), 60, "publishing while a server is down"
            )
            # and projecting: past where it stood at the kill, on both streams
            await until(
                lambda: advanced(bus, at_kill),
                60,
                "the projector to advance while a server is down",
            )
            restarted = time.monotonic()
            acked_down = len(workload.acked) - acked_at_kill
            stalls = [
                b - a
                for a, b in pairwise([killed, *(t for t, _ in workload.ack_times if t > killed)])
            ]
            projected_down = await projected(bus)
            leaders = {s: (await bus.js.stream_info(s)).cluster.leader for s in (EVENTS, DATA)}  # type: ignore[union-attr]
            await asyncio.to_thread(leader.restart)
            await asyncio.to_thread(nats_cluster.wait_for_meta_leader)
            rounds = len(workload.ack_times)
            await until(lambda: rounds_done(workload, rounds + 20), 60, "load after the restart")
        finally:
            stop.set()
            await publisher
        ends = await stream_ends(bus)

        async def replica_caught_up() -> bool:
            states = {s: local_stream_state(leader, s) for s in (EVENTS, DATA)}
            return all(st is not None and st["last_seq"] == ends[s] for s, st in states.items())

        await until(
            replica_caught_up, 60, f"the restarted {leader.server_name} to catch up its replicas"
        )
        caught = time.monotonic()
        await caught_up(bus)
        await projector.stop()
        stored = await assert_acked_stored_once(bus, workload.acked)
        views = await assert_views_equal_clean_replay(bus, db, tmp_path / "clean.duckdb")

    figures = {
        "killed": leader.server_name, "leaders_after": leaders, "down_seconds": round(restarted - killed, 2),
        "first_ack_after_kill_s": round(stalls[0], 2), "longest_ack_gap_while_down_s": round(max(stalls), 2),
        "acked_while_down": acked_down, "projected_at_kill": at_kill, "projected_while_down": projected_down,
        "projector_reconnected": projector.log.read_text().count('"nats.reconnected"'),
        "replica_caught_up_after_restart_s": round(caught - restarted, 2), "acked": len(workload.acked),
        "publish_failures": workload.failures, "stored": stored, **views,
    }  # fmt: skip
    print(f"\nfaults.cluster {json.dumps(figures)}")


async def lead(bus: Bus, stream: str, server: str) -> None:
    """Make ``server`` the leader of ``stream`` (a step-down with that placement preferred)."""
    request = json.dumps({"placement": {"preferred": server}}).encode()

    async def leads() -> bool:
        info = await bus.js.stream_info(stream)
        if info.cluster is not None and info.cluster.leader == server:
            return True
        with contextlib.suppress(Exception):  # an election is under way: ask again
            await bus.nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", request, timeout=2)
        return False

    await until(leads, 30, f"{server} to lead {stream}", max_delay=0.5)


async def rounds_done(workload: Workload, rounds: int) -> bool:
    """``rounds`` publishes acknowledged in all."""
    return len(workload.ack_times) >= rounds


async def advanced(bus: Bus, before: dict[str, int]) -> bool:
    now = await projected(bus)
    return bool(now) and all(now.get(s, 0) > before.get(s, 0) for s in (EVENTS, DATA))
