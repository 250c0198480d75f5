"""Site credentials (issue 20, item 4): what a site's link may carry, and how the hub keeps sites."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivebus.auth import permissions
from hivebus.auth.hub import HubAuth
from hivebus.auth.sites import SiteCredential
from hivebus.errors import SetupError


def test_a_sites_link_carries_only_its_nodes_subjects_in_the_hubs_domain() -> None:
    perms = permissions.site_permissions(["W1", "W2"])
    pub = perms["publish"]["allow"]
    assert "data.W1.>" in pub and "data.W2.>" in pub and "data.W3.>" not in pub
    assert not any(s.startswith(("evt.", "toedge.")) for s in pub)
    # JetStream calls cross the link as $JS.<domain>.API (the leaf maps them), never plain
    assert "$JS.*.API.CONSUMER.MSG.NEXT.EVENTS.toedge-W1" in pub
    assert not any(s.startswith("$JS.API.") for s in pub)
    assert perms["subscribe"]["allow"] == ["_INBOX_W1.>", "toedge.W1.ses.offload.decided",
                                           "_INBOX_W2.>", "toedge.W2.ses.offload.decided"]


def test_a_site_without_nodes_may_carry_nothing() -> None:
    # an empty allow list would mean "everything" to nats-server
    assert permissions.site_permissions([]) == {"publish": {"deny": [">"]}, "subscribe": {"deny": [">"]}}


def test_the_leaf_checks_each_node_as_the_hub_does_after_its_mapping() -> None:
    perms = permissions.leaf_node_permissions("W1")["publish"]["allow"]
    assert "$JS.API.STREAM.INFO.DATA" in perms and "$JS.*.API.STREAM.INFO.DATA" in perms
    assert "data.W2.>" not in perms
    text = permissions.render_leaf({"W1": "$2b$11$hash"})
    assert '"user": "node-W1"' in text and "no_auth_user" not in text


def test_hub_keeps_sites_and_drops_a_withdrawn_node_from_them(tmp_path: Path) -> None:
    auth = HubAuth(tmp_path / "auth").ensure()
    with pytest.raises(SetupError, match="no credential on this hub"):
        auth.add_site("north", ["W1"])
    auth.add_node("W1")
    auth.add_node("W2")
    site = auth.add_site("north", ["W1", "W2"])
    assert site.user == "site-north" and set(site.nodes) == {"W1", "W2"}
    assert site.nodes["W1"] == auth.users()["node-W1"]  # the hash, never a password
    with pytest.raises(SetupError, match="already has a credential"):
        auth.add_site("north", ["W1"])
    auth.add_node("W3")  # another change keeps the site
    assert auth.sites() == {"north": ["W1", "W2"]}
    assert '"user": "site-north"' in auth.conf_path.read_text()
    auth.remove_node("W2")
    assert auth.sites() == {"north": ["W1"]}
    assert auth.remove_site("north") and auth.sites() == {}
    assert "site-north" not in auth.conf_path.read_text()


def test_site_credential_round_trips_and_puts_its_user_in_the_remote_url(tmp_path: Path) -> None:
    site = SiteCredential(site="north", user="site-north", password="pw_-1", nodes={"W1": "$2b$h"})
    path = site.save(tmp_path / "north.creds")
    assert path.stat().st_mode & 0o777 == 0o600
    assert SiteCredential.load(path) == site
    assert site.remote_url("nats-leaf://hub:7422") == "nats-leaf://site-north:pw_-1@hub:7422"
    (tmp_path / "node.creds").write_text('{"user": "node-W1", "password": "x", "inbox_prefix": "_INBOX_W1"}')
    with pytest.raises(SetupError, match="not a site credential"):
        SiteCredential.load(tmp_path / "node.creds")
