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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from hivebus.auth.tokens import digest, new_token
from hivebus.bus import batch
from hivebus.bus.client import Bus
from hivebus.bus.publisher import Outgoing
from hivebus.bus.server import NatsServer
from hivebus.config import Settings
from hivebus.handlers.testing import app_spec, job_spec, manifest, resources
from hivebus.projections.client import query
from hivebus.projections.runner import Projector, running
from hivebus.replay.build import stream_ends
from hivebus.schemas.auth import GroupMemberAdded, RoleGranted, UserAdded
from hivebus.schemas.ecr import BundleApproved, BundlePushed, PermissionGranted
from hivebus.schemas.envelope import Event, Payload
from hivebus.schemas.node import (
    NodeHeartbeat,
    NodeOffline,
    NodeRegistered,
    Perf,
    PluginStatus,
    SensorLost,
    TriggerFired,
)
from hivebus.schemas.ses import JobSubmitted, JobSuspended
from hivebus.services.requests import Answer, decide
from hivebus.web.read import JSON_COLUMNS
from tests.integration.test_agent import NODE, agent_config, goal, python_plugin, until
from tests.integration.test_agent import running as agent_running
from tests.integration.test_handlers import handlers, register_nodes
from tests.integration.test_web import WebProcess, web_process

pytestmark = pytest.mark.integration

USERS = ("alice", "bob", "carol", "dave", "erin", "admin")
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
        await bus.publish(Event.new(RoleGranted(user="carol", role="reviewer", by="admin"),
                                    source="user/admin", subject="carol"))
        await bus.publish(Event.new(RoleGranted(user="erin", role="admin", by="admin"),
                                    source="user/admin", subject="erin"))
        await bus.publish(Event.new(GroupMemberAdded(group="lab", user="dave", by="admin"),
                                    source="user/admin", subject="lab"))
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


# --- the ECR and the scheduler's history: bundles, grants, jobs, refusals --------------------

A1 = "alice/plugin-a:1.0"
A2 = "alice/plugin-a:1.1"
SHARED = "alice/plugin-shared:0.1"  # private, READ granted to the group lab (dave)
B1 = "bob/plugin-b:1.0"  # public
JOB_NODES = ["W020", "W021"]


async def command(bus: Bus, who: str, payload: Payload, subject: str) -> Answer:
    return Answer.of_reply(await decide(bus, Event.new(payload, source=f"user/{who}", subject=subject)))


async def history(hub: Hub) -> None:
    bus = hub.bus
    for who, bundle in (("alice", A1), ("alice", A2), ("alice", SHARED), ("bob", B1)):
        pushed = await command(bus, who, BundlePushed(app=app_spec(bundle), pusher=who), bundle)
        assert pushed.rejection is None, pushed.reasons
    assert (await command(bus, "admin", BundleApproved(bundle_id=A1, by="admin"), A1)).rejection is None
    for resource, group in ((B1, "AllUsers"), (SHARED, "lab")):
        owner = resource.split("/")[0]
        granted = await command(bus, owner, PermissionGranted(
            resource=resource, grantee_type="group", grantee=group, permission="READ", by=owner), resource)
        assert granted.rejection is None, granted.reasons
    await register_nodes(bus, JOB_NODES)
    for i in range(1, 6):
        job = f"job-{i}"
        spec = job_spec((("a", A1),), nodes=JOB_NODES if i != 5 else JOB_NODES[:1], name=job)
        answer = await command(bus, "alice", JobSubmitted(job_id=job, user="alice", spec=spec), job)
        assert answer.rejection is None, answer.reasons
    refused = await command(bus, "bob", JobSubmitted(job_id="bob-1", user="bob", spec=job_spec((("a", A1),), nodes=JOB_NODES)), "bob-1")
    assert refused.rejection is not None  # alice's bundle is private
    assert (await command(bus, "bob", JobSuspended(job_id="job-1", by="bob"), "job-1")).rejection is not None
    assert (await command(bus, "alice", JobSuspended(job_id="job-2", by="alice", reason="field work"), "job-2")).rejection is None
    await bus.publish_many([
        node_event("W020", PluginStatus(node="W020", job_id="job-1", plugin="a", bundle_id=A1, run_id=f"run-{i}",
                                        state=state, exit_code=0 if state == "completed" else None,
                                        perf=Perf(cpu_seconds=0.5 * i, max_rss_bytes=2**20 * i, wall_seconds=1.0)
                                        if state == "completed" else None))
        for i in (1, 2) for state in ("running", "completed")
    ] + [node_event("W020", TriggerFired(node="W020", job_id="job-1", rule="publish(heat.alert): v('t') > 35",
                                         name="heat.alert", value=36.0 + i, time=datetime.now(UTC)))
         for i in range(3)])

    async def profiled() -> bool:
        return bool(await hub.view("SELECT 1 FROM profiles WHERE bundle_id = ? AND runs = 2", [A1]))

    await until(profiled, 30, "the ECR to record both runs' profiles")
    await hub.settled()


