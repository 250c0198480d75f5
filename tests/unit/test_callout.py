"""The auth callout's pure parts: nkeys, JWTs, and who gets which permissions (auth.callout)."""

from __future__ import annotations

import pytest

from hivebus.auth import callout, nkeys, permissions, tokens, user_callout
from hivebus.auth.hub import hash_password
from hivebus.bus.subjects import decode_token


def test_an_nkey_seed_round_trips_and_a_changed_key_fails_its_checksum() -> None:
    pair = nkeys.KeyPair.create(nkeys.ACCOUNT)
    assert pair.public_key.startswith("A") and len(pair.public_key) == 56
    assert pair.seed.startswith("SA")
    assert nkeys.KeyPair.from_seed(pair.seed).public_key == pair.public_key
    assert nkeys.is_public(pair.public_key, nkeys.ACCOUNT)
    assert not nkeys.is_public(pair.public_key, nkeys.USER)
    broken = pair.public_key[:10] + ("B" if pair.public_key[10] != "B" else "C") + pair.public_key[11:]
    assert not nkeys.is_public(broken, nkeys.ACCOUNT)


def test_a_jwt_is_checked_against_its_issuer() -> None:
    server = nkeys.KeyPair.create(nkeys.SERVER)
    token = nkeys.encode_jwt({"sub": "x", "nats": {"a": 1}}, server)
    assert nkeys.decode_jwt(token, nkeys.SERVER)["nats"] == {"a": 1}
    with pytest.raises(nkeys.NkeyError):
        nkeys.decode_jwt(token, nkeys.ACCOUNT)  # not the kind of issuer expected
    header, _body, sig = token.split(".")
    forged = nkeys.encode_jwt({"sub": "y", "nats": {"a": 2}}, nkeys.KeyPair.create(nkeys.SERVER)).split(".")[1]
    with pytest.raises(nkeys.NkeyError):
        nkeys.decode_jwt(f"{header}.{forged}.{sig}", nkeys.SERVER)


DOC = {"users": {"node-W001": hash_password("node-pass"), "site-north": hash_password("site-pass"),
                 "service": hash_password("svc")}, "sites": {"north": ["W001"]}}


def test_public_connections_get_an_inbox_of_their_own_and_nothing_broader() -> None:
    a, b = callout.public_connect_options(), callout.public_connect_options()
    assert a["inbox_prefix"] != b["inbox_prefix"]
    name, perms = callout.decide({"user": a["user"], "pass": a["password"]}, DOC, callout.Verified())
    assert name == "public"
    assert perms["subscribe"] == {"allow": [f"{a['inbox_prefix']}.>"]}
    assert a["password"] not in a["inbox_prefix"]  # the prefix does not give the secret away
    # without credentials: no subscription at all
    _, anon = callout.decide({}, DOC, callout.Verified())
    assert anon["subscribe"] == {"deny": [">"]}
    with pytest.raises(callout.Refused):
        callout.decide({"user": "public", "pass": "short"}, DOC, callout.Verified())


def test_nodes_and_sites_are_checked_against_the_hubs_hashes() -> None:
    verified = callout.Verified()
    name, perms = callout.decide({"user": "node-W001", "pass": "node-pass"}, DOC, verified)
    assert (name, perms) == ("node-W001", permissions.node_permissions("W001"))
    assert callout.decide({"user": "site-north", "pass": "site-pass"}, DOC, verified)[1] == permissions.site_permissions(["W001"])
    for connect in ({"user": "node-W001", "pass": "wrong"}, {"user": "node-W999", "pass": "node-pass"},
                    {"user": "service", "pass": "svc"}, {"user": "stranger", "pass": "x"}, {"auth_token": "t"}):
        with pytest.raises(callout.Refused):
            callout.decide(connect, DOC, verified)


def test_the_answer_is_signed_by_the_issuer_for_that_user_and_server() -> None:
    issuer = nkeys.KeyPair.create(nkeys.ACCOUNT)
    server = nkeys.KeyPair.create(nkeys.SERVER)
    user = nkeys.KeyPair.create(nkeys.USER).public_key
    secret = callout.public_connect_options()
    request = nkeys.encode_jwt({"sub": issuer.public_key, "nats": {
        "server_id": {"id": server.public_key}, "user_nkey": user,
        "connect_opts": {"user": "public", "pass": secret["password"]}, "type": "authorization_request", "version": 2}}, server)
    response = nkeys.decode_jwt(callout.answer(request, issuer, DOC, callout.Verified()).decode(), nkeys.ACCOUNT)
    assert (response["iss"], response["sub"], response["aud"]) == (issuer.public_key, user, server.public_key)
    claims = nkeys.decode_jwt(response["nats"]["jwt"], nkeys.ACCOUNT)
    assert claims["sub"] == user and claims["aud"] == "$G" and claims["nats"]["type"] == "user"
    assert claims["nats"]["sub"] == {"allow": [f"{secret['inbox_prefix']}.>"]}


