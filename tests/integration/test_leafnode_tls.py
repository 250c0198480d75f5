"""A site leaf linked to a TLS hub (issue 20, item 4; docs/sites.md "TLS").

The hub runs TLS with its own CA (``auth.tls``) on its client and leafnode ports. The site
credential carries the hub's CA, with which the leaf's link verifies the hub, and a
certificate for the leaf's client port signed by that CA: a node connects to the leaf over
TLS with the very credential ``hivebus node add`` gave it (it carries the CA) and its reading
reaches the hub's DATA. A leaf that trusts another CA never links.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hivebus.auth.hub import HubAuth
from hivebus.auth.permissions import SERVICE
from hivebus.auth.sites import SiteCredential
from hivebus.auth.tls import HubTLS
from hivebus.bus.batch import bodies_of
from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import DATA
from hivebus.bus.subjects import data_filter
from hivebus.cli.site import leaf_config
from hivebus.config import Settings
from hivebus.schemas.codec import decode, encode
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event
from tests.integration.test_leafnode import until

pytestmark = pytest.mark.integration

NODE = "W0T1"


@pytest.fixture
def leaves() -> Iterator[list[NatsServer]]:
    made: list[NatsServer] = []
    try:
        yield made
    finally:
        for server in made:
            server.stop(timeout=5)


async def test_a_leaf_links_to_a_tls_hub_and_its_nodes_connect_over_tls_with_their_own_credential(
    tmp_path: Path, nats_server_factory: Callable[..., NatsServer], leaves: list[NatsServer]
) -> None:
    hub_dir = tmp_path / "hub"
    tls = HubTLS.choose(hub_dir, enabled=True)
    assert tls is not None
    auth = HubAuth.of_data_dir(hub_dir).ensure()
    node = auth.add_node(NODE)
    assert node.ca is not None  # the node's credential carries the hub's CA, as for any node
    site = auth.add_site("tls-site", [NODE])
    assert site.ca == node.ca and site.leaf_cert is not None
    hub = nats_server_factory("hub", store_dir=hub_dir / "nats", include=auth.conf_path, leafnode_port=0,
                              jetstream_domain="hub", tls=tls.server_block(), leafnode_tls=tls.leafnode_block())
    service = Settings(nats_credentials=auth.creds_path(SERVICE), data_dir=tmp_path / "nowhere")
    async with await Bus.connect(hub.url, settings=service) as bus:
        await bus.ensure_streams()

    leaf = NatsServer(leaf_config(tmp_path / "site", [hub.leafnode_url], site)).start()
    leaves.append(leaf)
    assert leaf.url.startswith("tls://")
    await until(lambda: hub.monitor("leafz").get("leafnodes", 0) >= 1, 10, "the leaf to link over TLS")

    creds = node.save(tmp_path / f"{NODE}.creds")
    event = Event.new(Reading(name="env.temperature", value=21.5, timestamp=time.time_ns()),
                      source=f"node/{NODE}", subject=NODE)
    async with await Bus.connect(leaf.url, settings=Settings(nats_credentials=creds, data_dir=tmp_path / "nowhere")) as nb:
        await nb.js.publish(f"data.{NODE}.env.temperature", encode(event), timeout=5)
    async with await Bus.connect(hub.url, settings=service) as bus:
        got = [decode(b).id async for batch in bus.read(DATA, filter_subjects=[data_filter(NODE)], stop_at_end=True)
               for m in batch for b in bodies_of(m.data)]
    assert got == [event.id]

    # a leaf trusting another CA does not link (and says why in its log)
    other = HubTLS.ensure(tmp_path / "other")
    wrong = SiteCredential(**{**site.__dict__, "ca": other.ca_pem()})
    bad = NatsServer(leaf_config(tmp_path / "bad-site", [hub.leafnode_url], wrong, name="bad")).start()
    leaves.append(bad)
    await until(lambda: "certificate" in bad.log_tail(50).lower(), 10, "the bad leaf to log the TLS failure")
    await asyncio.sleep(1.0)
    assert hub.monitor("leafz").get("leafnodes", 0) == 1  # only the good leaf