async def test_jobs_with_goals_runs_refusals_and_triggers(hub: Hub) -> None:
    await history(hub)
    async with hub.client("bob") as bob:
        everything = await hub.view("SELECT * FROM jobs ORDER BY job_id")
        assert [r["job_id"] for r in everything] == [f"job-{i}" for i in range(1, 6)]
        assert await walk(bob, "/jobs", 2) == everything
        assert isinstance(everything[0]["spec"], dict) and everything[0]["science_rules"]
        suspended = await walk(bob, "/jobs", 10, state="Suspended")
        assert suspended == [r for r in everything if r["state"] == "Suspended"] and len(suspended) == 1
        assert await walk(bob, "/jobs", 10, user="bob") == []
        on_w021 = await walk(bob, "/jobs", 10, node="W021")
        assert [r["job_id"] for r in on_w021] == [r["job_id"] for r in everything if "W021" in r["placed_nodes"]]
        assert "job-5" not in {r["job_id"] for r in on_w021}

        shown = (await bob.get("/jobs/job-1")).json()
        assert shown["job"] == everything[0]
        goals = await hub.view("SELECT a.*, n.status AS node_status FROM assignments a LEFT JOIN nodes n "
                               "ON n.node_id = a.node WHERE a.job_id = 'job-1' ORDER BY a.node, a.plugin")
        assert shown["goals"] == goals and {g["node"] for g in goals} == set(JOB_NODES)
        assert shown["runs"] == await hub.view("SELECT * FROM plugin_runs WHERE job_id = 'job-1' "
                                               "ORDER BY updated_at DESC, run_id")
        assert {r["run_id"] for r in shown["runs"]} == {"run-1", "run-2"}
        assert shown["triggers"] == await hub.view("SELECT * FROM triggers WHERE job_id = 'job-1' ORDER BY seq DESC")
        assert len(shown["triggers"]) == 3
        [refusal] = shown["rejections"]
        assert refusal["requested_by"] == "bob" and refusal["command"] == "ses.suspend" and refusal["reasons"]
        assert len((await bob.get("/jobs/job-1", params={"runs": "1"})).json()["triggers"]) == 1

        never = (await bob.get("/jobs/bob-1")).json()
        assert never["job"] is None and never["goals"] == []
        assert never["rejections"][0]["requested_by"] == "bob" and "alice/plugin-a:1.0" in " ".join(never["rejections"][0]["reasons"])
        missing = await bob.get("/jobs/no-such-job")
        assert missing.status_code == 404 and "no-such-job" in missing.json()["error"]
        assert (await bob.get("/jobs", params={"state": "running"})).status_code == 400


