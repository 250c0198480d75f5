"""Per-node client certificates (``auth.tls.issue_node_cert``, ``auth.node_certs``), on real nats-servers.

A TLS hub with its own CA opens a node listener (nats-server's websocket port, ``tls { verify:
true }``); ``hivebus node add`` puts a client certificate for ``node-<ID>`` in the node's
credential, and the auth callout lets a connection in there only as the node its certificate
was issued to. The client port keeps asking nobody for a certificate (users, the public)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from hivebus.auth.credentials import Credential
from hivebus.auth.hub import HubAuth
from hivebus.auth.permissions import SERVICE
from hivebus.auth.tls import HubTLS, issue_node_cert
from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import DATA
from hivebus.config import Settings
from hivebus.edge.uplink import Uplink
from hivebus.errors import ConnectError, CredentialRefused
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event
from tests.conftest import NatsServerFactory

pytestmark = pytest.mark.integration


@dataclass
class CertHub:
    server: NatsServer
    data_dir: Path
    tls: HubTLS
    auth: HubAuth
    tmp: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def node_url(self) -> str:
        return f"wss://127.0.0.1:{self.tls.node_port}"

    def node_add(self, node: str, *extra: str) -> Path:
        """``hivebus node add NODE --out FILE`` as the operator runs it on the hub."""
        out = self.tmp / f"{node}.creds"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEBUS_")}
        done = subprocess.run([sys.executable, "-m", "hivebus", "node", "add", node, "--out", str(out), "--data-dir",
                               str(self.data_dir), "--hub", self.url, *extra],
                              capture_output=True, text=True, env={**env, "COLUMNS": "200"}, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "node listener wss://127.0.0.1:" in done.stdout
        return out

    def away(self, creds: Path | None) -> Settings:
        """Settings of a node machine: the credential only (no hub data dir)."""
        return Settings(nats_credentials=creds, data_dir=self.tmp / "elsewhere", tls_ca=self.tls.ca_file if creds is None else None)


@pytest.fixture
async def hub(nats_server_factory: NatsServerFactory, tmp_path: Path) -> AsyncIterator[CertHub]:
    data = tmp_path / "hub"
    tls = HubTLS.choose(data, enabled=True)
    assert tls is not None and tls.node_port is not None and tls.node_block() is not None
    auth = HubAuth.of_data_dir(data).ensure()
    server = nats_server_factory("hub", store_dir=data / "nats", include=auth.conf_path, tls=tls.server_block(),
                                 node_port=tls.node_port, node_tls=tls.node_block())
    async with await Bus.connect(server.url, settings=Settings(nats_credentials=auth.creds_path(SERVICE),
                                                               data_dir=data), connect_timeout=30) as bus:
        await bus.ensure_streams()  # (30 s: a TLS connect once took over 5 s on the loaded 2-core VM)
    yield CertHub(server, data, tls, auth, tmp_path)


def reading(node: str) -> Event:
    return Event.new(Reading(name="env.temperature", value=21.5, timestamp=1_700_000_000_000_000_000),
                     source=f"node/{node}", subject=node)


async def stored(hub: CertHub, seq: int) -> bool:
    service = Settings(nats_credentials=hub.auth.creds_path(SERVICE), data_dir=hub.data_dir)
    async with await Bus.connect(hub.url, settings=service, connect_timeout=20) as bus:
        return (await bus.js.get_msg(DATA, seq)).data is not None


async def test_a_node_with_its_own_certificate_connects_on_the_node_listener_and_publishes(hub: CertHub) -> None:
    creds = hub.node_add("W012")
    assert oct(creds.stat().st_mode & 0o777) == "0o600"  # the file holds the key
    credential = Credential.load(creds)
    assert credential.cert and credential.key and credential.node_url == hub.node_url
    assert credential.ca == hub.tls.ca_pem()
    # the uplink finds the node listener from the credential, given the hub's client URL
    uplink = Uplink(hub.url, name="node-W012", settings=hub.away(creds), node="W012")
    stop = asyncio.Event()
    task = asyncio.create_task(uplink.run(stop))
    try:
        async with asyncio.timeout(15):
            bus = await uplink.wait_online(stop)
        assert bus is not None and uplink.connected_url == hub.node_url
        seq = await bus.publish(reading("W012"))
    finally:
        stop.set()
        await task
        await uplink.close()
    assert await stored(hub, seq)


async def test_a_node_presenting_another_nodes_certificate_is_refused(hub: CertHub) -> None:
    w012, w013 = Credential.load(hub.node_add("W012")), Credential.load(hub.node_add("W013"))
    borrowed = replace(w012, cert=w013.cert, key=w013.key)
    path = borrowed.save(hub.tmp / "borrowed.creds")
    with pytest.raises(CredentialRefused):
        await Bus.connect(hub.node_url, settings=hub.away(path), connect_timeout=15)
    own = w013.save(hub.tmp / "own.creds")  # the same certificate with its own identity works
    async with await Bus.connect(hub.node_url, settings=hub.away(own), connect_timeout=20) as bus:
        assert await stored(hub, await bus.publish(reading("W013")))


async def test_a_client_without_a_certificate_is_refused_on_the_node_listener(hub: CertHub) -> None:
    w012 = Credential.load(hub.node_add("W012"))
    bare = replace(w012, cert=None, key=None).save(hub.tmp / "bare.creds")
    with pytest.raises(ConnectError):  # the TLS handshake fails: nats-server requires a certificate
        await Bus.connect(hub.node_url, settings=hub.away(bare), connect_timeout=15)
    with pytest.raises(ConnectError):  # the public identity has none either
        await Bus.connect(hub.node_url, settings=hub.away(None), connect_timeout=15)


async def test_a_certificate_from_another_ca_is_refused(hub: CertHub, tmp_path: Path) -> None:
    w012 = Credential.load(hub.node_add("W012"))
    other = tmp_path / "other-hub"
    HubTLS.choose(other, enabled=True)
    forged = issue_node_cert(other, "W012")  # CN node-W012, but another CA signed it
    assert forged is not None
    path = replace(w012, cert=forged.cert, key=forged.key).save(tmp_path / "forged.creds")
    with pytest.raises(ConnectError):
        await Bus.connect(hub.node_url, settings=hub.away(path), connect_timeout=15)


async def test_a_node_holding_a_certificate_cannot_use_its_password_alone_on_the_client_port(hub: CertHub) -> None:
    creds = hub.node_add("W012")
    with pytest.raises(CredentialRefused):
        await Bus.connect(hub.url, settings=hub.away(creds), connect_timeout=15)


async def test_users_and_public_connections_on_the_client_port_need_no_certificate(hub: CertHub) -> None:
    hub.node_add("W012")  # the hub issues certificates; nobody else on the client port needs one
    async with await Bus.connect(hub.url, settings=hub.away(None), connect_timeout=20) as public:
        await public.nc.flush()
        assert public.nc.is_connected
    legacy = hub.auth.add_node("W001").save(hub.tmp / "W001.creds")  # a password credential, no certificate
    async with await Bus.connect(hub.url, settings=hub.away(legacy), connect_timeout=20) as node:
        assert await stored(hub, await node.publish(reading("W001")))


async def test_rotate_reissues_the_certificate_and_the_old_one_stops_working(hub: CertHub) -> None:
    old = Credential.load(hub.node_add("W012"))
    kept = old.save(hub.tmp / "old.creds")
    new = Credential.load(hub.node_add("W012", "--rotate"))
    assert new.cert != old.cert
    old_cert_new_password = replace(new, cert=old.cert, key=old.key).save(hub.tmp / "mixed.creds")
    for path in (kept, old_cert_new_password):
        with pytest.raises(CredentialRefused):
            await Bus.connect(hub.node_url, settings=hub.away(path), connect_timeout=15)
    async with await Bus.connect(hub.node_url, settings=hub.away(hub.tmp / "W012.creds"), connect_timeout=20) as bus:
        assert await stored(hub, await bus.publish(reading("W012")))


async def test_a_removed_nodes_certificate_stops_working_at_once(hub: CertHub) -> None:
    creds = hub.node_add("W012")
    bus = await Bus.connect(hub.node_url, settings=hub.away(creds), connect_timeout=20)
    try:
        await bus.publish(reading("W012"))
        assert hub.auth.remove_node("W012")
        assert hub.auth.reload(hub.data_dir / "nats")
        async with asyncio.timeout(10):
            while bus.nc.is_connected:  # the server asks the callout again and closes it
                await asyncio.sleep(0.05)
    finally:
        await bus.close()
    with pytest.raises(CredentialRefused):
        await Bus.connect(hub.node_url, settings=hub.away(creds), connect_timeout=15)


async def test_a_node_on_the_node_listener_reconnects_after_a_hub_restart(hub: CertHub) -> None:
    creds = hub.node_add("W012")
    async with await Bus.connect(hub.node_url, settings=hub.away(creds), connect_timeout=20) as bus:
        await bus.publish(reading("W012"))
        hub.server.stop()
        async with asyncio.timeout(10):
            while bus.nc.is_connected:
                await asyncio.sleep(0.05)
        await asyncio.to_thread(hub.server.start)
        async with asyncio.timeout(30):
            while not bus.nc.is_connected:
                await asyncio.sleep(0.1)
        assert bus.nc.connected_url is not None and bus.nc.connected_url.scheme == "wss"
        assert await stored(hub, await bus.publish(reading("W012")))


async def test_hivebus_server_tls_and_a_node_run_with_its_certificate(tmp_path: Path) -> None:
    """The commands as an operator runs them: `hivebus server --tls`, `hivebus node add`, and
    `hivebus node run --hub tls://...` on another machine (data dir), which finds the node
    listener from its credential and delivers its readings there."""
    from hivebus.bus.ports import free_port

    data = tmp_path / "hub"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEBUS_")}
    env.update({"COLUMNS": "200", "HIVEBUS_LOG_LEVEL": "info"})
    port = free_port()
    url = f"tls://127.0.0.1:{port}"
    server_log, node_log = (tmp_path / "server.log").open("wb"), (tmp_path / "node.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "hivebus", "server", "--tls", "--nats-port", str(port),
                               "--data-dir", str(data)], env=env, stdout=server_log, stderr=subprocess.STDOUT)
    node: subprocess.Popen[bytes] | None = None
    try:
        async with asyncio.timeout(60):
            while "stop: Ctrl-C" not in (tmp_path / "server.log").read_text():
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                await asyncio.sleep(0.2)
        assert "node listener on port" in (tmp_path / "server.log").read_text()
        creds = tmp_path / "W012.creds"
        added = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "hivebus", "node", "add", "W012", "--out",
                                                         str(creds), "--data-dir", str(data), "--hub", url],
                                        capture_output=True, text=True, env=env, timeout=60)
        assert added.returncode == 0, added.stdout + added.stderr
        node = subprocess.Popen([sys.executable, "-m", "hivebus", "node", "run", "--node-id", "W012", "--virtual",
                                 "--virtual-interval", "0.5", "--heartbeat", "1", "--hub", url, "--credentials", str(creds),
                                 "--data-dir", str(tmp_path / "node")],
                                env={**env, "HIVEBUS_DATA_DIR": str(tmp_path / "elsewhere")}, stdout=node_log,
                                stderr=subprocess.STDOUT)
        service = Settings(nats_credentials=data / "auth" / f"{SERVICE}.creds", data_dir=data)
        async with await Bus.connect(url, settings=service) as bus:
            async with asyncio.timeout(60):
                while (await bus.js.stream_info(DATA)).state.messages == 0:
                    assert node.poll() is None, (tmp_path / "node.log").read_text()
                    await asyncio.sleep(0.3)
        text = (tmp_path / "node.log").read_text()
        connected = [json.loads(line) for line in text.splitlines() if '"uplink.connected"' in line]
        assert [c["url"] for c in connected] == [Credential.load(creds).node_url], text
    finally:
        for proc in (node, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        server_log.close()
        node_log.close()
    for log in ("server.log", "node.log"):
        assert "Traceback" not in (tmp_path / log).read_text(), (tmp_path / log).read_text()[-3000:]


async def test_a_node_that_cannot_reach_the_node_listener_is_told_so(hub: CertHub) -> None:
    """Its fallback to the client port is refused (password alone): the refusal names the listener."""
    from hivebus.bus.ports import free_port

    credential = Credential.load(hub.node_add("W012"))
    closed = replace(credential, node_url=f"wss://127.0.0.1:{free_port()}").save(hub.tmp / "closed.creds")
    uplink = Uplink(hub.url, name="node-W012", settings=hub.away(closed), node="W012")
    stop = asyncio.Event()
    task = asyncio.create_task(uplink.run(stop))
    try:
        async with asyncio.timeout(15):
            while uplink.refused is None:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
        await uplink.close()
    assert "node listener did not answer" in uplink.refused and "open the node listener's port" in uplink.refused
    assert uplink.bus is None


async def test_a_refusal_ends_the_connect_at_once_not_after_its_timeout(hub: CertHub, tmp_path: Path) -> None:
    """The callout's refusal (another node's certificate) and a failed handshake (another CA)
    end ``Bus.connect`` when they come: before, each waited out the whole connect timeout."""
    w012, w013 = Credential.load(hub.node_add("W012")), Credential.load(hub.node_add("W013"))
    borrowed = replace(w012, cert=w013.cert, key=w013.key).save(tmp_path / "borrowed.creds")
    other = tmp_path / "other-hub"
    HubTLS.choose(other, enabled=True)
    forged_cert = issue_node_cert(other, "W012")
    assert forged_cert is not None
    forged = replace(w012, cert=forged_cert.cert, key=forged_cert.key).save(tmp_path / "forged.creds")
    for path, error in ((borrowed, CredentialRefused), (forged, ConnectError)):
        async with asyncio.timeout(60):  # far below the connect's own hour
            with pytest.raises(error):
                await Bus.connect(hub.node_url, settings=hub.away(path), connect_timeout=3600)
