"""A site leaf (issue 20, item 4): a hub accepting leafnodes, a site nats-server without
JetStream of its own connected to it, a node's outbox and forwarder connected to the leaf.

Readings reach the hub's DATA stream, to-edge facts published at the hub reach the node's
durable consumer through the leaf, and a hub outage while the node keeps producing leaves
each reading stored exactly once (the forwarder's Nats-Msg-Id and reconciliation work over
the link because the leaf maps ``$JS.API.>`` to the hub's domain ``$JS.hub.API.>``).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from hivebus.bus.batch import bodies_of
from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import (
    DATA,
    ConsumerSpec,
    ensure_consumer,
    platform_streams,
    toedge_consumer,
)
from hivebus.bus.subjects import data_filter
from hivebus.config import Settings
from hivebus.edge.db import NodeDatabase
from hivebus.edge.forwarder import Forwarder, ForwarderOptions, _identity
from hivebus.edge.outbox import Outbox
from hivebus.edge.uplink import Uplink
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event
from hivebus.schemas.ses import GoalRemoved

pytestmark = pytest.mark.integration

NODE = "W0L1"
DUP_WINDOW = timedelta(seconds=1)


def reading(i: int) -> Event:
    return Event.new(
        Reading(
            name="env.temperature", value=20.0 + i % 7, timestamp=time.time_ns(), meta={"i": str(i)}
        ),
        source=f"node/{NODE}",
        subject=NODE,
    )


async def until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def leaf_connected(hub: NatsServer) -> bool:
    return bool(hub.monitor("leafz").get("leafnodes", 0) >= 1)


async def stored_nodeseqs(bus: Bus) -> list[int]:
    out: list[int] = []
    async for batch in bus.read(DATA, filter_subjects=[data_filter(NODE)], stop_at_end=True):
        for m in batch:
            for body in bodies_of(m.data):  # readings may travel packed (bus.batch)
                seq, _ = _identity(body)
                assert seq is not None
                out.append(seq)
    return out


@pytest.fixture
def site(nats_server_factory: Callable[..., NatsServer]) -> tuple[NatsServer, NatsServer]:
    hub = nats_server_factory("hub", leafnode_port=0, jetstream_domain="hub")
    leaf = nats_server_factory(
        "site", leafnode_remotes=(hub.leafnode_url,), jetstream=False, hub_jetstream_domain="hub"
    )
    return hub, leaf


async def test_readings_and_goals_cross_the_leaf_and_an_outage_stores_each_reading_once(
    tmp_path: Path, site: tuple[NatsServer, NatsServer]
) -> None:
    hub, leaf = site
    await until(lambda: leaf_connected(hub), 10, "the site leaf to connect to the hub")
    async with await Bus.connect(hub.url) as hub_bus:
        await hub_bus.ensure_streams(platform_streams(Settings(duplicate_window=DUP_WINDOW)))

    db = await NodeDatabase.open(tmp_path / "node.db")
    outbox = await Outbox.open(db, NODE)
    uplink = Uplink(leaf.url, name=f"test-{NODE}", connect_timeout=1.0, retry_max=0.5)
    forwarder = Forwarder(
        outbox, uplink, ForwarderOptions(batch=500, ack_timeout=2.0, retry_max=0.5)
    )
    stop = asyncio.Event()
    tasks = [asyncio.create_task(uplink.run(stop)), asyncio.create_task(forwarder.run(stop))]
    appended: list[int] = []
    try:
        # readings published by the node on the leaf reach the hub's DATA stream
        appended += [s for s in await outbox.append_many([reading(i) for i in range(300)]) if s]
        async with await Bus.connect(hub.url) as hub_bus:
            await until(lambda: _count(hub_bus, 300), 20, "the first readings to reach the hub")

        # a to-edge fact published at the hub reaches the node's consumer through the leaf
        async with await Bus.connect(hub.url) as hub_bus:
            await hub_bus.publish(
                Event.new(
                    GoalRemoved(node=NODE, job_id="j1", reason="leaf test"),
                    source="hub/ses",
                    subject=NODE,
                )
            )
        async with await Bus.connect(leaf.url) as node_bus:
            spec = toedge_consumer(NODE)
            await ensure_consumer(node_bus.js, spec)
            got = await asyncio.wait_for(_first(node_bus, spec), 10)
        assert isinstance(got.data, GoalRemoved) and got.data.job_id == "j1"

        # the hub goes away while the node keeps producing; then comes back
        await asyncio.to_thread(hub.kill)
        for start in range(300, 2300, 500):
            appended += [
                s
                for s in await outbox.append_many([reading(i) for i in range(start, start + 500)])
                if s
            ]
        await asyncio.sleep(DUP_WINDOW.total_seconds() * 1.5)  # outlast the duplicate window
        await asyncio.to_thread(hub.start)
        await until(lambda: leaf_connected(hub), 20, "the leaf to reconnect to the restarted hub")
        await until(lambda: outbox.backlog_now()[0] == 0, 60, "the outbox to drain over the leaf")
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await uplink.close()
        await outbox.close()
        await db.close()

    assert len(appended) == 2300
    async with await Bus.connect(hub.url) as hub_bus:
        nodeseqs = await stored_nodeseqs(hub_bus)
    assert len(nodeseqs) == len(set(nodeseqs)), "a reading is in the hub's stream twice"
    assert set(nodeseqs) == set(appended), "a reading is missing from the hub's stream"
    assert nodeseqs == sorted(nodeseqs), "the node's order is broken"


async def _count(bus: Bus, n: int) -> bool:
    return len(await stored_nodeseqs(bus)) >= n


async def _first(bus: Bus, spec: ConsumerSpec) -> Event:
    async for delivery in bus.consume(spec, batch=1):
        await delivery.ack()
        assert delivery.event is not None
        return delivery.event
    raise AssertionError("the consumer ended")


# --- hivebus site hub / hivebus site run ----------------------------------------------------


def start_cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "HIVEBUS_FSYNC": "interval"}
    env.pop("HIVEBUS_NATS_URL", None)
    return subprocess.Popen(
        [sys.executable, "-c", "from hivebus.cli import main; main()", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], pattern: str, timeout: float = 30) -> re.Match[str]:
    """The first match of ``pattern`` in the process's output lines (everything read is kept)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if m := re.search(pattern, line):
            return m
    raise AssertionError(f"no {pattern!r} in the output:\n{''.join(seen)}")