# --- user tokens (auth.user_callout) -------------------------------------------------------

ALICE, BOB = tokens.new_token(), tokens.new_token()
WITH_TOKENS = {**DOC, user_callout.TOKENS: {tokens.digest(ALICE): "alice", tokens.digest(BOB): "bob"}}


def test_a_users_token_gives_a_connection_that_may_command_only_as_that_user() -> None:
    options = user_callout.user_connect_options("alice", ALICE)
    name, perms = callout.decide({"user": options["user"], "pass": options["password"]}, WITH_TOKENS, callout.Verified())
    assert name == "user-alice"
    publish = perms["publish"]["allow"]
    assert "hivebus.cmd.user.alice" in publish
    assert "hivebus.cmd" not in publish and "hivebus.cmd.user.bob" not in publish
    assert not any(s.endswith(">") and s.startswith("hivebus.cmd") for s in publish)
    assert perms["subscribe"] == {"allow": [f"{options['inbox_prefix']}.>"]}
    assert ALICE not in options["inbox_prefix"] and options["inbox_prefix"] != user_callout.user_inbox(BOB)
    # the rest of the public rules: queries, reads
    assert "hivebus.query" in publish and perms["publish"]["deny"] == permissions.public_permissions(["W001"], "x")["publish"]["deny"]


@pytest.mark.parametrize(("user", "token", "doc", "why"), [
    ("alice", tokens.new_token(), WITH_TOKENS, "unknown, rotated or revoked"),
    ("alice", BOB, WITH_TOKENS, "not alice's"),
    ("carol", ALICE, WITH_TOKENS, "not carol's"),
    ("alice", ALICE, {**DOC, user_callout.TOKENS: {tokens.digest(BOB): "bob"}}, "revoked"),  # alice's gone from the log
    ("alice", ALICE, DOC, "cannot check"),  # the log could not be read: nobody in on old knowledge
    ("alice", "", WITH_TOKENS, "no token"),
], ids=["unknown", "bobs-as-alice", "alices-as-carol", "revoked", "log-unread", "empty"])  # (no random token in an id)
def test_a_wrong_revoked_or_anothers_token_is_refused(user: str, token: str, doc: dict[str, object], why: str) -> None:
    with pytest.raises(callout.Refused, match=why):
        callout.decide({"user": f"user-{user}", "pass": token}, doc, callout.Verified())


def test_a_user_name_that_is_not_a_subject_token_is_encoded_into_one() -> None:
    subject = permissions.user_command_subject("ann.lee@x.org")
    assert subject == "hivebus.cmd.user.ann%2Elee@x%2Eorg"
    assert decode_token(subject.removeprefix("hivebus.cmd.user.")) == "ann.lee@x.org"


def test_the_callout_reads_the_token_holders_only_for_user_connections() -> None:
    server = nkeys.KeyPair.create(nkeys.SERVER)

    def request(connect: dict[str, str]) -> str:
        return nkeys.encode_jwt({"sub": "x", "nats": {"server_id": {"id": server.public_key}, "user_nkey": "U",
                                                      "connect_opts": connect}}, server)

    assert user_callout.wants_tokens(request({"user": "user-alice", "pass": ALICE}))
    assert not user_callout.wants_tokens(request({"user": "public", "pass": "x" * 30}))
    assert not user_callout.wants_tokens(request({"user": "node-W001", "pass": "p"}))
    assert not user_callout.wants_tokens("not a jwt")


def test_the_answer_for_a_user_carries_that_users_permissions() -> None:
    issuer = nkeys.KeyPair.create(nkeys.ACCOUNT)
    server = nkeys.KeyPair.create(nkeys.SERVER)
    user = nkeys.KeyPair.create(nkeys.USER).public_key
    request = nkeys.encode_jwt({"sub": issuer.public_key, "nats": {
        "server_id": {"id": server.public_key}, "user_nkey": user,
        "connect_opts": {"user": "user-bob", "pass": BOB}, "type": "authorization_request", "version": 2}}, server)
    response = nkeys.decode_jwt(callout.answer(request, issuer, WITH_TOKENS, callout.Verified()).decode(), nkeys.ACCOUNT)
    claims = nkeys.decode_jwt(response["nats"]["jwt"], nkeys.ACCOUNT)
    assert claims["name"] == "user-bob"
    assert "hivebus.cmd.user.bob" in claims["nats"]["pub"]["allow"]
    assert claims["nats"]["sub"] == {"allow": [f"{user_callout.user_inbox(BOB)}.>"]}
    refused = callout.answer(request, issuer, DOC, callout.Verified()).decode()
    assert "jwt" not in nkeys.decode_jwt(refused, nkeys.ACCOUNT)["nats"]
