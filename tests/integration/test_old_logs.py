"""A log written before commands existed keeps working (issue 13, upcasting).

Releases before commands published a user's request as if it were a fact (``ecr.permission.
granted`` from ``user/bob``) and refused it, if at all, with a dead letter; an accepted grant or
approval had no fact of the ECR's at all. Such a log, as that release wrote it, is put on a
real nats-server; the handlers start on it and decide every old request as the command it was,
on the state of its point in the log. The views, folded by a real projector into DuckDB, show
what was accepted and nothing that was refused; the refusals are among the rejections.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.config import Settings
from hivebus.handlers.testing import app_spec
from hivebus.projections.client import query
from hivebus.projections.runner import running
from hivebus.replay.build import stream_ends
from hivebus.schemas.ecr import BundleApproved, BundlePushed, BundleRegistered, PermissionGranted
from hivebus.schemas.envelope import Event
from hivebus.services import run_handlers
from tests.integration.test_handlers import all_events, until

pytestmark = pytest.mark.integration
BUNDLE = "alice/plugin-x:1.0.0"


def request(user: str, payload: object, subject: str = BUNDLE) -> Event:
    return Event.new(payload, source=f"user/{user}", subject=subject)  # type: ignore[arg-type]


def old_log() -> list[Event]:
    push = request("alice", BundlePushed(app=app_spec(BUNDLE), pusher="alice"))
    registered = Event.new(  # that release's registration named only the id
        BundleRegistered(bundle_id=BUNDLE, owner="alice"), source="handler/ecr", subject=BUNDLE, causationid=push.id
    )
    return [
        push,
        registered,
        request("bob", PermissionGranted(resource=BUNDLE, grantee_type="user", grantee="bob", permission="WRITE", by="bob")),
        request("alice", PermissionGranted(resource=BUNDLE, grantee_type="user", grantee="bob", permission="READ", by="alice")),
        request("alice", BundleApproved(bundle_id=BUNDLE, by="alice")),
        request("admin", BundleApproved(bundle_id=BUNDLE, by="admin", comment="looks fine")),
    ]


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    async with await Bus.connect(nats_server.url, settings=Settings(nats_url=nats_server.url)) as b:
        await b.ensure_streams()
        yield b


async def test_an_old_logs_refused_requests_vanish_from_the_views_and_its_accepted_ones_stay(bus: Bus, tmp_path: Path) -> None:
    log = old_log()
    await bus.publish_many(log)
    stop = asyncio.Event()
    handlers = asyncio.create_task(run_handlers(bus.settings, bus, stop, only=("ecr",)))
    try:
        async def decided() -> bool:
            return sum(e.source == "handler/ecr" for _, _, e in await all_events(bus)) >= 5

        await until(decided, 30, "the ECR's decisions on the old requests")
    finally:
        stop.set()
        await asyncio.wait_for(handlers, 20)

    ecr = [e for _, _, e in await all_events(bus) if e.source == "handler/ecr"]
    caused = {(e.causationid, e.type) for e in ecr}
    grant_bob, grant_alice, approve_alice, approve_admin = (e.id for e in log[2:])
    assert (grant_bob, "ecr.command.rejected") in caused and (grant_alice, "ecr.permission.granted") in caused
    assert (approve_alice, "ecr.command.rejected") in caused and (approve_admin, "ecr.bundle.approved") in caused

    async with running(bus, tmp_path / "views.duckdb"):
        ends = await stream_ends(bus)
        permissions = await query(bus, "SELECT grantee, permission FROM bundle_permissions WHERE resource = ? ORDER BY ALL", [BUNDLE], min_seq=ends)
        bundles = await query(bus, "SELECT state, approved, approved_by, description FROM bundles WHERE bundle_id = ?", [BUNDLE], min_seq=ends)
        rejections = await query(bus, "SELECT command, requested_by FROM rejections ORDER BY command", min_seq=ends)
    assert [tuple(r) for r in permissions.rows] == [("bob", "READ")]  # bob's own WRITE grant never happened
    assert [tuple(r) for r in bundles.rows] == [("approved", True, "admin", app_spec(BUNDLE).description)]
    assert [tuple(r) for r in rejections.rows] == [("ecr.approve", "alice"), ("ecr.grant", "bob")]

    # Starting again decides nothing twice.
    before = len(await all_events(bus))
    stop = asyncio.Event()
    handlers = asyncio.create_task(run_handlers(bus.settings, bus, stop, only=("ecr",)))
    await asyncio.sleep(2.0)
    stop.set()
    await asyncio.wait_for(handlers, 20)
    assert len(await all_events(bus)) == before
