"""The hub's nats-server SIGKILLed mid-load and restarted on the same ports and store.

Running against it, all as real processes: two node agents (``hivebus node run --virtual``)
streaming readings, heartbeats and metrics, the handler services, the projector, and an
in-test publisher of control events that make every handler answer (job submissions, pushes,
refused approvals). While the server is down the agents buffer in their outboxes and the
publisher's round waits for its acks; once it is back everyone reconnects and drains.

Then: every event whose publish was acknowledged is stored exactly once; every event an
agent's outbox ever held is stored exactly once (counted by ``(node, nodeseq)``) or is still
in the outbox; each decision was taken once; every view equals a clean replay of the log.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from hivebus.bus.batch import bodies_of
from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import DATA, EVENTS
from hivebus.bus.subjects import data_filter, fromedge_filter
from hivebus.edge.forwarder import _identity
from hivebus.replay.build import stream_ends
from tests.faults.conftest import (
    Processes,
    Workload,
    assert_acked_stored_once,
    assert_each_decision_once,
    assert_views_equal_clean_replay,
    caught_up,
    consumers_drained,
    until,
)
from tests.faults_edge.conftest import fresh_outbox  # opens the outbox before its agent does

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(150)]

NODES = ("W101", "W102")
RATE = 400  # virtual readings per second, per agent


def outbox_state(data_dir: Path) -> tuple[int, set[int], int]:
    """(next nodeseq, the numbers still held, events parked or dropped) of a node's outbox,
    read while its agent may be running (WAL: a reader does not block the writer)."""
    conn = sqlite3.connect(f"file:{data_dir / 'node.db'}?mode=ro", uri=True)
    try:
        (next_seq,) = conn.execute(
            "SELECT value FROM outbox_meta WHERE key = 'next_nodeseq'"
        ).fetchone()
        held = {
            row[0]
            for t in ("readings", "lifecycle")
            for row in conn.execute(f"SELECT nodeseq FROM {t}")
        }
        (lost,) = conn.execute("SELECT coalesce(sum(n), 0) FROM drop_counters").fetchone()
        return int(next_seq), held, int(lost)
    finally:
        conn.close()


async def stored_nodeseqs(bus: Bus, node: str) -> Counter[int]:
    """How often each of ``node``'s numbers is stored, readings and lifecycle events."""
    counts: Counter[int] = Counter()
    for stream, subject in ((DATA, data_filter(node)), (EVENTS, fromedge_filter(node))):
        async for batch in bus.read(stream, filter_subjects=[subject], stop_at_end=True):
            for m in batch:
                for body in bodies_of(m.data):  # readings travel packed (issue 18)
                    seq, _ = _identity(body)
                    assert seq is not None, f"{m.subject} #{m.seq} carries no nodeseq"
                    counts[seq] += 1
    return counts


