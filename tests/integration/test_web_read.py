"""The read API (``GET /api/v1/nodes``, ``/jobs``, ``/apps``, ``/dead-letters``) on a real bus.

A real ``hivebus web`` process, a real projector (with its query service) and the real ECR
and SES handlers run on a real nats-server; a real node agent registers, beats and runs a
plugin through its forwarder, other nodes' facts are published on the bus. Every answer is
compared with the view rows the projector holds (read with SQL through the same service),
paging is walked to the end, and a private bundle is checked from three viewers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from hivebus.auth.tokens import digest, new_token
from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.config import Settings
from hivebus.handlers.testing import manifest, resources
from hivebus.projections.client import query
from hivebus.projections.runner import Projector, running
from hivebus.replay.build import stream_ends
from hivebus.schemas.auth import UserAdded
from hivebus.schemas.envelope import Event, Payload
from hivebus.schemas.node import NodeHeartbeat, NodeOffline, NodeRegistered, SensorLost
from hivebus.web.read import JSON_COLUMNS
from tests.integration.test_agent import NODE, agent_config, goal, python_plugin, until
from tests.integration.test_agent import running as agent_running
from tests.integration.test_handlers import handlers
from tests.integration.test_web import WebProcess, web_process

pytestmark = pytest.mark.integration

USERS = ("alice", "bob")
OTHERS = [f"N{i:03d}" for i in range(1, 7)]


@dataclass
class Hub:
    bus: Bus
    projector: Projector
    web: WebProcess
    tokens: dict[str, str]
    tmp: Path

    async def settled(self) -> None:
        """Wait until the views hold everything in the log now."""
        assert await self.projector.wait_for(await stream_ends(self.bus), 30)

    async def view(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        """Rows as the view holds them, JSON columns parsed as the read API parses them."""
        rows = (await query(self.bus, sql, params, limit=100_000)).records()
        for row in rows:
            for column in JSON_COLUMNS & row.keys():
                if isinstance(row[column], str):
                    row[column] = json.loads(row[column])
        return rows

    def client(self, user: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"sage {self.tokens[user]}"} if user else {}
        return httpx.AsyncClient(base_url=f"{self.web.url}/api/v1", headers=headers, timeout=60)


@pytest.fixture
async def hub(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Hub]:
    settings = Settings(nats_url=nats_server.url)
    tokens = {user: new_token() for user in USERS}
    async with await Bus.connect(nats_server.url, settings=settings) as bus:
        await bus.ensure_streams()
        for user, token in tokens.items():
            await bus.publish(Event.new(UserAdded(user=user, token_sha256=digest(token), by="admin"),
                                        source="user/admin", subject=user))
        async with running(bus, tmp_path / "views.duckdb") as projector, handlers(settings, bus):
            with web_process(nats_server.url, tmp_path) as web:
                yield Hub(bus, projector, web, tokens, tmp_path)


def node_event(node: str, payload: Payload) -> Event:
    return Event.new(payload, source=f"node/{node}", subject=node)


async def walk(client: httpx.AsyncClient, path: str, limit: int, **params: str) -> list[dict[str, Any]]:
    """Every item of a paged list, page after page; checks each page's size."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        answer = await client.get(path, params={**params, "limit": str(limit), **({"cursor": cursor} if cursor else {})})
        assert answer.status_code == 200, answer.text
        doc = answer.json()
        assert set(doc) == {"items", "next"}
        assert len(doc["items"]) <= limit
        items += doc["items"]
        cursor = doc["next"]
        if cursor is None:
            return items
        assert len(doc["items"]) == limit  # only a full page says there is more


