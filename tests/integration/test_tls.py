"""TLS on the hub's client port (``hivebus.auth.tls``), on a real nats-server.

The hub's own CA signs its server certificate; credentials carry the CA, so a node connects
over TLS and trusts that hub only. A plaintext client, a client trusting another CA and a
client reaching the hub by a name its certificate does not hold are refused, each with an
error that says what to do."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hivebus.auth.credentials import Credential
from hivebus.auth.hub import HubAuth
from hivebus.auth.permissions import SERVICE
from hivebus.auth.tls import HubTLS, client_context
from hivebus.bus.client import Bus
from hivebus.bus.streams import DATA
from hivebus.config import Settings
from hivebus.errors import ConnectError
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event
from tests.conftest import NatsServerFactory

pytestmark = pytest.mark.integration


@dataclass
class TlsHub:
    url: str
    data_dir: Path
    tls: HubTLS
    auth: HubAuth
    w001: Credential


@pytest.fixture
async def hub(nats_server_factory: NatsServerFactory, tmp_path: Path) -> AsyncIterator[TlsHub]:
    tls = HubTLS.ensure(tmp_path)
    HubTLS.activate(tmp_path, tls)
    auth = HubAuth.of_data_dir(tmp_path).ensure()
    w001 = auth.add_node("W001")
    server = nats_server_factory("hub", store_dir=tmp_path / "nats", include=auth.conf_path, tls=tls.server_block())
    assert server.url.startswith("tls://")
    async with await Bus.connect(server.url, settings=Settings(nats_credentials=auth.creds_path(SERVICE),
                                                               data_dir=tmp_path)) as bus:
        await bus.ensure_streams()
    yield TlsHub(server.url, tmp_path, tls, auth, w001)


def elsewhere(tmp_path: Path) -> Settings:
    """Settings of a machine that is not the hub (no data dir with a CA or admin creds)."""
    return Settings(data_dir=tmp_path / "elsewhere")


async def test_a_node_with_its_credential_connects_over_tls_and_publishes(hub: TlsHub, tmp_path: Path) -> None:
    assert hub.w001.ca == hub.tls.ca_pem()  # `hivebus node add` hands the CA over with the password
    creds = hub.w001.save(tmp_path / "W001.creds")
    assert Credential.load(creds) == hub.w001
    reading = Event.new(Reading(name="env.temperature", value=21.5, timestamp=1_700_000_000_000_000_000),
                        source="node/W001", subject="W001")
    settings = Settings(nats_credentials=creds, data_dir=tmp_path / "elsewhere")
    async with await Bus.connect(hub.url, settings=settings) as bus:
        assert bus.nc.connected_url is not None
        assert isinstance(bus.nc._transport._io_writer.get_extra_info("ssl_object"), ssl.SSLObject)
        seq = await bus.publish(reading)
    service = Settings(nats_credentials=hub.auth.creds_path(SERVICE), data_dir=hub.data_dir)
    async with await Bus.connect(hub.url, settings=service) as bus:
        assert (await bus.js.get_msg(DATA, seq)).data is not None


def test_a_plaintext_client_is_refused(hub: TlsHub) -> None:
    """A client speaking plain NATS (a password in the clear) is turned away before CONNECT counts."""
    host, port = hub.url.removeprefix("tls://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        stream = raw.makefile("rwb")
        info = json.loads(stream.readline().removeprefix(b"INFO "))
        assert info["tls_required"] is True
        connect = {"verbose": False, "user": "node-W001", "pass": hub.w001.password, "lang": "raw", "version": "0"}
        stream.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        stream.flush()
        answer = stream.read()  # until the server closes the connection
    assert b"PONG" not in answer
    assert b"TLS" in answer or answer == b""


async def test_a_client_without_the_ca_is_told_how_to_get_it(hub: TlsHub, tmp_path: Path) -> None:
    with pytest.raises(ConnectError) as refused:
        await Bus.connect(hub.url.replace("tls://", "nats://"), settings=elsewhere(tmp_path), connect_timeout=3,
                          user="node-W001", password=hub.w001.password)
    assert "requires TLS" in str(refused.value) and "HIVEBUS_TLS_CA" in (refused.value.hint or "")


async def test_a_client_trusting_another_ca_is_refused(hub: TlsHub, tmp_path: Path) -> None:
    other = HubTLS.ensure(tmp_path / "other-hub")
    impostor = hub.w001.with_ca(other.ca_pem())
    with pytest.raises(ConnectError) as refused:
        await Bus.connect(hub.url, settings=elsewhere(tmp_path), connect_timeout=3, **impostor.connect_options())
    assert "not trusted" in str(refused.value) and "CA" in (refused.value.hint or "")


async def test_a_name_the_certificate_does_not_hold_is_refused(hub: TlsHub, tmp_path: Path) -> None:
    """The hub's name is checked too: a certificate of the right CA for another name is no proof."""
    with pytest.raises(ConnectError) as refused:
        await Bus.connect(hub.url, settings=elsewhere(tmp_path), connect_timeout=3, tls_hostname="hub.example.org",
                          **hub.w001.connect_options())
    assert "not trusted" in str(refused.value) and "--tls-host" in (refused.value.hint or "")


