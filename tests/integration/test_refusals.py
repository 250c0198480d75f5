"""Issue 13's acceptance: every action refused for lack of rights leaves every state view as it
was and is among the rejections once, with its reason -- through the CLI, the Python API and
the gateway, on an authenticating hub with the handlers and a projector running.

alice owns an approved bundle and a running job; bob, a user with a valid token and no rights
on either, tries each action once: grant, revoke, approve, freeze, delete, suspend, resume,
remove, and a submission naming his own unapproved bundle for a real node.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import hivebus
from hivebus.bus.client import Bus
from hivebus.errors import RequestRejected
from hivebus.handlers.testing import app_spec, job_spec, manifest
from hivebus.projections.client import query
from hivebus.projections.runner import running
from hivebus.replay.build import stream_ends
from hivebus.schemas.ecr import BundleApproved, BundleDeleted, BundlePushed, PermissionRevoked
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import NodeRegistered
from hivebus.schemas.ses import JobRemoved, JobResumed, JobSubmitted
from hivebus.services.requests import Answer, decide, request_at
from tests.integration.test_auth import Hub, add_user, hivebus_cli, hub, platform  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration

ALICES = "alice/plugin-x:1.0.0"
BOBS = "bob/plugin-y:1.0.0"
STATE = {
    "bundles": "SELECT * FROM bundles ORDER BY bundle_id",
    "bundle_permissions": "SELECT * FROM bundle_permissions ORDER BY ALL",
    "jobs": "SELECT * FROM jobs ORDER BY job_id",
    "assignments": "SELECT * FROM assignments ORDER BY ALL",
}


def as_user(user: str, payload: object, subject: str) -> Event:
    return Event.new(payload, source=f"user/{user}", subject=subject)  # type: ignore[arg-type]


async def views(bus: Bus) -> dict[str, list[tuple[object, ...]]]:
    ends = await stream_ends(bus)
    return {name: [tuple(r) for r in (await query(bus, sql, min_seq=ends)).rows] for name, sql in STATE.items()}


async def test_refused_actions_change_no_view_and_are_rejections_once(hub: Hub, platform: Bus, tmp_path: Path) -> None:  # noqa: F811
    alice, bob = await add_user(platform, "alice"), await add_user(platform, "bob")
    await platform.publish(Event.new(NodeRegistered(manifest=manifest("W001")), source="node/W001", subject="W001"))
    for user, token, bundle in (("alice", alice, ALICES), ("bob", bob, BOBS)):
        await request_at(hub.url, as_user(user, BundlePushed(app=app_spec(bundle), pusher=user), bundle), handler="ecr", answers=[], token=token)
    # the admin identity hands its approval to the ECR's decider itself and gets the decision
    # back (a raw publish of it is a request the ECR adjudicates later: a submission right
    # after it raced that, and was once refused as "not approved")
    approval = Answer.of_reply(await decide(platform, as_user("admin", BundleApproved(bundle_id=ALICES, by="admin"), ALICES)))
    assert approval.rejection is None, approval.reasons
    scheduled = await request_at(
        hub.url, as_user("alice", JobSubmitted(job_id="alices", user="alice", spec=job_spec([("x", ALICES)], nodes=["W001"])), "alices"),
        handler="ses", answers=[], token=alice,
    )
    assert "ses.job.scheduled" in [e.type for e in scheduled.events], scheduled.reasons

    async with running(platform, tmp_path / "views.duckdb"):
        before = await views(platform)
        assert before["jobs"] and before["bundles"] and before["assignments"]

        # the CLI (a subprocess with bob's token)
        env = {"HIVEBUS_TOKEN": bob, "HIVEBUS_DATA_DIR": str(tmp_path / "nowhere"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
        for args in (
            ("ecr", "grant", ALICES, "READ", "--to", "bob", "--user", "bob"),
            ("ecr", "approve", ALICES, "--user", "bob"),
            ("ecr", "freeze", ALICES, "--user", "bob"),
            ("job", "suspend", "alices", "--user", "bob"),
        ):
            done = await asyncio.to_thread(hivebus_cli, *args, "--hub", hub.url, env=env)
            assert done.returncode == 1 and "refused" in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)

        # the Python API
        async with hivebus.connect(hub.url) as api:
            for payload in (
                PermissionRevoked(resource=ALICES, grantee_type="user", grantee="alice", permission="READ", by="bob"),
                JobResumed(job_id="alices", by="bob"),
                JobSubmitted(job_id="bobs", user="bob", spec=job_spec([("y", BOBS)], nodes=["W001"])),
            ):
                with pytest.raises(RequestRejected):
                    await api.publish(payload, source="user/bob", token=bob)

        # the gateway, as any client speaks to it

        for command in (as_user("bob", BundleDeleted(bundle_id=ALICES, by="bob"), ALICES), as_user("bob", JobRemoved(job_id="alices", by="bob"), "alices")):
            answer = await request_at(hub.url, command, handler="", answers=[], token=bob)
            assert answer.rejection is not None

        after = await views(platform)
        rows = (await query(platform, "SELECT command, requested_by, reasons FROM rejections ORDER BY command", min_seq=await stream_ends(platform))).rows

    assert after == before
    assert [r[0] for r in rows] == sorted(
        ["ecr.grant", "ecr.approve", "ecr.freeze", "ses.suspend", "ecr.revoke", "ses.resume", "ses.submit", "ecr.delete", "ses.remove"]
    )
    assert {r[1] for r in rows} == {"bob"} and all(r[2] for r in rows)
    grant_reasons = next(r[2] for r in rows if r[0] == "ecr.grant")
    assert any("WRITE_ACP" in reason for reason in grant_reasons)
