"""A site leaf against an authenticating hub (issue 20, item 4; docs/sites.md "Authentication").

The hub runs with its identities (``hivebus.auth``): nodes and a site credential from
``HubAuth.add_site``. The leaf links with the site's user and admits only the site's nodes,
each with the credential ``hivebus node add`` gave it and confined to its own subjects. The
hub bounds the link to the site's nodes, so even a leaf whose config was tampered with cannot
speak for a node of another site. The CLI test runs ``hivebus site hub`` / ``site add`` /
``site run`` as processes, including a leaf with a wrong credential, refused and said so.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from nats.errors import Error as NatsError

from hivebus.auth.credentials import Credential
from hivebus.auth.hub import HubAuth
from hivebus.auth.permissions import SERVICE
from hivebus.auth.sites import SiteCredential
from hivebus.bus.batch import bodies_of
from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import DATA, platform_streams
from hivebus.bus.subjects import data_filter
from hivebus.cli.site import write_leaf_auth
from hivebus.config import Settings
from hivebus.edge.db import NodeDatabase
from hivebus.edge.forwarder import Forwarder, ForwarderOptions
from hivebus.edge.outbox import Outbox
from hivebus.edge.uplink import Uplink
from hivebus.schemas.codec import decode, encode
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event
from tests.integration.test_leafnode import read_until, start_cli, stop_cli, until

pytestmark = pytest.mark.integration

NODE, OTHER, STRANGER = "W0S1", "W0S2", "W0X9"  # two nodes of site "north"; one of no site


def reading(node: str, i: int) -> Event:
    return Event.new(
        Reading(name="env.temperature", value=20.0 + i % 7, timestamp=time.time_ns(), meta={"i": str(i)}),
        source=f"node/{node}",
        subject=node,
    )


async def stored(bus: Bus, node: str) -> list[Event]:
    """Every reading of ``node`` in the hub's DATA, a batch counted reading by reading."""
    out: list[Event] = []
    async for batch in bus.read(DATA, filter_subjects=[data_filter(node)], stop_at_end=True):
        for m in batch:
            out += [decode(body) for body in bodies_of(m.data)]
    return out


class Hub:
    def __init__(self, auth: HubAuth, server: NatsServer, creds: dict[str, Credential]) -> None:
        self.auth, self.server, self.creds = auth, server, creds

    async def bus(self) -> Bus:
        """A connection as the hub's service identity."""
        return await Bus.connect(self.server.url, settings=Settings(nats_credentials=self.auth.creds_path(SERVICE)))


@pytest.fixture
def hub(tmp_path: Path, nats_server_factory: Callable[..., NatsServer]) -> Hub:
    auth = HubAuth(tmp_path / "hub" / "auth").ensure()
    creds = {n: auth.add_node(n) for n in (NODE, OTHER, STRANGER)}
    server = nats_server_factory("hub", leafnode_port=0, jetstream_domain="hub", include=auth.conf_path)
    return Hub(auth, server, creds)


def leaf_for(make: Callable[..., NatsServer], tmp_path: Path, hub: Hub, site: SiteCredential) -> NatsServer:
    include = write_leaf_auth(tmp_path / "site" / "auth", site)
    return make("site", leafnode_remotes=(site.remote_url(hub.server.leafnode_url),), jetstream=False,
                hub_jetstream_domain="hub", include=include)


def linked(hub: NatsServer) -> bool:
    return bool(hub.monitor("leafz").get("leafnodes", 0) >= 1)


async def test_a_node_behind_an_authenticated_leaf_delivers_once_and_only_as_itself(
    tmp_path: Path, hub: Hub, nats_server_factory: Callable[..., NatsServer]
) -> None:
    site = hub.auth.add_site("north", [NODE, OTHER])
    hub.server.reload()
    leaf = leaf_for(nats_server_factory, tmp_path, hub, site)
    await until(lambda: linked(hub.server), 10, "the site's leaf to link to the hub")
    async with await hub.bus() as bus:
        await bus.ensure_streams(platform_streams(Settings()))

    # the node's outbox and forwarder on the leaf, with the node's own hub credential
    creds_file = hub.creds[NODE].save(tmp_path / f"{NODE}.creds")
    db = await NodeDatabase.open(tmp_path / "node.db")
    outbox = await Outbox.open(db, NODE)
    uplink = Uplink(leaf.url, name=f"test-{NODE}", settings=Settings(nats_credentials=creds_file),
                    connect_timeout=1.0, retry_max=0.5)
    forwarder = Forwarder(outbox, uplink, ForwarderOptions(batch=200, ack_timeout=2.0, retry_max=0.5))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(uplink.run(stop)), asyncio.create_task(forwarder.run(stop))]
    try:
        appended = [s for s in await outbox.append_many([reading(NODE, i) for i in range(500)]) if s]
        await until(lambda: outbox.backlog_now()[0] == 0, 30, "the outbox to drain over the leaf")
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await uplink.close()
        await outbox.close()
        await db.close()
    async with await hub.bus() as bus:
        got = await stored(bus, NODE)
    seqs = [e.nodeseq for e in got]
    assert len(seqs) == len(set(seqs)) == 500, "each reading once in the hub's DATA"
    assert set(seqs) == set(appended)

    # the same node cannot publish as the other node of its site: the leaf refuses it
    forged = reading(OTHER, 1)
    denied: list[str] = []

    async def on_error(exc: Exception) -> None:
        denied.append(str(exc))

    nc = await nats.connect(leaf.url, **hub.creds[NODE].connect_options(), error_cb=on_error)
    try:
        js = nc.jetstream()
        with pytest.raises((NatsError, TimeoutError)):
            await js.publish(f"data.{OTHER}.env.temperature", encode(forged), timeout=2)
        await js.publish(f"data.{NODE}.env.temperature", encode(reading(NODE, 999)), timeout=5)  # itself: fine
    finally:
        await nc.close()
    assert any("permissions violation" in d.lower() and OTHER.lower() in d.lower() for d in denied), denied
    async with await hub.bus() as bus:
        assert await stored(bus, OTHER) == []
        assert len(await stored(bus, NODE)) == 501

    # a connection to the leaf without a node's credential is refused
    with pytest.raises(NatsError):
        await nats.connect(leaf.url, connect_timeout=1, max_reconnect_attempts=0, allow_reconnect=False)


