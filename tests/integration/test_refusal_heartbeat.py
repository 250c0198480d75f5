"""The hub's refusal of a node reaches the hub in the node's heartbeats (issue 15, item 2).

A real authenticating hub with the projector, a real ``hivebus node run``: the node is refused
(a withdrawn credential, or none), keeps beating into its outbox, then gets the right
credential. The heartbeats the hub stores carry the refusal (its start, then its end), the
``nodes`` view and ``hivebus node list`` show it, and the node's record of it goes only once
a heartbeat reporting the end is stored.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hivebus.auth.credentials import Credential
from hivebus.bus.client import Bus
from hivebus.bus.streams import EVENTS
from hivebus.edge import refusal
from hivebus.projections.runner import running
from hivebus.schemas import codec
from hivebus.schemas.node import HubRefusal, NodeHeartbeat
from tests.integration.test_auth import (
    Hub,
    hub,  # noqa: F401  (the fixture)
    stored,
)
from tests.integration.test_edge_auth import NODE, run_node, stop
from tests.integration.test_handlers import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def reported(bus: Bus) -> list[HubRefusal | None]:
    """The refusal each heartbeat of the node stored on the hub carries, in order."""
    beats = [codec.decode(raw).data for raw in await stored(bus, EVENTS, f"fromedge.{NODE}.node.heartbeat")]
    return [b.refusal for b in beats if isinstance(b, NodeHeartbeat)]


async def node_list(at: Hub, *options: str) -> str:
    """``hivebus node list`` on the hub machine (in a thread: the projector answers from this loop)."""
    env = {**os.environ, "COLUMNS": "250", "HIVEBUS_NATS_CREDENTIALS": str(at.service.nats_credentials)}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "hivebus", "node", "list", "--hub", at.url, *options],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def utc_naive(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=None)


async def check_the_hub_learned(at: Hub, bus: Bus, data_dir: Path, held: refusal.Refusal, kind: str) -> None:
    """Once the node has its credential: the hub stores a heartbeat with the refusal's end, the
    node's record goes, and the nodes view and ``hivebus node list`` show since and until."""

    async def ended() -> bool:
        return any(r is not None and r.until is not None for r in await reported(bus))

    await until(ended, 30, "a stored heartbeat reporting the refusal's end")
    await until(lambda: asyncio.sleep(0, not (data_dir / refusal.FILE).exists()), 15, "the record removed")
    carried = await reported(bus)
    first = next(i for i, r in enumerate(carried) if r is not None)
    end = next(i for i, r in enumerate(carried) if r is not None and r.until is not None)
    assert all(r is not None and r.until is None for r in carried[first:end]), carried  # while it lasted
    assert first < end, "the heartbeats buffered while refused carry the refusal as lasting"
    last = carried[end]
    assert last is not None and last.kind == kind and last.since == datetime.fromisoformat(held.since)
    assert last.until is not None and last.until >= last.since
    assert "old-s3cret" not in last.reason and last.reason == refusal.reason(held)

    async def shown() -> dict[str, Any] | None:
        rows = json.loads(await node_list(at, "--json"))
        row = next((r for r in rows if r["node_id"] == NODE), None)
        return row if row is not None and row["refused_until"] else None

    await until(shown, 30, "the nodes view showing the refusal's end")
    row = await shown()
    assert row is not None and (row["refusal"], row["refusal_reason"]) == (kind, last.reason)
    assert utc_naive(row["refused_since"]) == utc_naive(held.since)
    assert utc_naive(row["refused_until"]) == last.until.replace(tzinfo=None)
    table = await node_list(at)
    assert f"{kind} {held.since[5:16].replace('T', ' ')} to" in table, table


async def test_a_withdrawn_credential_reaches_the_hub_in_the_heartbeat_once_it_can_connect(
    hub: Hub,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    data_dir, log = tmp_path / "node", tmp_path / "node.log"
    creds = tmp_path / f"{NODE}.creds"
    Credential(user=f"node-{NODE}", password="old-s3cret", inbox_prefix=hub.nodes[NODE].inbox_prefix).save(creds)
    async with await Bus.connect(hub.url, settings=hub.service) as bus, running(bus, tmp_path / "views.duckdb"):
        node = run_node(hub, data_dir, log, "--credentials", str(creds))
        try:

            async def refused() -> refusal.Refusal | None:
                assert node.poll() is None, log.read_text()[-3000:]
                return refusal.read(data_dir)

            await until(refused, 15, "the refusal recorded")
            held = await refused()
            assert held is not None and held.ongoing and held.what == "credential"
            await asyncio.sleep(2.0)  # heartbeats every 0.5 s go to the outbox meanwhile
            assert await reported(bus) == []  # the hub knows nothing yet
            hub.nodes[NODE].save(creds)  # the operator copies the right file over the old one
            await check_the_hub_learned(hub, bus, data_dir, held, "credential")
        finally:
            stop(node)


async def test_a_node_without_its_credential_reports_the_refusal_after_a_restart_with_it(
    hub: Hub,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    """The refusal ended (the node stopped, then ran again with its credential) before any
    heartbeat reached the hub: it still reaches it once."""
    data_dir = tmp_path / "node"
    async with await Bus.connect(hub.url, settings=hub.service) as bus, running(bus, tmp_path / "views.duckdb"):
        node = run_node(hub, data_dir, tmp_path / "node-1.log")
        try:
            await until(lambda: asyncio.sleep(0, refusal.read(data_dir)), 15, "the refusal recorded")
            await asyncio.sleep(1.5)
        finally:
            stop(node)
        held = refusal.read(data_dir)
        assert held is not None and held.ongoing and held.what == "events"
        assert await reported(bus) == []
        creds = hub.data_dir / f"{NODE}.creds"
        hub.nodes[NODE].save(creds)
        node = run_node(hub, data_dir, tmp_path / "node-2.log", "--credentials", str(creds))
        try:
            await check_the_hub_learned(hub, bus, data_dir, held, "events")
        finally:
            stop(node)
