"""The edge runs out of room: the outbox cap while the hub is down, then a full disk.

(a) A real agent process with a small ``--outbox-max-bytes`` produces readings while the hub
    is down. Read from its outbox while it runs: readings are dropped oldest-first, lifecycle
    events never (the very first event, ``node.registered``, is older than every reading kept
    and is still there), and the drop counter equals exactly the numbers that are missing.
    It keeps accepting; once the hub is back it forwards what it kept, and the final count
    (hub + outbox + counted drops) accounts for every number it ever handed out.
(b) The disk fills up, two ways: SQLite refuses to grow (``PRAGMA max_page_count`` on the
    agent's connection, ``SQLITE_FULL``), and a real file system full to the last byte (the
    node's data dir on a 24 MiB tmpfs the test mounts, filled by another file; skipped where
    mounting is not allowed). The agent stays up, nothing it had stored is lost, readings are
    refused and counted (``readings.disk_full``), a lifecycle event emitted meanwhile waits and
    is delivered, and appends succeed again once there is room.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from hivebus.bus.server import NatsServer
from hivebus.edge.agent import AgentConfig, NodeAgent
from hivebus.edge.forwarder import ForwarderOptions
from hivebus.edge.outbox import DISK_FULL, DROPPED_FULL
from tests.faults.conftest import until
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

CAP = 192 * 1024
RATE = 400  # virtual readings/s


def check_dropped_oldest_first(state: OutboxState, first: int) -> set[int]:
    """At any moment: every number up to the newest stored event is either held or counted
    as dropped; every drop is older than every reading held; the cap holds; the node's first
    event (older than any reading kept) is there. The numbers dropped."""
    top = max(state.held)
    missing = set(range(first, top + 1)) - state.held
    assert len(missing) == state.drops.get(DROPPED_FULL, 0), (
        f"{len(missing)} numbers missing below {top}, {state.drops} counted"
    )
    assert max(missing) < min(state.readings), "a newer reading was dropped before an older one"
    assert state.bytes <= CAP
    subject, _ = state.lifecycle[first]
    assert subject.endswith("node.registered"), f"the node's first event is {subject}"
    return missing


async def test_a_full_outbox_drops_oldest_readings_never_lifecycle_and_the_agent_carries_on(
    tmp_path: Path, nats_server: NatsServer, processes: Processes
) -> None:
    bus = await hub_streams(nats_server.url)
    await bus.close()
    await asyncio.to_thread(nats_server.stop)
    data_dir = tmp_path / "node"
    first = await fresh_outbox(data_dir, "W061")
    node = agent(
        processes, "W061", nats_server.url, data_dir,
        "--virtual-rate", str(RATE), "--virtual-interval", "0.05", "--heartbeat", "0.2",
        "--metrics", "3600", "--outbox-max-bytes", str(CAP),
    ).start()  # fmt: skip

    def drops_beyond(n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            node.assert_alive()
            return outbox_state(data_dir).drops.get(DROPPED_FULL, 0) > n

        return check

    await until(drops_beyond(0), 60, "the outbox to fill up and drop readings")
    early = outbox_state(data_dir)
    check_dropped_oldest_first(early, first)
    await until(drops_beyond(early.drops[DROPPED_FULL] + 2 * RATE), 60, "more drops")
    late = outbox_state(data_dir)
    check_dropped_oldest_first(late, first)
    assert set(early.lifecycle) <= set(late.lifecycle), "a lifecycle event was dropped"
    older = [seq for seq in late.lifecycle if seq < min(late.readings)]
    assert len(older) > 1, "no heartbeat older than the kept readings survived the drops"
    assert max(late.readings) > max(early.readings), "the full outbox stopped accepting readings"
    assert sum(size for _, size in late.lifecycle.values()) < CAP // 2  # (not blocked on them)
    node.assert_alive()

    await asyncio.to_thread(nats_server.start)
    bus = await hub_streams(nats_server.url)
    try:

        async def kept_lifecycle_arrived() -> bool:
            node.assert_alive()
            return set(late.lifecycle) <= {s for s, _ in (await hub_copy(bus, "W061")).events}

        await until(kept_lifecycle_arrived, 60, "what the full outbox kept to reach the hub")
        await node.stop()
        final = outbox_state(data_dir)
        hub = await hub_copy(bus, "W061")
    finally:
        await bus.close()

    assert hub.twice() == [], "events stored twice"
    stored = hub.nodeseqs | final.held
    numbered = set(range(first, final.stored_next))
    assert stored <= numbered
    missing = numbered - stored
    print(f"\nW061: {len(numbered)} numbered, {len(hub.nodeseqs)} at the hub, drops {final.drops}")
    assert len(missing) == sum(final.drops.values()) == final.drops[DROPPED_FULL], final.drops
    # (some of those kept may still be dropped, oldest first, before the forwarder takes them)
    assert set(late.readings) & hub.nodeseqs, "none of the readings the full outbox kept arrived"


async def set_max_pages(node: NodeAgent, pages: int) -> int:
    """``PRAGMA max_page_count`` on the agent's own connection (never below the file's size)."""
    conn = node.db

    def apply() -> int:
        return int(conn.conn.execute(f"PRAGMA max_page_count = {pages}").fetchone()[0])

    return await conn.call(apply)


class PageCap:
    """SQLite refuses to grow (``PRAGMA max_page_count``): SQLITE_FULL without touching the disk."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    async def fill(self, node: NodeAgent) -> None:
        await set_max_pages(node, 1)

    async def free(self, node: NodeAgent) -> None:
        await set_max_pages(node, 1 << 30)


