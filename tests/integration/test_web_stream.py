"""``GET /api/v1/stream`` (Server-Sent Events) from a real ``hivebus web`` on a real nats-server.

A trigger fired by a real node agent (the virtual node's code, its rule engine and its
forwarder) reaches an SSE client; a client that reconnects with ``Last-Event-ID`` gets every
later event once; readings follow their node and name filters.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import nats
import pytest

from hivebus.bus import batch as wire
from hivebus.bus.client import Bus
from hivebus.bus.publisher import Outgoing
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import platform_streams
from hivebus.config import Settings
from hivebus.schemas import codec
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import TriggerFired
from tests.integration.test_agent import NODE, agent_config, goal, python_plugin, running
from tests.integration.test_web import WebProcess, web_process

pytestmark = pytest.mark.integration

OTHER = "W013"


@dataclass
class Message:
    id: str | None
    data: dict | None
    event: str = "message"
    comments: list[str] = field(default_factory=list)


async def messages(response: httpx.Response) -> AsyncIterator[Message]:
    """Parse SSE as a browser does (comment lines kept aside, for the keep-alive check)."""
    current: dict[str, str] = {}
    comments: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            comments.append(line[1:].strip())
            yield Message(None, None, "comment", comments=list(comments))
            continue
        if line == "":
            if "data" in current:
                yield Message(current.get("id"), json.loads(current["data"]), current.get("event", "message"))
            current = {}
            continue
        key, _, value = line.partition(":")
        current[key] = value.removeprefix(" ")


class Reader:
    """One parser per response (an httpx response streams once)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.parsed = messages(response)

    async def take(self, n: int, timeout: float = 20) -> list[Message]:
        got: list[Message] = []

        async def read() -> None:
            async for message in self.parsed:
                if message.event != "comment":
                    got.append(message)
                    if len(got) >= n:
                        return

        try:
            await asyncio.wait_for(read(), timeout)
        except TimeoutError:
            raise AssertionError(f"only {len(got)} of {n} SSE messages within {timeout}s: {got}") from None
        return got

    async def comment(self, text: str, timeout: float = 10) -> bool:
        async def read() -> bool:
            async for message in self.parsed:
                if message.event == "comment" and text in message.comments:
                    return True
            return False

        return await asyncio.wait_for(read(), timeout)


async def take(response: httpx.Response, n: int, timeout: float = 20) -> list[Message]:
    return await Reader(response).take(n, timeout)


@pytest.fixture
async def hub(nats_server: NatsServer) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_server.url)
    await bus.ensure_streams(platform_streams(Settings(duplicate_window=timedelta(seconds=1))))
    yield bus
    await bus.close()


@pytest.fixture
def web(hub: Bus, nats_server: NatsServer, tmp_path: Path) -> Iterator[WebProcess]:
    with web_process(nats_server.url, tmp_path) as running_web:
        yield running_web


def fired(n: int, node: str = OTHER) -> Event:
    return Event.new(
        TriggerFired(node=node, job_id="job-heat", rule="publish(heat.alert): v('t') > 35", name="heat.alert",
                     value=float(n), time=datetime.now(UTC)),
        source=f"node/{node}", subject=node, nodeseq=n,
    )


async def test_a_trigger_fired_on_a_node_reaches_an_sse_client(tmp_path: Path, nats_server: NatsServer, hub: Bus,
                                                              web: WebProcess) -> None:
    rule = "publish(heat.alert): any(v('env.temperature', last=True) > 35)"
    sleeper = python_plugin("sleeper", "import time; time.sleep(30)")
    async with running(agent_config(tmp_path, nats_server.url)) as agent, httpx.AsyncClient(timeout=None) as client:
        await hub.publish(goal("job-heat", [sleeper], [rule]))
        params = {"from_edge": NODE, "type": "trigger.fired"}
        async with client.stream("GET", f"{web.url}/api/v1/stream", params=params) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            plugin = await nats.connect(agent.local.url)
            await asyncio.sleep(1.5)  # the goal applied, its rule loaded
            body = {"name": "env.temperature", "value": 36.5, "timestamp": time.time_ns()}
            await plugin.publish("local.publish.env.temperature", json.dumps(body).encode())
            await plugin.flush()
            sent = time.monotonic()
            [message] = await take(response, 1, timeout=20)
            latency = time.monotonic() - sent
            await plugin.close()
    assert message.data is not None
    assert message.data["type"] == "trigger.fired" and message.data["data"]["node"] == NODE
    assert message.data["data"]["value"] == 36.5 and message.data["data"]["rule"] == rule
    assert message.id == str(message.data["seq"])
    print(f"trigger reading -> SSE client: {latency:.3f} s (includes one rule evaluation round)")


