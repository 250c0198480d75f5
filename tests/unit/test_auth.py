"""The pure parts of hivebus.auth: the permission rules and the token fold."""

from __future__ import annotations

from hivebus.auth import permissions
from hivebus.auth.tokens import Users, digest, new_token
from hivebus.schemas.auth import UserAdded, UserRevoked
from hivebus.schemas.envelope import Event


def added(user: str, token: str) -> Event:
    return Event.new(UserAdded(user=user, token_sha256=digest(token), by="admin"), source="user/admin", subject=user)


def test_a_token_names_its_user_until_rotated_or_revoked() -> None:
    users = Users()
    first, second = new_token(), new_token()
    users.apply(added("alice", first))
    assert users.who(first) == "alice" and users.who(second) is None
    users.apply(added("alice", second))  # rotation: the old token stops working
    assert users.who(first) is None and users.who(second) == "alice"
    users.apply(Event.new(UserRevoked(user="alice", by="admin"), source="user/admin", subject="alice"))
    assert users.who(second) is None and users.digest_of == {}


def test_tokens_are_random_and_only_their_digest_is_kept() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100 and all(t.startswith("hbt_") and len(t) > 40 for t in tokens)
    token = tokens.pop()
    assert token not in digest(token) and len(digest(token)) == 64


def test_a_node_may_publish_only_under_its_own_id() -> None:
    rules = permissions.node_permissions("W001")
    publish = rules["publish"]["allow"]
    assert "data.W001.>" in publish and "fromedge.W001.>" in publish
    assert not any(s.startswith(("evt.", "toedge.", "data.W002", "fromedge.W002")) for s in publish)
    assert not any("W002" in s for s in publish)
    # its inbox, and live only the scheduler's answer to its own offload request
    assert rules["subscribe"]["allow"] == ["_INBOX_W001.>", "toedge.W001.ses.offload.decided"]
    # its to-edge consumer only with its own filter
    assert "$JS.API.CONSUMER.CREATE.EVENTS.toedge-W001.toedge.W001.>" in publish
    assert not any("DURABLE.CREATE" in s for s in publish)


def test_the_public_identity_has_no_password_and_cannot_touch_durables() -> None:
    text = permissions.render({"service": "$2b$11$x", "public": "$2b$11$y", "node-W001": "$2b$11$z"}, ["W001"])
    assert 'no_auth_user: "public"' in text
    public_line = next(line for line in text.splitlines() if '"user": "public"' in line)
    assert "password" not in public_line
    deny = permissions.public_permissions(["W001"], inbox="_INBOX.abc")["publish"]["deny"]
    assert "$JS.API.CONSUMER.MSG.NEXT.*.toedge-W001" in deny and "$JS.API.CONSUMER.DELETE.*.handler-ses" in deny


def test_with_a_callout_the_server_checks_only_service_and_admin_itself() -> None:
    text = permissions.render({"service": "$2b$11$x", "admin": "$2b$11$a", "public": "$2b$11$y", "node-W001": "$2b$11$z"},
                              ["W001"], issuer="AISSUER")
    assert "no_auth_user" not in text
    assert 'issuer: "AISSUER"' in text and 'auth_users: ["service", "admin"]' in text
    # every identity stays listed (a reload asks the callout again about their connections)
    for user in ("service", "admin", "public", "node-W001"):
        assert f'"user": "{user}"' in text