class Tmpfs:
    """A real full file system: the node's data dir on a small tmpfs, filled to the last byte
    by another file (as a camera's images would), then freed by deleting that file."""

    SIZE = 24 * 1024 * 1024

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.SIZE}", "tmpfs", str(data_dir)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (root and the mount syscall needed): {done.stderr.strip()}")
        self.filler = data_dir / "filler"

    async def fill(self, node: NodeAgent) -> None:
        def write() -> None:
            fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                for size in (1 << 20, 4096, 1):  # down to the last byte, so not even a page is left
                    try:
                        while os.write(fd, b"\0" * size):
                            pass
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
            finally:
                os.close(fd)

        await asyncio.to_thread(write)

    async def free(self, node: NodeAgent) -> None:
        self.filler.unlink()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.data_dir)], capture_output=True)


@pytest.fixture(params=["sqlite-page-cap", "tmpfs"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PageCap | Tmpfs]:
    data_dir = tmp_path / "node"
    if request.param == "sqlite-page-cap":
        yield PageCap(data_dir)
        return
    mounted = Tmpfs(data_dir)
    try:
        yield mounted
    finally:
        mounted.unmount()


async def test_a_full_disk_refuses_readings_keeps_lifecycle_events_and_recovers(
    tmp_path: Path, nats_server: NatsServer, disk: PageCap | Tmpfs
) -> None:
    bus = await hub_streams(nats_server.url)
    await bus.close()
    await asyncio.to_thread(nats_server.stop)
    data_dir = disk.data_dir
    first = await fresh_outbox(data_dir, "W062")
    config = AgentConfig.build(
        "W062", nats_server.url, data_dir=data_dir, virtual=True, virtual_rate=RATE,
        virtual_interval_seconds=0.05, heartbeat_seconds=0.2, metrics_seconds=3600.0,
        forwarder=ForwarderOptions(ack_timeout=1.0, retry_max=0.5),
    )  # fmt: skip
    node = NodeAgent(config)
    stop = asyncio.Event()
    task = asyncio.create_task(node.run(stop))
    await asyncio.wait_for(node.ready.wait(), 30)

    def refused_beyond(n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            assert not task.done(), "the agent stopped"
            return node.outbox.dropped().get(DISK_FULL, 0) > n

        return check

    async def stored_beyond(n: int) -> bool:
        assert not task.done(), "the agent stopped"
        return node.outbox.backlog_now()[0] > n

    await until(lambda: stored_beyond(RATE), 30, "readings in the outbox")
    try:
        await disk.fill(node)  # the disk is full
        await until(refused_beyond(0), 30, "the first refused reading")
        before = outbox_state(data_dir)  # all the node had stored when the disk filled up
        await until(refused_beyond(RATE), 30, "more refusals")
        beat = asyncio.ensure_future(node.heartbeat())  # a lifecycle event meanwhile
        await until(refused_beyond(node.outbox.dropped()[DISK_FULL] + RATE), 30, "refusals")
        during = outbox_state(data_dir)
        assert before.held <= during.held, "an event stored before the disk filled up is gone"
        assert not task.done()
        refused = node.outbox.dropped()[DISK_FULL]

        await disk.free(node)  # room again
        held = len(during.held)
        await until(lambda: stored_beyond(held + RATE), 30, "appends to succeed again")
        beat_event = await asyncio.wait_for(beat, 30)
        assert node.outbox.dropped()[DISK_FULL] >= refused

        await asyncio.to_thread(nats_server.start)
        bus = await hub_streams(nats_server.url)
        try:

            async def delivered() -> bool:
                assert not task.done(), "the agent stopped"
                hub = await hub_copy(bus, "W062")
                return during.held <= hub.nodeseqs and beat_event.id in hub.ids

            await until(delivered, 60, "what was stored before and during the full disk")
            stop.set()
            await asyncio.wait_for(task, 60)
            final = outbox_state(data_dir)
            hub = await hub_copy(bus, "W062")
        finally:
            await bus.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)

    assert hub.twice() == [], "events stored twice"
    stored = hub.nodeseqs | final.held
    numbered = set(range(first, final.stored_next))
    assert stored <= numbered
    missing = numbered - stored
    print(f"\nW062: {len(numbered)} numbered, {len(hub.nodeseqs)} at the hub, drops {final.drops}")
    assert len(missing) == sum(final.drops.values()) == final.drops[DISK_FULL], final.drops
    assert final.drops[DISK_FULL] == node.outbox.dropped()[DISK_FULL]