async def test_a_client_resumes_from_last_event_id_without_loss_or_duplicates(hub: Bus, web: WebProcess) -> None:
    for n in range(1, 6):
        await hub.publish(fired(n))
    await hub.publish(fired(99, node=NODE))  # another node's: filtered out
    url = f"{web.url}/api/v1/stream"
    params = {"from_edge": OTHER, "since": "-1h", "heartbeat": "0.2"}
    async with httpx.AsyncClient(timeout=None) as client:
        async with client.stream("GET", url, params=params) as response:
            first = await take(response, 3)
        for n in range(6, 10):  # while the client is away
            await hub.publish(fired(n))
        resumed_from = first[-1].id
        assert resumed_from is not None
        async with client.stream("GET", url, params=params, headers={"Last-Event-ID": resumed_from}) as response:
            reader = Reader(response)
            rest = await reader.take(6)
            for n in range(10, 12):  # live again
                await hub.publish(fired(n))
            live = await reader.take(2)
            kept_alive = await reader.comment("keep-alive")
    values = [m.data["data"]["value"] for m in first + rest + live if m.data]
    assert values == [float(n) for n in range(1, 12)]
    seqs = [int(m.id or 0) for m in first + rest + live]
    assert seqs == sorted(set(seqs)) and all(m.data and m.id == str(m.data["seq"]) for m in first + rest + live)
    assert kept_alive


async def test_readings_follow_node_and_name_filters(hub: Bus, web: WebProcess) -> None:
    now = time.time_ns()
    n = 0
    for node in (NODE, OTHER):
        for name in ("env.temperature", "env.pressure", "sys.uptime"):
            n += 1
            await hub.publish(Event.new(Reading(name=name, value=float(n), timestamp=now + n, meta={"sensor": "bme680"}),
                                        source=f"node/{node}", subject=node, nodeseq=n))
    async with httpx.AsyncClient(timeout=None) as client:
        params = {"kind": "readings", "node": OTHER, "name": "env.*", "since": "-1h"}
        async with client.stream("GET", f"{web.url}/api/v1/stream", params=params) as response:
            got = await take(response, 2)
        exact = {"kind": "readings", "name": "sys.uptime", "since": "-1h"}
        async with client.stream("GET", f"{web.url}/api/v1/stream", params=exact) as response:
            uptime = await take(response, 2)
    assert [(m.data["node"], m.data["name"], m.data["value"]) for m in got if m.data] == [
        (OTHER, "env.temperature", 4.0), (OTHER, "env.pressure", 5.0)]
    assert got[0].data and got[0].data["meta"] == {"sensor": "bme680"} and got[0].data["timestamp"].endswith("Z")
    assert [(m.data["node"], m.data["value"]) for m in uptime if m.data] == [(NODE, 3.0), (OTHER, 6.0)]