async def test_hub_sigkill_mid_load_loses_no_acknowledged_event(
    nats_server: NatsServer, processes: Processes, tmp_path: Path
) -> None:
    url = nats_server.url
    db = tmp_path / "live.duckdb"
    dirs = {node: tmp_path / node for node in NODES}
    figures: dict[str, float | int] = {}
    async with await Bus.connect(url) as bus:
        await bus.ensure_streams()
        handlers = processes.handlers(url).start()
        projector = processes.projector(url, db).start()
        first = {node: await fresh_outbox(dirs[node], node) for node in NODES}
        agents = [processes.agent(n, url, dirs[n], interval=0.05, rate=RATE).start() for n in NODES]
        for agent in agents:
            await agent.logged("running: local bus")
        await handlers.logged('"handlers.started"')
        await caught_up(bus)
        workload = Workload(bus)
        await workload.publish(workload.opening())
        stop = asyncio.Event()
        publisher = asyncio.create_task(workload.run(stop))
        try:
            await until(
                lambda: loaded(bus, workload, rounds=40, readings=4000), 60, "load before the kill"
            )
            before = await stream_ends(bus)
            killed = time.monotonic()
            nats_server.kill()
            # down long enough that every agent buffers ~2.5 s of readings
            await until(
                lambda: buffering(dirs, 1000), 30, "the agents to buffer while the hub is down"
            )
            buffered = {n: len(outbox_state(dirs[n])[1]) for n in NODES}
            rounds_down = workload.rounds
            await asyncio.to_thread(nats_server.restart)  # same ports, same store
            restarted = time.monotonic()
            recovery = asyncio.create_task(observe_recovery(bus, workload, dirs, restarted))
            await until(
                lambda: loaded(bus, workload, rounds=rounds_down + 40, readings=0),
                60,
                "load after the restart",
            )
        finally:
            stop.set()
            await publisher
        for agent in agents:
            await agent.stop()  # SIGTERM: stops producing; drains what the hub takes in 3 s
        # Each agent once more, nearly silent (one sample, heartbeat and metrics set): it
        # reconciles what its last run left unsure and sends the rest; then it is stopped
        # with an empty outbox, so everything it ever held must be in the streams.
        quiet = [
            processes.agent(n, url, dirs[n], interval=3600, heartbeat=3600, metrics=3600)
            for n in NODES
        ]
        for agent, node in zip(quiet, NODES, strict=True):
            before_run = outbox_state(dirs[node])[0]
            await agent.start().logged("running: local bus")
            await until(
                lambda d=dirs[node], n=before_run: sent_all(d, n), 60, f"{node}'s outbox to drain"
            )
            await agent.stop()
        await until(lambda: consumers_drained(bus), 60, "the handlers to drain")
        ends = await caught_up(bus)
        figures.update(await recovery)
        decisions = await assert_each_decision_once(bus, workload)
        for service in (handlers, projector):
            await service.stop()
        stored = await assert_acked_stored_once(bus, workload.acked)
        for agent, node in zip(agents, NODES, strict=True):
            assert agent.log.read_text().count('"nats.reconnected"') >= 1, (
                f"{node} never reconnected"
            )
            next_seq, held, lost = outbox_state(dirs[node])
            counts = await stored_nodeseqs(bus, node)
            assert (held, lost) == (set(), 0), f"{node}: {len(held)} events held, {lost} dropped"
            assert [s for s, n in counts.items() if n > 1] == [], f"{node}: events stored twice"
            assert sorted(counts) == list(range(first[node], next_seq)), f"{node}: events missing"
            figures[f"{node}_events"] = len(counts)
        views = await assert_views_equal_clean_replay(bus, db, tmp_path / "clean.duckdb")

    figures.update(
        outage_seconds=round(restarted - killed, 2),
        buffered_at_restart=sum(buffered.values()),
        stream_ends_at_kill=sum(before.values()),
        stream_ends=sum(ends.values()),
        acked=len(workload.acked),
        publish_failures=workload.failures,
        stored=stored,
        **decisions,
        **views,
    )
    print(f"\nfaults.hub_kill {json.dumps(figures)}")


async def loaded(bus: Bus, workload: Workload, *, rounds: int, readings: int) -> bool:
    """The publisher has done ``rounds`` rounds and DATA holds ``readings`` messages."""
    return workload.rounds >= rounds and await bus.last_seq(DATA) >= readings


async def sent_all(data_dir: Path, next_before: int) -> bool:
    """The agent has produced since ``next_before`` and its outbox is empty."""
    next_seq, held, _ = outbox_state(data_dir)
    return next_seq > next_before and not held


async def buffering(dirs: dict[str, Path], rows: int) -> bool:
    return all(len(outbox_state(d)[1]) >= rows for d in dirs.values())


async def observe_recovery(
    bus: Bus, workload: Workload, dirs: dict[str, Path], restarted: float
) -> dict[str, float | int]:
    """Seconds from the restart until the publisher had an ack, the agents' outboxes were
    back to a normal backlog and the projector had caught up with what the streams held when
    it could first be asked. Observed, not asserted; each at most 60 s."""
    seen: dict[str, float | int] = {}
    deadline = restarted + 60
    target: dict[str, int] | None = None
    while time.monotonic() < deadline and len(seen) < 4:  # 3 times and one count
        now = time.monotonic()
        try:
            if "first_ack_s" not in seen and any(t > restarted for t, _ in workload.ack_times):
                first = min(t for t, _ in workload.ack_times if t > restarted)
                seen["first_ack_s"] = round(first - restarted, 2)
                seen["acked_in_first_publish_after_restart"] = next(
                    n for t, n in workload.ack_times if t == first
                )
            if "agents_drained_s" not in seen and all(
                len(outbox_state(d)[1]) < 100 for d in dirs.values()
            ):
                seen["agents_drained_s"] = round(now - restarted, 2)
            if bus.nc.is_connected:
                target = target or await stream_ends(bus)
                if "projector_caught_up_s" not in seen:
                    status = json.loads(
                        await bus.request("hivebus.projector.status", b"", timeout=1)
                    )
                    if all(status["positions"].get(s, 0) >= n for s, n in target.items()):
                        seen["projector_caught_up_s"] = round(now - restarted, 2)
        except Exception:  # the hub or the projector is still coming back: look again
            pass
        await asyncio.sleep(0.05)
    return seen
