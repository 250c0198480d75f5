"""A site leaf linked to a 3-server JetStream cluster hub (issue 20, item 4; docs/sites.md).

The hub is a ``NatsCluster`` whose members listen for leaves, with the JetStream domain and
the hub's identities; the streams are R3. The site's leaf has one remote listing all three
members and links with the site's credential; a node's outbox and forwarder behind it keep
appending while the member the leaf is linked to is SIGKILLed: the link moves to another
member and every reading is in the hub's DATA once, in the node's order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from hivebus.auth.hub import HubAuth
from hivebus.auth.permissions import SERVICE
from hivebus.bus.batch import bodies_of
from hivebus.bus.client import Bus
from hivebus.bus.cluster import NatsCluster
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import DATA, platform_streams
from hivebus.bus.subjects import data_filter
from hivebus.cli.site import write_leaf_auth
from hivebus.config import Settings
from hivebus.edge.db import NodeDatabase
from hivebus.edge.forwarder import Forwarder, ForwarderOptions
from hivebus.edge.outbox import Outbox
from hivebus.edge.uplink import Uplink
from hivebus.errors import BusError
from hivebus.schemas.codec import decode
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event
from tests.integration.test_leafnode import until

pytestmark = pytest.mark.integration

NODE = "W0C1"


def reading(i: int) -> Event:
    return Event.new(
        Reading(name="env.temperature", value=20.0 + i % 7, timestamp=time.time_ns(), meta={"i": str(i)}),
        source=f"node/{NODE}",
        subject=NODE,
    )


@pytest.fixture
def hub_auth(tmp_path: Path) -> HubAuth:
    return HubAuth(tmp_path / "hub" / "auth").ensure()


@pytest.fixture
def cluster(tmp_path: Path, server_binary: Path, hub_auth: HubAuth) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "cluster", size=3, fsync="interval", leafnodes=True,
                          jetstream_domain="hub", include=hub_auth.conf_path)
    try:
        cluster.start()
        yield cluster
    finally:
        for server in cluster.servers:
            try:
                server.stop(timeout=5.0)
            except Exception:
                server.kill()


def linked_member(cluster: NatsCluster) -> NatsServer | None:
    """The running member the site's leaf is linked to, if any."""
    for server in cluster.servers:
        if not server.is_running():
            continue
        try:
            if server.monitor("leafz", timeout=0.5).get("leafnodes", 0) >= 1:
                return server
        except BusError:
            continue
    return None


async def readings_in_data(urls: list[str], settings: Settings) -> list[int]:
    async with await Bus.connect(urls, settings=settings) as bus:
        seqs: list[int] = []
        async for batch in bus.read(DATA, filter_subjects=[data_filter(NODE)], stop_at_end=True):
            for m in batch:
                for body in bodies_of(m.data):
                    nodeseq = decode(body).nodeseq
                    assert nodeseq is not None
                    seqs.append(nodeseq)
        return seqs


async def test_a_leafs_link_fails_over_to_another_cluster_member_and_each_reading_is_stored_once(
    tmp_path: Path, cluster: NatsCluster, hub_auth: HubAuth, nats_server_factory: Callable[..., NatsServer]
) -> None:
    creds_file = hub_auth.add_node(NODE).save(tmp_path / f"{NODE}.creds")
    site = hub_auth.add_site("east", [NODE])
    for server in cluster.servers:
        server.reload()
    service = Settings(nats_credentials=hub_auth.creds_path(SERVICE), replicas=3,
                       duplicate_window=timedelta(seconds=30))
    async with await Bus.connect(cluster.urls, settings=service) as bus:
        await bus.ensure_streams(platform_streams(service))

    leaf = nats_server_factory(
        "site", jetstream=False, hub_jetstream_domain="hub",
        leafnode_remotes=tuple(site.remote_url(u) for u in cluster.leafnode_urls),
        include=write_leaf_auth(tmp_path / "site" / "auth", site),
    )
    await until(lambda: linked_member(cluster) is not None, 15, "the site's leaf to link to a member")

    db = await NodeDatabase.open(tmp_path / "node.db")
    outbox = await Outbox.open(db, NODE)
    uplink = Uplink(leaf.url, name=f"test-{NODE}", settings=Settings(nats_credentials=creds_file),
                    connect_timeout=1.0, retry_max=0.5)
    forwarder = Forwarder(outbox, uplink, ForwarderOptions(batch=200, ack_timeout=2.0, retry_max=0.5))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(uplink.run(stop)), asyncio.create_task(forwarder.run(stop))]
    appended: list[int] = []
    try:
        appended += [s for s in await outbox.append_many([reading(i) for i in range(300)]) if s]
        await until(lambda: outbox.backlog_now()[0] == 0, 30, "the first readings to reach the cluster")

        first = linked_member(cluster)
        assert first is not None
        # the node keeps producing while the member its site is linked to dies
        for start in range(300, 1300, 250):
            appended += [s for s in await outbox.append_many([reading(i) for i in range(start, start + 250)]) if s]
            if start == 300:
                await asyncio.to_thread(first.kill)
            await asyncio.sleep(0.2)
        await until(lambda: (m := linked_member(cluster)) is not None and m is not first, 20,
                    "the leaf's link to move to another member")
        await until(lambda: outbox.backlog_now()[0] == 0, 120, "the outbox to drain over the moved link")
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await uplink.close()
        await outbox.close()
        await db.close()

    survivors = [s.url for s in cluster.servers if s.is_running()]
    assert len(survivors) == 2
    seqs = await readings_in_data(survivors, service)
    assert len(appended) == 1300
    assert len(seqs) == len(set(seqs)), "a reading is in the hub's DATA twice"
    assert set(seqs) == set(appended), "a reading is missing from the hub's DATA"
    assert seqs == sorted(seqs), "the node's order is broken"
