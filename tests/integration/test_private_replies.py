"""Private replies for connections without credentials (issue 15, item 3; auth.callout).

On a real authenticating hub (the auth callout running, the projector's query service and the
command gateway as the service identity), user A tries every way to read user B's replies:
``_INBOX.>``, ``>``, the wildcards around inbox prefixes, another identity's prefix, and B's
exact prefix (as if A had learnt it), the last both on A's own connection and on one that
claims B's prefix as its own. Every subscription is refused by the server and none of them
sees anything, while B's query result and command outcome, and A's own, arrive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from hivebus.auth.callout import public_connect_options
from hivebus.auth.hub import HubAuth
from hivebus.auth.permissions import SERVICE
from hivebus.auth.tokens import digest, new_token
from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.config import Settings
from hivebus.handlers.testing import app_spec
from hivebus.projections.client import query
from hivebus.projections.runner import running
from hivebus.schemas.auth import UserAdded
from hivebus.schemas.ecr import BundlePushed
from hivebus.schemas.envelope import Event
from hivebus.services import run_handlers
from hivebus.services.requests import request_via_gateway
from tests.conftest import NatsServerFactory

pytestmark = pytest.mark.integration


@pytest.fixture
async def hub(nats_server_factory: NatsServerFactory, tmp_path: Path) -> AsyncIterator[tuple[NatsServer, Bus]]:
    auth = HubAuth.of_data_dir(tmp_path).ensure()
    auth.add_node("W001")
    server = nats_server_factory("hub", store_dir=tmp_path / "nats", include=auth.conf_path)
    service = Settings(nats_credentials=auth.creds_path(SERVICE), data_dir=tmp_path)
    stop = asyncio.Event()
    async with await Bus.connect(server.url, settings=service) as bus:
        await bus.ensure_streams()
        handlers = asyncio.create_task(run_handlers(service, bus, stop))
        async with running(bus, tmp_path / "views.duckdb"):
            try:
                yield server, bus
            finally:
                stop.set()
                await asyncio.wait_for(handlers, 20)


async def public(url: str, tmp_path: Path) -> Bus:
    return await Bus.connect(url, settings=Settings(data_dir=tmp_path / "nowhere"))


def prefix_of(bus: Bus) -> str:
    return bytes(bus.nc._inbox_prefix).decode()


async def refused(bus: Bus, subjects: list[str], seen: list[Msg]) -> None:
    """Subscribe ``bus`` to each subject; each must be refused by the server."""
    async def spy(msg: Msg) -> None:
        seen.append(msg)

    for subject in subjects:
        await bus.nc.subscribe(subject, cb=spy)
    await bus.nc.flush()
    deadline = time.monotonic() + 5
    while not all(s.lower() in bus.denied for s in subjects) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert {s: s.lower() in bus.denied for s in subjects} == dict.fromkeys(subjects, True)


async def test_a_public_connection_cannot_read_anothers_query_results_or_command_outcomes(
        hub: tuple[NatsServer, Bus], tmp_path: Path) -> None:
    server, platform = hub
    token = new_token()
    await platform.publish(Event.new(UserAdded(user="bob", token_sha256=digest(token), by="admin"), source="user/admin", subject="bob"))
    a, b = await public(server.url, tmp_path), await public(server.url, tmp_path)
    try:
        assert prefix_of(a) != prefix_of(b) and prefix_of(a).startswith("_INBOX.")
        seen: list[Msg] = []
        await refused(a, ["_INBOX.>", ">", "_INBOX.*.>", "_INBOX_*.>", "_INBOX_W001.>", "_INBOX_service.>",
                          f"{prefix_of(b)}.>", f"{prefix_of(b)}.*"], seen)
        # a connection claiming b's prefix as its own: the prefix it may use comes from its secret
        claimed = await Bus.connect(server.url, settings=Settings(data_dir=tmp_path / "nowhere"),
                                    **{**public_connect_options(), "inbox_prefix": prefix_of(b)})
        # a client that is not hivebus's (no credentials, nats-py's default _INBOX)
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        stranger = await nats.connect(server.url, error_cb=on_error)
        try:
            await refused(claimed, [f"{prefix_of(b)}.>"], seen)
            async def spy(msg: Msg) -> None:
                seen.append(msg)

            await stranger.subscribe("_INBOX.>", cb=spy)
            await stranger.flush()

            # b's query result and command outcome reach b; a's own result reaches a
            result = await query(b, "select 42 as answer", timeout=10)
            assert result.records() == [{"answer": 42}]
            spec = app_spec("bob/plugin-x:1.0.0")
            push = Event.new(BundlePushed(app=spec, pusher="bob"), source="user/bob", subject=spec.bundle_id)
            outcome = await request_via_gateway(b, push, token=token, timeout=10)
            assert [e.type for e in outcome.events] == ["ecr.bundle.registered"]
            assert (await query(a, "select 7 as mine", timeout=10)).records() == [{"mine": 7}]
            await asyncio.sleep(0.5)
            assert seen == []
            assert any("permissions violation" in e.lower() for e in errors)
        finally:
            await claimed.close()
            await stranger.close()
    finally:
        await a.close()
        await b.close()


async def test_without_the_callout_only_service_and_admin_connect(hub: tuple[NatsServer, Bus], tmp_path: Path) -> None:
    """The callout is what lets public connections and nodes in: its thread is part of the
    server's start, and a server without it refuses them (its config requires it)."""
    server, _platform = hub
    callout = server._callout
    assert callout is not None
    callout.stop(timeout=20)
    assert not callout.running
    try:
        with pytest.raises(Exception, match=r"(?i)authorization|refused"):
            await Bus.connect(server.url, settings=Settings(data_dir=tmp_path / "nowhere"), connect_timeout=3)
    finally:
        server._callout = None
        server._start_callout(10)
    async with await public(server.url, tmp_path) as again:
        assert (await query(again, "select 1 as one", timeout=10)).records() == [{"one": 1}]
