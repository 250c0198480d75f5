"""Link flaps with an agent crash in the middle: every event the node accepted arrives once.

A real agent process (``hivebus node run --virtual``, 300 readings/s plus heartbeats and
``sys.*`` metrics) runs while the hub goes down and up every few seconds for
``HIVEBUS_FLAP_SECONDS`` (45 by default; the issue's minute: ``HIVEBUS_FLAP_SECONDS=60``):
stopped cleanly or SIGKILLed at random, down for 0.3-2.5 s, up for 1-4 s. Once, in the middle,
with the hub down, the agent is SIGKILLed and started again on the same data directory. A
projector process runs throughout.

What the node accepted is read from its own outbox, not from the hub: numbers start at the
first ``next_nodeseq`` of its fresh outbox; when the agent is killed (hub down, so nothing
acknowledged after the outage began has been deleted) the highest number held is the last it
committed, and the restarted agent continues at the number the file tells it to (numbers
handed out but never committed are the only gap, and they were never sent); after the final
clean stop (and a quiet run that sends what the stop's short drain left) ``next_nodeseq``
closes the range. With no drop counted, the hub must hold every number of those two ranges
exactly once, and nothing else; the projector's ``readings`` view each DATA message of the
node once and its ``events`` view each lifecycle event once.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from hivebus.bus.server import NatsServer
from hivebus.projections.client import query
from tests.faults.conftest import caught_up, until
from tests.faults_edge.conftest import (
    OutboxState,
    Processes,
    agent,
    fresh_outbox,
    hub_copy,
    hub_streams,
    outbox_state,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NODE = "W071"
RATE = 300  # virtual readings/s
FLAP_SECONDS = float(os.environ.get("HIVEBUS_FLAP_SECONDS", "45"))


async def test_link_flaps_and_an_agent_crash_deliver_every_accepted_event_exactly_once(
    tmp_path: Path, nats_server: NatsServer, processes: Processes
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    bus = await hub_streams(nats_server.url)
    data_dir = tmp_path / "node"
    first = await fresh_outbox(data_dir, NODE)
    projector = processes.projector(nats_server.url, tmp_path / "views.duckdb").start()
    node = agent(
        processes, NODE, nats_server.url, data_dir,
        "--virtual-rate", str(RATE), "--virtual-interval", "0.05", "--heartbeat", "0.5",
        "--metrics", "1",
    ).start()  # fmt: skip
    outages: Counter[str] = Counter()
    crashed: OutboxState | None = None

    async def numbered_beyond(n: int) -> bool:
        node.assert_alive()
        return outbox_state(data_dir).stored_next > n

    async def holds_readings() -> bool:
        node.assert_alive()
        return len(outbox_state(data_dir).readings) > RATE // 10

    try:
        await until(lambda: numbered_beyond(first), 30, "the agent to start")
        started = time.monotonic()
        while time.monotonic() - started < FLAP_SECONDS:
            await asyncio.sleep(rng.uniform(1.0, 4.0))
            how = rng.choice(["stop", "kill"])
            await asyncio.to_thread(nats_server.stop if how == "stop" else nats_server.kill)
            outages[how] += 1
            down = rng.uniform(0.3, 2.5)
            if crashed is None and time.monotonic() - started > FLAP_SECONDS / 2:
                await until(holds_readings, 30, f"a backlog while the hub is down (seed {seed})")
                await node.kill()
                crashed = outbox_state(data_dir)
                node.start()
            await asyncio.sleep(down)
            await asyncio.to_thread(nats_server.start)
        assert crashed is not None

        async def caught_up_with_the_node() -> bool:
            node.assert_alive()
            return len(outbox_state(data_dir).held) < RATE

        await until(caught_up_with_the_node, 60, f"the forwarder to catch up (seed {seed})")
        await node.stop()
        stopped = outbox_state(data_dir)
        # A quiet run (one sample, one heartbeat) sends what the stop's short drain left behind.
        quiet = agent(
            processes, NODE, nats_server.url, data_dir,
            "--virtual-interval", "3600", "--heartbeat", "3600", "--metrics", "3600",
        ).start()  # fmt: skip

        async def drained() -> bool:
            quiet.assert_alive()
            now = outbox_state(data_dir)
            return now.stored_next > stopped.stored_next and not now.held

        await until(drained, 60, f"the quiet run to empty the outbox (seed {seed})")
        await quiet.stop()
        final = outbox_state(data_dir)
        hub = await hub_copy(bus, NODE)
        projector.assert_alive()
        ends = await caught_up(bus)
        readings = await query(
            bus, "SELECT seq FROM readings WHERE node = ?", [NODE], limit=10_000_000
        )
        lifecycle = await query(
            bus, "SELECT nodeseq FROM events WHERE source = ?", [f"node/{NODE}"], limit=1_000_000
        )
    finally:
        await bus.close()

    committed_before_crash = max(crashed.held)
    accepted = set(range(first, committed_before_crash + 1)) | set(
        range(crashed.resumes_at, final.stored_next)
    )
    print(
        f"\n{NODE} (seed {seed}): {sum(outages.values())} hub outages {dict(outages)} in "
        f"{FLAP_SECONDS:g}s, agent SIGKILLed once holding {len(crashed.held)} events; "
        f"{len(accepted)} events accepted ({len(hub.data)} readings), {len(stopped.held)} left "
        "by the stop's drain, "
        f"{crashed.resumes_at - committed_before_crash - 1} numbers never committed; "
        f"stream ends {ends}"
    )
    assert final.drops == {}, f"the node dropped events: {final.drops} (seed {seed})"
    assert final.held == set(), f"{len(final.held)} events still in the outbox (seed {seed})"
    assert hub.twice() == [], f"events stored twice: {hub.twice()[:5]} (seed {seed})"
    lost = sorted(accepted - hub.nodeseqs)
    assert lost == [], (
        f"{len(lost)} accepted events never reached the hub: {lost[:5]} (seed {seed})"
    )
    extra = sorted(hub.nodeseqs - accepted)
    assert extra == [], f"the hub holds numbers never committed: {extra[:5]} (seed {seed})"
    assert Counter(row[0] for row in readings.rows) == Counter(seq for _, seq in hub.data)
    assert Counter(row[0] for row in lifecycle.rows) == Counter(seq for seq, _ in hub.events)