async def test_the_hub_bounds_a_tampered_leaf_to_its_sites_nodes(
    tmp_path: Path, hub: Hub, nats_server_factory: Callable[..., NatsServer]
) -> None:
    """A leaf machine taken over (its file edited to admit a node of no site) still speaks
    only for the site's nodes: the hub's permissions on the link drop the rest."""
    site = hub.auth.add_site("north", [NODE])
    hub.server.reload()
    stranger_hash = hub.auth.users()[f"node-{STRANGER}"]
    tampered = SiteCredential(**{**site.__dict__, "nodes": {**site.nodes, STRANGER: stranger_hash}})
    leaf = leaf_for(nats_server_factory, tmp_path, hub, tampered)
    await until(lambda: linked(hub.server), 10, "the site's leaf to link to the hub")
    async with await hub.bus() as bus:
        await bus.ensure_streams(platform_streams(Settings()))

    nc = await nats.connect(leaf.url, **hub.creds[STRANGER].connect_options())
    try:
        js = nc.jetstream()
        # the leaf admits it (its own rules are the tampered ones), the hub does not answer
        with pytest.raises((NatsError, TimeoutError)):
            await js.publish(f"data.{STRANGER}.env.temperature", encode(reading(STRANGER, 1)), timeout=2)
        await nc.publish(f"evt.ses.goal.set.{STRANGER}", b"{}")  # the platform's own decisions: never
        await nc.flush()
    finally:
        await nc.close()
    async with await hub.bus() as bus:
        assert await stored(bus, STRANGER) == []
        assert await bus.last_seq("EVENTS") == 0


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_site_cli_links_with_a_site_credential_and_refuses_a_wrong_one(tmp_path: Path, server_binary: Path, tls: bool) -> None:
    hub = start_cli("site", "hub", "--data-dir", str(tmp_path / "hub"), "--nats-port", "0",
                    "--leafnode-port", "0", *(["--tls"] if tls else []), cwd=tmp_path)
    procs = [hub]
    try:
        hub_url = read_until(hub, r"running at ((?:nats|tls)://\S+)").group(1)
        leaf_url = read_until(hub, r"site run --hub (nats-leaf://\S+)").group(1)
        for args in (("node", "add", NODE, "--out", f"{NODE}.creds"),
                     ("site", "add", "north", "--node", NODE, "--out", "north.creds")):
            add = start_cli(*args, "--data-dir", str(tmp_path / "hub"), cwd=tmp_path)
            output, _ = add.communicate(timeout=60)
            assert add.returncode == 0, output
        assert "hub reloaded" in output

        good = start_cli("site", "run", "--hub", leaf_url, "--credentials", "north.creds",
                         "--data-dir", str(tmp_path / "site"), "--nats-port", "0", cwd=tmp_path)
        procs.append(good)
        site_url = read_until(good, r"site leaf running at ((?:nats|tls)://\S+),").group(1)
        assert site_url.startswith("tls://") == tls  # a TLS hub's leaf serves its nodes TLS too
        read_until(good, r"link: up")
        # the leaf's config holds the link's password: owner-only
        conf = tmp_path / "site" / "nats" / "nats-server.conf"
        assert conf.stat().st_mode & 0o077 == 0

        async def publish_and_count() -> int:
            node = Credential.load(tmp_path / f"{NODE}.creds")
            assert (node.ca is not None) == tls  # the node's own credential, unchanged
            nc = await nats.connect(site_url, **node.connect_options())
            try:
                await nc.jetstream().publish(f"data.{NODE}.env.temperature", encode(reading(NODE, 1)), timeout=5)
            finally:
                await nc.close()
            async with await Bus.connect(hub_url, settings=Settings(data_dir=tmp_path / "hub")) as bus:
                return len(await stored(bus, NODE))

        assert asyncio.run(publish_and_count()) == 1
        password = json.loads((tmp_path / "north.creds").read_text())["password"]
        assert password not in (tmp_path / "site" / "nats" / "nats-server.log").read_text()

        wrong = json.loads((tmp_path / "north.creds").read_text())
        wrong["password"] = "not-the-password"
        (tmp_path / "wrong.creds").write_text(json.dumps(wrong))
        bad = start_cli("site", "run", "--hub", leaf_url, "--credentials", "wrong.creds", "--name", "bad",
                        "--data-dir", str(tmp_path / "bad-site"), "--nats-port", "0", cwd=tmp_path)
        procs.append(bad)
        output, _ = bad.communicate(timeout=60)
        assert bad.returncode != 0
        assert "refused this site's credential" in output and "hivebus site add north --rotate" in output
        assert "Traceback" not in output
        assert "not-the-password" not in output
    finally:
        for proc in reversed(procs):
            stop_cli(proc)