async def test_apps_are_filtered_by_the_ecrs_read_rule(hub: Hub) -> None:
    await history(hub)
    bundles = {r["bundle_id"]: r for r in await hub.view("SELECT * FROM bundles")}
    assert set(bundles) == {A1, A2, SHARED, B1}

    def apps(*ids: str) -> list[dict[str, Any]]:
        """The list items for these bundle ids, as the views hold them."""
        out: dict[str, dict[str, Any]] = {}
        for bid in sorted(ids):
            row = bundles[bid]
            app = out.setdefault(f"{row['namespace']}/{row['name']}", {
                "id": f"{row['namespace']}/{row['name']}", "namespace": row["namespace"], "name": row["name"],
                "versions": []})
            app["versions"].append(row)
        for app in out.values():
            app["versions"].sort(key=lambda r: (r["registered_at"], r["version"]))
        return [out[k] for k in sorted(out)]

    expected = {"alice": apps(A1, A2, SHARED, B1), "bob": apps(B1), "dave": apps(SHARED, B1),
                "carol": apps(A1, A2, SHARED, B1), None: apps(B1)}
    for viewer, sees in expected.items():
        async with hub.client(viewer) as client:
            assert await walk(client, "/apps", 1) == sees, viewer
            assert await walk(client, "/apps", 1000) == sees, viewer

    async with hub.client("alice") as alice, hub.client("bob") as bob, hub.client() as anyone, \
            hub.client("dave") as dave:
        assert await walk(alice, "/apps", 10, state="approved") == apps(A1)
        assert await walk(alice, "/apps", 10, namespace="bob") == apps(B1)

        mine = (await alice.get("/apps/alice/plugin-a")).json()
        assert [v["bundle_id"] for v in mine["versions"]] == [A1, A2]
        first = mine["versions"][0]
        assert {k: first[k] for k in bundles[A1]} == bundles[A1]
        assert first["approved"] is True and first["approved_by"] == "admin" and first["state"] == "approved"
        assert first["profiles"] == await hub.view("SELECT * FROM profiles WHERE bundle_id = ? ORDER BY arch", [A1])
        assert first["profiles"][0]["runs"] == 2 and mine["versions"][1]["profiles"] == []
        assert first["permissions"] == []  # hers, with READ_ACP: no grants on it

        for stranger in (bob, anyone):
            hidden = await stranger.get("/apps/alice/plugin-a")
            assert hidden.status_code == 404 and "alice/plugin-a" in hidden.json()["error"]
            assert (await stranger.get("/apps/alice/plugin-shared")).status_code == 404
        shared = (await dave.get("/apps/alice/plugin-shared")).json()
        assert [v["bundle_id"] for v in shared["versions"]] == [SHARED]
        assert shared["versions"][0]["permissions"] is None  # READ, not READ_ACP

        public = (await bob.get("/apps/bob/plugin-b")).json()["versions"][0]
        grants = await hub.view("SELECT * FROM bundle_permissions WHERE resource = ?", [B1])
        assert public["permissions"] == grants and grants[0]["grantee"] == "AllUsers"
        assert (await anyone.get("/apps/bob/plugin-b")).json()["versions"][0]["permissions"] is None
        assert (await anyone.get("/apps", params={"state": "pending"})).status_code == 400


async def test_dead_letters_are_for_admins(hub: Hub) -> None:
    junk = [Outgoing("evt.node.heartbeat.W001", b"{not json", "junk-1"),
            Outgoing("data.W001.env.temperature", b"\x00\x01 not a reading", "junk-2"),
            Outgoing("fromedge.W001.plugin.status", json.dumps({"type": "plugin.status"}).encode(), "junk-3"),
            # a packed message with two bad readings: two letters under one (stream, seq, consumer)
            Outgoing(batch.batch_subject("W001"), batch.pack([b"{bad 1", b"{bad 2"]), "junk-4")]
    await hub.bus.publish_raw_many(junk)

    async def recorded() -> bool:
        letters = await hub.view("SELECT stream, seq FROM dead_letters")
        return len(letters) >= len(junk) + 1

    await until(recorded, 30, "the projector to record the dead letters")
    await hub.settled()
    letters = await hub.view("SELECT * FROM dead_letters ORDER BY stream, seq, consumer, coalesce(batch_index, -1)")
    assert sorted(r["batch_index"] for r in letters if r["batch_index"] is not None) == [0, 1]
    async with hub.client("admin") as admin, hub.client("erin") as erin, hub.client("bob") as bob, \
            hub.client() as anyone:
        assert await walk(admin, "/dead-letters", 1) == letters
        assert await walk(erin, "/dead-letters", 2) == letters  # given the admin role
        assert {r["stream"] for r in letters} == {"EVENTS", "DATA"} and all(r["reason"] for r in letters)
        assert await walk(admin, "/dead-letters", 10, stream="DATA") == [r for r in letters if r["stream"] == "DATA"]
        refused = await bob.get("/dead-letters")
        assert refused.status_code == 403 and "admin" in refused.json()["hint"]
        assert (await anyone.get("/dead-letters")).status_code == 401
        other_cursor = (await admin.get("/dead-letters", params={"limit": "1"})).json()["next"]
        assert (await admin.get("/nodes", params={"cursor": other_cursor})).status_code == 400  # not its list's
