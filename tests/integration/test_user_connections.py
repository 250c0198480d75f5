"""A user's token as a connection of that user's own (issue 15, item 3; auth.user_callout).

On a real authenticating hub (nats-server, its auth callout, the gateway and the deciders as the
service identity): alice and bob each hold a token. Alice's connection, made with her token,
cannot send commands as bob (on his subject, or on the shared ``hivebus.cmd``) nor read his
replies; her commands carry her identity into the facts; a wrong token, or hers under bob's
name, is refused at connect with a clear error; a revoked token is refused at connect and its
open connection is cut at once. ``hivebus.api`` uses the user connection by itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg

import hivebus
from hivebus.auth.hub import HubAuth
from hivebus.auth.permissions import SERVICE, user_command_subject
from hivebus.auth.tokens import digest, new_token
from hivebus.auth.user_callout import user_connect_options, user_inbox
from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.config import Settings
from hivebus.errors import CredentialRefused, RequestTimeout, Unauthorized
from hivebus.handlers.testing import app_spec
from hivebus.projections.client import query
from hivebus.projections.runner import running
from hivebus.schemas import codec
from hivebus.schemas.auth import UserAdded, UserRevoked
from hivebus.schemas.ecr import BundlePushed
from hivebus.schemas.envelope import Event
from hivebus.services import run_handlers
from hivebus.services.requests import request_via_gateway
from tests.conftest import NatsServerFactory

pytestmark = pytest.mark.integration


@pytest.fixture
async def hub(nats_server_factory: NatsServerFactory, tmp_path: Path) -> AsyncIterator[tuple[NatsServer, Bus, dict[str, str]]]:
    auth = HubAuth.of_data_dir(tmp_path).ensure()
    # the store elsewhere than <data-dir>/nats (a cluster member's): the callout reloads its own server
    server = nats_server_factory("hub", store_dir=tmp_path / "member-store", include=auth.conf_path)
    service = Settings(nats_credentials=auth.creds_path(SERVICE), data_dir=tmp_path)
    stop = asyncio.Event()
    async with await Bus.connect(server.url, settings=service) as bus:
        await bus.ensure_streams()
        tokens = {user: new_token() for user in ("alice", "bob")}
        for user, token in tokens.items():
            await bus.publish(Event.new(UserAdded(user=user, token_sha256=digest(token), by="admin"), source="user/admin", subject=user))
        handlers = asyncio.create_task(run_handlers(service, bus, stop))
        async with running(bus, tmp_path / "views.duckdb"):
            try:
                yield server, bus, tokens
            finally:
                stop.set()
                await asyncio.wait_for(handlers, 20)


def nowhere(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "nowhere")


async def as_user(url: str, tmp_path: Path, user: str, token: str) -> Bus:
    return await Bus.connect(url, settings=nowhere(tmp_path), connect_timeout=5, **user_connect_options(user, token))


def push(user: str, bundle: str) -> Event:
    spec = app_spec(bundle)
    return Event.new(BundlePushed(app=spec, pusher=user), source=f"user/{user}", subject=spec.bundle_id)


async def until_denied(bus: Bus, subjects: list[str]) -> dict[str, bool]:
    deadline = time.monotonic() + 5
    while not all(s.lower() in bus.denied for s in subjects) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return {s: s.lower() in bus.denied for s in subjects}


async def test_a_users_connection_acts_only_as_that_user_and_reads_only_its_own_replies(
        hub: tuple[NatsServer, Bus, dict[str, str]], tmp_path: Path) -> None:
    server, platform, tokens = hub
    alice = await as_user(server.url, tmp_path, "alice", tokens["alice"])
    bob = await as_user(server.url, tmp_path, "bob", tokens["bob"])
    try:
        # alice cannot read bob's replies (nor anyone's): each subscription refused by the server
        seen: list[Msg] = []

        async def spy(msg: Msg) -> None:
            seen.append(msg)

        spied = ["_INBOX.>", ">", f"{user_inbox(tokens['bob'])}.>", "hivebus.cmd.user.>", user_command_subject("bob")]
        for subject in spied:
            await alice.nc.subscribe(subject, cb=spy)
        await alice.nc.flush()
        assert await until_denied(alice, spied) == dict.fromkeys(spied, True)

        # bob's command on his own connection: his identity, from his subject, into the facts
        body = {"event": codec.to_dict(push("bob", "bob/plugin-b:1.0.0")), "timeout": 10}
        reply = json.loads(await bob.request(user_command_subject("bob"), body, timeout=20))
        assert reply["user"] == "bob"
        registered = [e for e in reply["events"] if e["type"] == "ecr.bundle.registered"]
        assert [(e["data"]["owner"], e["data"]["pusher"]) for e in registered] == [("bob", "bob")]
        # and bob's query result reaches bob
        assert (await query(bob, "select 42 as answer", timeout=10)).records() == [{"answer": 42}]

        # alice cannot publish as bob: not on his subject, not on the shared one with no token
        forged = {"event": codec.to_dict(push("bob", "bob/plugin-forged:1.0.0")), "timeout": 5}
        for subject in (user_command_subject("bob"), "hivebus.cmd"):
            with pytest.raises(RequestTimeout):
                await alice.request(subject, forged, timeout=2)
        assert await until_denied(alice, [user_command_subject("bob"), "hivebus.cmd"]) == {
            user_command_subject("bob"): True, "hivebus.cmd": True}
        # nor may a connection without a token (the public identity) publish on a user's subject
        async with await Bus.connect(server.url, settings=nowhere(tmp_path)) as public:
            with pytest.raises(RequestTimeout):
                await public.request(user_command_subject("bob"), forged, timeout=2)
            assert await until_denied(public, [user_command_subject("bob")]) == {user_command_subject("bob"): True}
        # on her own subject a command by bob is refused by the gateway, with the reason
        reply = json.loads(await alice.request(user_command_subject("alice"), forged, timeout=20))
        assert reply["kind"] == "Unauthorized" and "bob" in reply["error"]
        # her own command: her identity in the facts
        mine = json.loads(await alice.request(user_command_subject("alice"),
                                              {"event": codec.to_dict(push("alice", "alice/plugin-a:1.0.0"))}, timeout=20))
        assert mine["user"] == "alice"
        facts = [e for e in mine["events"] if e["type"] == "ecr.bundle.registered"]
        assert [(f["data"]["owner"], f["data"]["pusher"]) for f in facts] == [("alice", "alice")]
        rows = (await query(platform, "select bundle_id as id, owner from bundles order by id", min_seq=mine["seq"], timeout=10)).records()
        assert {"id": "alice/plugin-a:1.0.0", "owner": "alice"} in rows
        assert not any(r["id"] == "bob/plugin-forged:1.0.0" for r in rows)
        await asyncio.sleep(0.3)
        assert seen == []
    finally:
        await alice.close()
        await bob.close()


async def test_a_wrong_token_is_refused_at_connect_with_a_clear_error(
        hub: tuple[NatsServer, Bus, dict[str, str]], tmp_path: Path) -> None:
    server, _platform, tokens = hub
    for user, token in (("alice", new_token()), ("alice", tokens["bob"]), ("carol", new_token())):
        with pytest.raises(CredentialRefused):
            await as_user(server.url, tmp_path, user, token)
    async with await Bus.connect(server.url, settings=nowhere(tmp_path)) as public:
        with pytest.raises(Unauthorized, match=r"the hub refused alice's token: it is unknown, rotated, revoked or another user's") as err:
            await public.as_user("alice", new_token())
        assert "hivebus user add alice" in (err.value.hint or "")
    # through the Python API: the same command refused, the gateway saying exactly why
    async with hivebus.connect(server.url) as api:
        with pytest.raises(Unauthorized, match=r"the token is bob's, but this ecr.push is by alice"):
            await api.publish(push("alice", "alice/plugin-w:1.0.0"), token=tokens["bob"])
        with pytest.raises(Unauthorized, match=r"unknown, rotated or revoked"):
            await api.publish(push("alice", "alice/plugin-w:1.0.0"), token=new_token())
        assert api.bus._as_user == {}


async def test_the_python_api_sends_a_token_holders_command_on_that_users_own_connection(
        hub: tuple[NatsServer, Bus, dict[str, str]], tmp_path: Path) -> None:
    server, _platform, tokens = hub
    async with hivebus.connect(server.url) as api:
        await asyncio.gather(api.publish(push("alice", "alice/plugin-api:1.0.0"), token=tokens["alice"]),
                                      api.publish(push("alice", "alice/plugin-api:0.9.0"), token=tokens["alice"]))
        assert list(api.bus._as_user) == [("alice", tokens["alice"])]  # made once, kept for the next
        # two commands at once made one connection for alice, as the server counts them
        names = [c.get("name") for c in server.monitor("connz", limit=1024)["connections"]]
        assert names.count("hivebus-user-alice") == 1
        user_bus = api.bus._as_user[("alice", tokens["alice"])]
        assert bytes(user_bus.nc._inbox_prefix).decode() == user_inbox(tokens["alice"])
        seq = await api.publish(push("alice", "alice/plugin-api:1.0.1"), token=tokens["alice"])
        assert api.bus._as_user[("alice", tokens["alice"])] is user_bus
        rows = (await api.query("select bundle_id as id, owner from bundles where bundle_id like 'alice/%' order by id", min_seq=seq)).records()
        assert rows == [{"id": f"alice/plugin-api:{v}", "owner": "alice"} for v in ("0.9.0", "1.0.0", "1.0.1")]
    # the old way, a token in the body on the shared subject, still works (web broker, older clients)
    async with await Bus.connect(server.url, settings=nowhere(tmp_path)) as public:
        outcome = await request_via_gateway(public, push("bob", "bob/plugin-old:1.0.0"), token=tokens["bob"], timeout=10)
        assert [e.type for e in outcome.events] == ["ecr.bundle.registered"]


async def test_a_revoked_token_is_refused_at_connect_and_its_open_connection_is_cut(
        hub: tuple[NatsServer, Bus, dict[str, str]], tmp_path: Path) -> None:
    server, platform, tokens = hub
    alice = await as_user(server.url, tmp_path, "alice", tokens["alice"])
    bob = await as_user(server.url, tmp_path, "bob", tokens["bob"])
    cut = asyncio.Event()

    async def on_disconnect() -> None:
        cut.set()

    alice.nc._disconnected_cb = on_disconnect
    try:
        await platform.publish(Event.new(UserRevoked(user="alice", by="admin"), source="user/admin", subject="alice"))
        async with asyncio.timeout(10):
            await cut.wait()  # the callout saw the revocation, the server reloaded and asked again
        # refused again on reconnecting, it stops trying (its token cannot come back)
        async with asyncio.timeout(10):
            while not alice.nc.is_closed:
                await asyncio.sleep(0.05)
        with pytest.raises(CredentialRefused):
            await as_user(server.url, tmp_path, "alice", tokens["alice"])
        # bob's connection stays, and works
        assert bob.nc.is_connected
        assert (await query(bob, "select 1 as one", timeout=10)).records() == [{"one": 1}]
    finally:
        await alice.close()
        await bob.close()


async def test_a_rotated_token_cuts_the_connections_made_with_the_old_one(
        hub: tuple[NatsServer, Bus, dict[str, str]], tmp_path: Path) -> None:
    server, platform, tokens = hub
    old = await as_user(server.url, tmp_path, "bob", tokens["bob"])
    try:
        rotated = new_token()  # `hivebus user add bob` again
        await platform.publish(Event.new(UserAdded(user="bob", token_sha256=digest(rotated), by="admin"), source="user/admin", subject="bob"))
        async with asyncio.timeout(10):
            while not old.nc.is_closed:
                await asyncio.sleep(0.05)
        with pytest.raises(CredentialRefused):
            await as_user(server.url, tmp_path, "bob", tokens["bob"])
        async with await as_user(server.url, tmp_path, "bob", rotated) as new:
            reply = json.loads(await new.request(user_command_subject("bob"),
                                                 {"event": codec.to_dict(push("bob", "bob/plugin-r:1.0.0"))}, timeout=20))
            assert reply["user"] == "bob" and [e["type"] for e in reply["events"]] == ["ecr.bundle.registered"]
    finally:
        await old.close()


async def test_the_cli_sends_a_users_command_on_that_users_own_subject_without_the_token(
        hub: tuple[NatsServer, Bus, dict[str, str]], tmp_path: Path) -> None:
    """`hivebus ecr push` with HIVEBUS_TOKEN, unchanged: it arrives on hivebus.cmd.user.alice (a
    spy as the service identity hears it there), its body carries no token, and nothing comes
    on the shared hivebus.cmd."""
    server, platform, tokens = hub
    heard: dict[str, list[bytes]] = {"own": [], "shared": []}

    async def own(msg: Msg) -> None:
        heard["own"].append(msg.data)

    async def shared(msg: Msg) -> None:
        heard["shared"].append(msg.data)

    await platform.nc.subscribe(user_command_subject("alice"), cb=own)
    await platform.nc.subscribe("hivebus.cmd", cb=shared)
    await platform.nc.flush()
    sage = Path(__file__).resolve().parents[2] / "examples" / "sage.yaml"
    env = {**os.environ, "HIVEBUS_TOKEN": tokens["alice"], "HIVEBUS_DATA_DIR": str(tmp_path / "nowhere"),
           "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "hivebus", "ecr", "push", str(sage), "--user", "alice",
                                                    "--no-wait", "--hub", server.url], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(heard["own"]) == 1 and heard["shared"] == []
    body = json.loads(heard["own"][0])
    assert "token" not in body and tokens["alice"].encode() not in heard["own"][0]
    assert body["event"]["source"] == "user/alice"