async def test_packed_readings_are_one_sse_message_each_and_resume_inside_a_batch(hub: Bus, web: WebProcess) -> None:
    """Readings packed as the forwarder sends them (issue 18): one SSE message per reading, id
    SEQ:I; a client reconnecting with Last-Event-ID SEQ:I gets the rest of that batch and what
    follows, once; an exact name= still finds readings inside batches."""
    now = time.time_ns()
    names = ["env.temperature", "sys.uptime", "env.pressure"]
    bodies = [codec.encode(Event.new(Reading(name=names[i % 3], value=float(i), timestamp=now + i),
                                     source=f"node/{OTHER}", subject=OTHER, nodeseq=100 + i)) for i in range(9)]
    single = Event.new(Reading(name="sys.uptime", value=99.0, timestamp=now + 99), source=f"node/{OTHER}",
                       subject=OTHER, nodeseq=199)
    seq, = await hub.publish_raw_many([Outgoing(wire.batch_subject(OTHER), wire.pack(bodies), "b1")])
    await hub.publish(single)
    async with httpx.AsyncClient(timeout=None) as client:
        url = f"{web.url}/api/v1/stream"
        params = {"kind": "readings", "node": OTHER, "since": "-1h"}
        async with client.stream("GET", url, params=params) as response:
            first = await take(response, 4)
        async with client.stream("GET", url, params={**params, "last_event_id": first[-1].id}) as response:
            rest = await take(response, 6)
        exact = {"kind": "readings", "name": "sys.uptime", "since": "-1h"}
        async with client.stream("GET", url, params=exact) as response:
            uptime = await take(response, 4)
    assert [m.id for m in first] == [f"{seq}:{i}" for i in range(4)]
    assert [m.id for m in rest] == [f"{seq}:{i}" for i in range(4, 9)] + [str(seq + 1)]
    assert [m.data["value"] for m in first + rest if m.data] == [float(i) for i in range(9)] + [99.0]
    assert all(m.data and m.data["node"] == OTHER and m.data["seq"] == int((m.id or "").split(":")[0])
               for m in first + rest)
    assert [(m.id, m.data["value"]) for m in uptime if m.data] == [
        (f"{seq}:1", 1.0), (f"{seq}:4", 4.0), (f"{seq}:7", 7.0), (str(seq + 1), 99.0)]


def test_bad_stream_requests_are_json_errors(web: WebProcess) -> None:
    url = f"{web.url}/api/v1/stream"
    for params, headers, words in (
        ({"kind": "everything"}, {}, "not a stream"),
        ({"kind": "readings", "from_edge": "W001"}, {}, "filter events"),
        ({"node": "W001"}, {}, "filter readings"),
        ({"since": "yesterday"}, {}, "since"),
        ({}, {"Last-Event-ID": "abc"}, "Last-Event-ID"),
    ):
        answer = httpx.get(url, params=params, headers=headers, timeout=10)
        assert answer.status_code == 400, (params, answer.text)
        assert words in answer.json()["error"] and answer.json()["hint"]
    assert httpx.get(url, params={"heartbeat": "0"}, timeout=10).status_code == 422


async def test_to_edge_traffic_is_for_admins(hub: Bus, web: WebProcess) -> None:
    """The public NATS identity cannot read toedge.>: neither can an anonymous SSE client; an admin can."""
    from hivebus.auth.tokens import digest, new_token
    from hivebus.schemas.auth import UserAdded
    from hivebus.schemas.envelope import Event

    tokens = {user: new_token() for user in ("admin", "alice")}
    for user, token in tokens.items():
        await hub.publish(Event.new(UserAdded(user=user, token_sha256=digest(token), by="admin"),
                                    source="user/admin", subject=user))

    def opened(token: str | None) -> int:
        headers = {"Authorization": f"sage {token}"} if token else {}
        with httpx.Client(base_url=f"{web.url}/api/v1", timeout=10) as http, \
                http.stream("GET", "/stream", params={"to_edge": "*"}, headers=headers) as answer:
            return answer.status_code

    assert await asyncio.to_thread(opened, None) == 403
    assert await asyncio.to_thread(opened, tokens["alice"]) == 403
    assert await asyncio.to_thread(opened, "not-a-token") == 401
    assert await asyncio.to_thread(opened, tokens["admin"]) == 200


def test_the_unrouted_stream_leaves_to_edge_out_for_anonymous() -> None:
    from hivebus.web.stream import public_only, selection

    everything = selection("events", None, None, "*", None, None)
    assert "toedge.>" in everything.subjects
    assert public_only(everything, asked_to_edge=False).subjects == ["evt.>", "fromedge.>"]
