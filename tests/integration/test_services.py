"""Handler services on a real nats-server: the dry-run endpoint, rejections of pushes that do
not decode, refusals as dead letters, the offline timer, a restart that re-emits nothing, and
the ``hivebus ecr`` / ``hivebus job`` commands as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hivebus.bus.client import Bus
from hivebus.bus.consumer import DeadLetter
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import DEADLETTERS, EVENTS
from hivebus.config import Settings
from hivebus.handlers.testing import app_spec, job_spec
from hivebus.schemas import codec
from hivebus.schemas.ecr import BundleApproved, BundlePushed
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import NodeHeartbeat
from hivebus.schemas.ses import JobSubmitted
from hivebus.services.dryrun import DRYRUN_SUBJECT
from hivebus.services.requests import request, send_command
from tests.integration.test_handlers import all_events, by, handlers, register_nodes, until

pytestmark = pytest.mark.integration

BME = "waggle/plugin-bme680:0.2.1"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def ready_world(bus: Bus) -> None:
    await request(
        bus,
        by("alice", BundlePushed(app=app_spec(BME), pusher="alice"), BME),
        handler="ecr",
        answers=[],
    )
    await request(
        bus, by("admin", BundleApproved(bundle_id=BME, by="admin"), BME), handler="ecr", answers=[]
    )
    await register_nodes(bus, ["W012", "W013"])


async def test_dry_run_decides_without_publishing(nats_server: NatsServer) -> None:
    settings = Settings(nats_url=nats_server.url)
    async with await Bus.connect(nats_server.url, settings=settings) as bus:
        await bus.ensure_streams()
        async with handlers(settings, bus):
            await ready_world(bus)
            await until(lambda: _floor_reaches(bus, "handler-ses"), 10, "the scheduler caught up")
            before = await _ses_events(bus)
            spec = job_spec(nodes=["W012", "W013"]).model_dump(mode="json")
            plan = json.loads(await bus.request(DRYRUN_SUBJECT, {"user": "alice", "spec": spec}))
            assert plan["decision"] == "scheduled" and [g["node"] for g in plan["goals"]] == [
                "W012",
                "W013",
            ]
            refused = json.loads(await bus.request(DRYRUN_SUBJECT, {"user": "bob", "spec": spec}))
            assert refused["decision"] == "rejected"
            assert refused["reasons"] == [
                f"plugin bme680: bob has no READ on bundle {BME} (it is private)"
            ]
            bad_rule = job_spec(nodes=["W012"], rules=["schedule(bme680): v('x') >> 3"]).model_dump(
                mode="json"
            )
            plan = json.loads(
                await bus.request(DRYRUN_SUBJECT, {"user": "alice", "spec": bad_rule})
            )
            assert "at position 26: expected a value, found '>'" in plan["reasons"][0]
            malformed = json.loads(
                await bus.request(DRYRUN_SUBJECT, {"user": "alice", "spec": {"name": "x"}})
            )
            assert malformed["kind"] == "SchemaError" and "spec.plugins" in malformed["error"]
            assert await _ses_events(bus) == before == []


async def _ses_events(bus: Bus) -> list[str]:
    return [e.id for _, _, e in await all_events(bus) if e.type.startswith("ses.")]


async def _floor_reaches(bus: Bus, durable: str) -> bool:
    info = await bus.js.consumer_info(EVENTS, durable)
    return info.ack_floor.stream_seq >= await bus.last_seq(EVENTS) - 10


async def test_a_push_that_does_not_decode_is_rejected_and_a_refused_command_is_a_fact(
    nats_server: NatsServer,
) -> None:
    settings = Settings(nats_url=nats_server.url)
    async with await Bus.connect(nats_server.url, settings=settings) as bus:
        await bus.ensure_streams()
        async with handlers(settings, bus):
            event = by("bob", BundlePushed(app=app_spec(BME), pusher="bob"), BME)
            doc = json.loads(codec.encode(event))
            doc["data"]["app"]["source"]["architectures"] = ["linux/amd65"]
            del doc["data"]["app"]["description"]
            await bus.js.publish(
                "evt.ecr.bundle.pushed.x",
                json.dumps(doc).encode(),
                headers={"Nats-Msg-Id": event.id},
            )
            approval = by("bob", BundleApproved(bundle_id=BME, by="bob"), BME)
            answer = await send_command(bus, approval)
            assert answer.refused == f"bundle {BME} is not registered"
            events = await all_events(bus)
            assert [e.type for _, _, e in events if e.type.startswith("ecr.bundle.approved")] == []
            refusal = [e for _, _, e in events if e.type == "ecr.command.rejected"]
            assert len(refusal) == 1 and refusal[0].causationid == approval.id
            assert (refusal[0].data.command, refusal[0].data.by, refusal[0].data.target) == ("ecr.approve", "bob", BME)
            rejected = [e for _, _, e in events if e.type == "ecr.bundle.rejected"]
            assert len(rejected) == 1 and rejected[0].causationid == event.id
            assert any("description" in r for r in rejected[0].data.reasons)
            assert any("amd65" in r for r in rejected[0].data.reasons)
            letters = []
            async for batch in bus.read(DEADLETTERS, stop_at_end=True):
                letters += [DeadLetter.model_validate_json(m.data) for m in batch]
            # the ECR answered the broken push and the refused approval is a fact, not a dead
            # letter; only the scheduler, which cannot use the broken push either, set it aside
            assert sorted((d.consumer, d.seq) for d in letters) == [("handler-ses", 1)]
            assert "description" in next(
                d for d in letters if d.consumer == "handler-ses"
            ).reason + str(next(d for d in letters if d.consumer == "handler-ses").field)


async def test_silent_nodes_go_offline_and_come_back(nats_server: NatsServer) -> None:
    settings = Settings(nats_url=nats_server.url, node_offline_after=timedelta(seconds=1))
    async with await Bus.connect(nats_server.url, settings=settings) as bus:
        await bus.ensure_streams()
        async with handlers(settings, bus, node_offline_after=timedelta(seconds=1)):
            await register_nodes(bus, ["W012"])

            async def kinds() -> list[str]:
                return [e.type for _, _, e in await all_events(bus) if e.source == "handler/health"]

            async def offline() -> bool:
                return "node.offline" in await kinds()

            await until(offline, 15, "node.offline")
            assert await kinds() == ["node.online", "node.offline"]
            beat = NodeHeartbeat(node="W012", resources=(await _resources()), uptime_seconds=9.0)
            await bus.publish(by("node/W012", beat, "W012"))

            async def back() -> bool:
                return (await kinds())[-1:] == ["node.online"]

            await until(back, 10, "node.online again")
            events = [e for _, _, e in await all_events(bus)]
            heartbeat = next(e for e in events if e.type == "node.heartbeat")
            off = next(e for e in events if e.type == "node.offline")
            # timed on the hub's clock: when the stream stored the heartbeat, plus the timeout
            assert off.causationid == heartbeat.id
            assert heartbeat.time <= off.time - timedelta(seconds=1) <= heartbeat.time + timedelta(seconds=5)


async def test_presence_runs_on_the_hubs_clock_not_the_nodes(nats_server: NatsServer) -> None:
    """A node whose clock is an hour behind, and one catching up an outbox of old heartbeats,
    stay online while they beat: node clocks do not decide presence."""
    settings = Settings(nats_url=nats_server.url, node_offline_after=timedelta(seconds=1))
    async with await Bus.connect(nats_server.url, settings=settings) as bus:
        await bus.ensure_streams()
        async with handlers(settings, bus, node_offline_after=timedelta(seconds=1)):
            await register_nodes(bus, ["W012", "W013"])
            resources = await _resources()
            hour_ago = datetime.now(UTC) - timedelta(hours=1)
            backlog = [
                Event.new(NodeHeartbeat(node="W013", resources=resources, uptime_seconds=float(i)), source="node/W013",
                          subject="W013", time=hour_ago + timedelta(seconds=i))
                for i in range(30)
            ]
            await bus.publish_many(backlog)  # an outbox flushed at once
            for i in range(10):  # a node beating every 0.3 s with a clock an hour behind
                beat = NodeHeartbeat(node="W012", resources=resources, uptime_seconds=float(i))
                await bus.publish(Event.new(beat, source="node/W012", subject="W012", time=hour_ago + timedelta(seconds=0.3 * i)))
                await bus.publish(Event.new(beat.model_copy(update={"node": "W013"}), source="node/W013", subject="W013",
                                            time=hour_ago + timedelta(seconds=30 + 0.3 * i)))
                await asyncio.sleep(0.3)

            async def presence() -> list[tuple[str, str]]:
                return [(e.type, e.data.node) for _, _, e in await all_events(bus) if e.source == "handler/health"]

            assert sorted(await presence()) == [("node.online", "W012"), ("node.online", "W013")]

            async def silent() -> bool:
                return len(await presence()) == 4

            await until(silent, 15, "both nodes offline once they stop beating")
            assert sorted(await presence())[:2] == [("node.offline", "W012"), ("node.offline", "W013")]


async def _resources():  # type: ignore[no-untyped-def]
    from hivebus.handlers.testing import resources

    return resources()


async def test_a_restart_resumes_from_the_ack_floor_and_emits_nothing_again(
    nats_server: NatsServer,
) -> None:
    settings = Settings(nats_url=nats_server.url)
    async with await Bus.connect(nats_server.url, settings=settings) as bus:
        await bus.ensure_streams()
        async with handlers(settings, bus):
            await ready_world(bus)
            first = await send_command(bus, submission())
            assert first.of_type("ses.job.scheduled")
        before = await all_events(bus)
        async with handlers(settings, bus):
            # the restarted scheduler knows j1: the id is taken and W012 holds its goal
            again = await send_command(bus, submission())
            assert again.reasons == ["job id 'j1' is already used"]
        after = await all_events(bus)
        new = [e for _, _, e in after[len(before) :]]
        assert [e.type for e in new] == ["ses.command.rejected"]  # nothing of j1 decided again


def submission() -> Event:
    return by("alice", JobSubmitted(job_id="j1", user="alice", spec=job_spec(nodes=["W012"])), "j1")


# --- the commands ---------------------------------------------------------------------------------


async def hivebus(url: str, *args: str, columns: int = 200) -> tuple[int, str]:
    """``hivebus ARGS --hub URL`` as a user runs it: (exit code, stdout and stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hivebus",
        *args,
        "--hub",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": str(columns)},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


@pytest.mark.slow
async def test_the_ecr_and_job_commands(nats_server: NatsServer, tmp_path: Path) -> None:
    url = nats_server.url
    settings = Settings(nats_url=url)
    async with await Bus.connect(url, settings=settings) as bus:
        await bus.ensure_streams()
        async with handlers(settings, bus):
            rc, out = await hivebus(
                url, "ecr", "push", str(EXAMPLES / "sage.yaml"), "--user", "alice"
            )
            assert rc == 0 and "registered waggle/plugin-bme680:0.2.1 (owner alice)" in out, out
            bad = tmp_path / "sage.yaml"
            bad.write_text(
                (EXAMPLES / "sage.yaml").read_text().replace("version: 0.2.1", "version: v1.0.0")
            )
            rc, out = await hivebus(url, "ecr", "push", str(bad), "--user", "bob")
            assert (
                rc == 1
                and "version 'v1.0.0' must not start with 'v'" in out
                and "bob lacks WRITE on namespace 'waggle'" in out
            ), out
            rc, out = await hivebus(url, "ecr", "approve", BME, "--user", "bob")
            assert rc == 1 and "bob is not a reviewer" in out, out
            rc, out = await hivebus(url, "ecr", "approve", BME, "--user", "admin")
            assert rc == 0 and f"approved {BME}" in out, out
            await register_nodes(bus, ["W012", "W013"])
            rc, out = await hivebus(
                url,
                "job",
                "submit",
                str(EXAMPLES / "job-cron.yaml"),
                "--user",
                "alice",
                "--dry-run",
            )
            assert rc == 0 and "would be scheduled (fit)" in out and "W013" in out, out
            rc, out = await hivebus(
                url,
                "job",
                "submit",
                str(EXAMPLES / "job-cron.yaml"),
                "--user",
                "alice",
                "--id",
                "bme-1",
            )
            assert rc == 0 and "scheduled bme-1 (fit); goals sent to W012, W013" in out, out
            rc, out = await hivebus(url, "job", "suspend", "bme-1", "--user", "bob")
            assert rc == 1 and "bob may not manage job bme-1" in out, out
            rc, out = await hivebus(url, "job", "suspend", "bme-1", "--user", "alice")
            assert rc == 0 and "suspended bme-1 (nodes: W012, W013)" in out, out
            rc, out = await hivebus(url, "job", "rm", "bme-1", "--user", "alice")
            assert rc == 0 and "removed bme-1" in out, out
            broken = tmp_path / "job.yaml"
            broken.write_text(
                (EXAMPLES / "job-cron.yaml").read_text().replace("'*/5 * * * *'", "'*/5 * *'")
            )
            rc, out = await hivebus(url, "job", "submit", str(broken), "--user", "alice")
            assert rc == 1 and "position 36" in out and "has 3 fields" in out, out