async def test_nodes_as_the_views_hold_them(hub: Hub) -> None:
    ticker = python_plugin("tick", "print('tick')")
    config = agent_config(hub.tmp, hub.bus.settings.nats_url, virtual=True, heartbeat_seconds=0.5)
    async with agent_running(config):
        await hub.bus.publish(goal("job-tick", [ticker], ["schedule(tick): true"]))
        events: list[Event] = []
        for node in OTHERS:
            events.append(node_event(node, NodeRegistered(manifest=manifest(node, tags=["lab"] if node < "N004" else []))))
            events.append(node_event(node, NodeHeartbeat(node=node, resources=resources(), uptime_seconds=5.0)))
        events.append(node_event("N002", SensorLost(node="N002", sensor="bme680", reason="silent for 60s")))
        await hub.bus.publish_many(events)
        await hub.bus.publish(Event.new(NodeOffline(node="N003", reason="no heartbeat for 30s"),
                                        source="handler/health", subject="N003"))

        async def ran() -> bool:
            found = await hub.view("SELECT 1 FROM plugin_runs WHERE node = ? AND state = 'completed'", [NODE])
            beat = await hub.view("SELECT 1 FROM nodes WHERE node_id = ? AND last_heartbeat IS NOT NULL", [NODE])
            return bool(found and beat)

        await until(ran, 60, "a completed run and a heartbeat of the real node")
    await hub.settled()

    async with hub.client() as anyone:
        everything = await hub.view("SELECT * FROM nodes ORDER BY node_id")
        assert {r["node_id"] for r in everything} == {NODE, *OTHERS}
        for limit in (1, 3, 1000):
            assert await walk(anyone, "/nodes", limit) == everything  # each row once, in order, as held
        real = next(r for r in everything if r["node_id"] == NODE)
        assert real["status"] == "online" and real["last_heartbeat"] and real["backlog_messages"] is not None
        assert isinstance(real["attributes"], dict) and real["executors"]

        offline = await walk(anyone, "/nodes", 100, status="offline")
        assert offline == [r for r in everything if r["status"] == "offline"]
        assert "N003" in {r["node_id"] for r in offline} and "N001" not in {r["node_id"] for r in offline}
        assert await walk(anyone, "/nodes", 2, tag="lab") == [r for r in everything if "lab" in (r["tags"] or [])]

        lost = (await anyone.get("/nodes/N002")).json()
        assert lost["node"] == next(r for r in everything if r["node_id"] == "N002")
        assert [(s["sensor"], s["status"], s["lost"]) for s in lost["sensors"]] == [("bme680", "lost", True)]
        assert lost["sensors"][0]["reason"] == "silent for 60s" and lost["runs"] == []

        shown = (await anyone.get(f"/nodes/{NODE}", params={"runs": "1000"})).json()
        runs = await hub.view("SELECT * FROM plugin_runs WHERE node = ? ORDER BY updated_at DESC, run_id", [NODE])
        assert shown["runs"] == runs and any(r["state"] == "completed" for r in runs)
        assert shown["sensors"] == [{**s, "lost": s["status"] == "lost"}
                                    for s in await hub.view("SELECT * FROM node_sensors WHERE node = ? ORDER BY sensor", [NODE])]
        assert len((await anyone.get(f"/nodes/{NODE}", params={"runs": "1"})).json()["runs"]) == min(1, len(runs))

        missing = await anyone.get("/nodes/W999")
        assert missing.status_code == 404 and "W999" in missing.json()["error"]
        for bad in ({"limit": "0"}, {"limit": "1001"}, {"limit": "ten"}, {"cursor": "nonsense!"},
                    {"status": "asleep"}):
            refused = await anyone.get("/nodes", params=bad)
            assert refused.status_code == 400 and refused.json()["hint"], (bad, refused.text)
        first = (await anyone.get("/nodes", params={"limit": "1"})).json()["next"]
        assert (await anyone.get("/nodes", params={"cursor": first[:-2]})).status_code == 400
        bad_token = await anyone.get("/nodes", headers={"Authorization": "sage hbt_not-a-token"})
        assert bad_token.status_code == 401 and "token" in bad_token.json()["error"]