async def test_a_client_holding_the_ca_never_talks_to_a_plaintext_impostor(
    hub: TlsHub, nats_server_factory: NatsServerFactory, tmp_path: Path,
) -> None:
    """A server without the hub's certificate at the hub's address gets a TLS hello, not a password."""
    impostor = nats_server_factory("impostor")  # plain NATS, no TLS
    with pytest.raises(ConnectError):
        await Bus.connect(impostor.url, settings=elsewhere(tmp_path), connect_timeout=3, **hub.w001.connect_options())


async def test_the_ca_file_serves_connections_without_credentials(hub: TlsHub, tmp_path: Path) -> None:
    ca = tmp_path / "hub-ca.pem"
    shutil.copy(hub.tls.ca_file, ca)
    async with await Bus.connect(hub.url, settings=Settings(tls_ca=ca, data_dir=tmp_path / "elsewhere")) as bus:
        info = await bus.js.account_info()  # the public identity, over TLS
        assert info is not None


def test_the_server_certificate_is_reissued_for_a_new_name_from_the_same_ca(tmp_path: Path) -> None:
    first = HubTLS.ensure(tmp_path)
    ca, cert = first.ca_pem(), first.cert_file.read_bytes()
    again = HubTLS.ensure(tmp_path)
    assert again.cert_file.read_bytes() == cert  # nothing new to cover: kept
    renamed = HubTLS.ensure(tmp_path, hosts=["hub.example.org"])
    assert renamed.ca_pem() == ca and renamed.cert_file.read_bytes() != cert
    assert (tmp_path / "tls" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "tls" / "server.key").stat().st_mode & 0o777 == 0o600
    context = client_context(ca)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_hivebus_up_with_tls_runs_the_platform_over_tls(tmp_path: Path) -> None:
    """``hivebus up --tls --virtual-nodes 1``: the virtual node, the handlers, the projector and
    the web API all reach the hub over TLS; the CLI on the hub machine too; a node added with
    ``hivebus node add`` gets a file that connects from elsewhere with nothing else copied."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    from hivebus.bus.ports import free_port

    data = tmp_path / ".hivebus"
    env = {**os.environ, "HIVEBUS_LOG_LEVEL": "info", "COLUMNS": "200", "HIVEBUS_DATA_DIR": str(data)}
    for name in ("HIVEBUS_NATS_URL", "HIVEBUS_NATS_CREDENTIALS", "HIVEBUS_TLS_CA"):
        env.pop(name, None)
    port = free_port()
    log = tmp_path / "up.log"
    with log.open("wb") as sink:
        up = subprocess.Popen(
            [sys.executable, "-m", "hivebus", "up", "--tls", "--virtual-nodes", "1", "--nats-port", str(port),
             "--http-port", "0", "--data-dir", str(data)],
            cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def hivebus(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hivebus", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60)

    try:
        deadline = time.monotonic() + 90
        counted = None
        while time.monotonic() < deadline:
            assert up.poll() is None, log.read_text()[-4000:]
            done = hivebus("query", "--hub", f"tls://127.0.0.1:{port}", "--format", "csv",
                           "select count(*) as n from readings where meta['node'] = 'V001'")
            if done.returncode == 0 and (lines := done.stdout.split()) and lines[-1].isdigit() and int(lines[-1]) > 0:
                counted = int(lines[-1])
                break
            time.sleep(1)
        assert counted, f"no reading of V001 over TLS: {done.stdout}{done.stderr}\n{log.read_text()[-4000:]}"
        text = log.read_text()
        assert f"tls://127.0.0.1:{port}" in text and "tls       required" in text
        node_port = (data / "tls" / "node-port").read_text().strip()
        assert f"certificate on port {node_port}" in text  # the node listener, for the firewall
        node_log = (data / "logs" / "node-V001.log").read_text()
        assert f'"url": "wss://127.0.0.1:{node_port}"' in node_log  # the virtual node by its certificate
        url = next(w for line in text.splitlines() if line.startswith("HTTP") for w in line.split() if w.startswith("http://"))
        nodes = httpx.get(f"{url}/api/v1/nodes", timeout=30).json()["items"]
        assert [n["node_id"] for n in nodes] == ["V001"]

        added = hivebus("node", "add", "W100", "--out", str(tmp_path / "W100.creds"), "--data-dir", str(data))
        assert added.returncode == 0, added.stdout + added.stderr
        assert Credential.load(tmp_path / "W100.creds").ca == (data / "tls" / "ca.pem").read_text()
        by_nats_url = hivebus("query", "--hub", f"nats://127.0.0.1:{port}", "select 1")
        assert by_nats_url.returncode == 0  # the hub machine's CLI finds the CA in the data dir: TLS all the same
        away = {k: v for k, v in env.items() if k != "HIVEBUS_DATA_DIR"}
        elsewhere = subprocess.run([sys.executable, "-m", "hivebus", "query", "--hub", f"tls://127.0.0.1:{port}",
                                    "select 1"], cwd=tmp_path, env={**away, "HIVEBUS_DATA_DIR": str(tmp_path / "elsewhere")},
                                   capture_output=True, text=True, timeout=60)
        assert elsewhere.returncode != 0 and "HIVEBUS_TLS_CA" in elsewhere.stderr and "Traceback" not in elsewhere.stderr
    finally:
        up.terminate()
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]