def stop_cli(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_site_run_links_a_leaf_that_nodes_publish_through_to_the_hub(
    tmp_path: Path, server_binary: Path
) -> None:
    hub = start_cli(
        "site",
        "hub",
        "--data-dir",
        str(tmp_path / "hub"),
        "--nats-port",
        "0",
        "--leafnode-port",
        "0",
        "--no-auth",  # test_leafnode_auth.py runs sites against an authenticating hub
        cwd=tmp_path,
    )
    leaf: subprocess.Popen[str] | None = None
    try:
        hub_url = read_until(hub, r"running at (nats://\S+)").group(1)
        leaf_url_for_sites = read_until(hub, r"site run --hub (nats-leaf://\S+)").group(1)
        leaf = start_cli(
            "site",
            "run",
            "--hub",
            leaf_url_for_sites,
            "--data-dir",
            str(tmp_path / "site"),
            "--nats-port",
            "0",
            cwd=tmp_path,
        )
        site_url = read_until(leaf, r"site leaf running at (nats://\S+),").group(1)
        read_until(leaf, r"link: up")

        event = reading(1)
        async with await Bus.connect(site_url) as node_bus:
            await node_bus.publish(event)
            again = await node_bus.publish(event)  # the hub's stream de-duplicates it
            assert again == 1
        async with await Bus.connect(hub_url) as hub_bus:
            assert await hub_bus.last_seq(DATA) == 1
            assert await stored_ids(hub_bus) == [event.id]
    finally:
        if leaf is not None:
            stop_cli(leaf)
        stop_cli(hub)


async def stored_ids(bus: Bus) -> list[str | None]:
    out: list[str | None] = []
    async for batch in bus.read(DATA, filter_subjects=[data_filter(NODE)], stop_at_end=True):
        out += [_identity(body)[1] for m in batch for body in bodies_of(m.data)]
    return out


def test_site_run_refuses_a_client_url_and_says_what_to_write(tmp_path: Path) -> None:
    proc = start_cli("site", "run", "--hub", "nats://127.0.0.1:4222", cwd=tmp_path)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "not a leafnode URL" in output and "nats-leaf://HOST:PORT" in output
    assert "Traceback" not in output
