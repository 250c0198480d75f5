"""The handlers on a real nats-server: from a push to goals on the nodes' to-edge subjects,
and a handler process killed with SIGKILL mid-stream that, restarted, publishes no output twice
(with a 100 ms duplicate window, so JetStream's de-duplication cannot be what saves it)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import EVENTS, toedge_consumer
from hivebus.config import Settings
from hivebus.errors import DecodeError
from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.runtime import Driver
from hivebus.handlers.ses import SesHandler
from hivebus.handlers.testing import app_spec, job_spec, manifest, resources
from hivebus.schemas import codec
from hivebus.schemas.ecr import BundleApproved, BundlePushed
from hivebus.schemas.envelope import Event, Payload
from hivebus.schemas.node import NodeHeartbeat, NodeRegistered
from hivebus.schemas.ses import JobSubmitted
from hivebus.services import build_services
from hivebus.services.requests import request

pytestmark = pytest.mark.integration

BME = "waggle/plugin-bme680:0.2.1"


async def until(
    check: Callable[[], Awaitable[bool]],
    timeout: float = 20.0,
    what: str = "condition",
    max_delay: float = 0.2,
) -> None:
    deadline = time.monotonic() + timeout
    delay = min(0.02, max_delay)
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(max_delay, delay * 1.5)


@asynccontextmanager
async def handlers(settings: Settings, bus: Bus, **config: object) -> AsyncIterator[None]:
    """The three handlers in this process, live when the block starts."""
    stop = asyncio.Event()
    services = build_services(settings, bus, HandlerConfig(**config))  # type: ignore[arg-type]
    tasks = [asyncio.create_task(s.run(stop)) for s in services]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in services)), 20)
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def by(who: str, payload: Payload, subject: str) -> Event:
    return Event.new(payload, source=who if "/" in who else f"user/{who}", subject=subject)


async def register_nodes(
    bus: Bus, nodes: list[str], *, tags: list[str] | None = None, cpus: int = 4
) -> None:
    events = []
    for node in nodes:
        events.append(
            by(
                f"node/{node}",
                NodeRegistered(manifest=manifest(node, tags=tags or [], cpus=cpus)),
                node,
            )
        )
        beat = NodeHeartbeat(
            node=node, resources=resources(cpus=cpus, memory=64 * 2**30), uptime_seconds=5.0
        )
        events.append(by(f"node/{node}", beat, node))
    await bus.publish_many(events)


async def all_events(bus: Bus) -> list[tuple[int, str, Event]]:
    out = []
    async for batch in bus.read(EVENTS, stop_at_end=True):
        for m in batch:
            try:
                out.append((m.seq, m.subject, codec.decode(m.data)))
            except DecodeError:
                continue  # a message a test published broken on purpose
    return out


async def test_push_approve_submit_reaches_the_nodes_toedge_subjects(
    nats_server: NatsServer,
) -> None:
    settings = Settings(nats_url=nats_server.url)
    async with await Bus.connect(nats_server.url, settings=settings) as bus:
        await bus.ensure_streams()
        async with handlers(settings, bus):
            pushed = await request(
                bus,
                by("alice", BundlePushed(app=app_spec(BME), pusher="alice"), BME),
                handler="ecr",
                answers=["evt.ecr.bundle.>"],
            )
            assert [(e.type, e.data.owner) for e in pushed.events] == [
                ("ecr.bundle.registered", "alice")
            ]
            approved = await request(
                bus,
                by("admin", BundleApproved(bundle_id=BME, by="admin"), BME),
                handler="ecr",
                answers=[],
            )
            assert approved.refused is None
            await register_nodes(bus, ["W012", "W013"])
            submit = by(
                "alice",
                JobSubmitted(job_id="bme-1", user="alice", spec=job_spec(nodes=["W012", "W013"])),
                "bme-1",
            )
            answer = await request(
                bus, submit, handler="ses", answers=["evt.ses.job.>", "toedge.*.ses.goal.>"]
            )
            assert [e.type for e in answer.events] == [
                "ses.job.scheduled",
                "ses.goal.assigned",
                "ses.goal.assigned",
            ]
            # what each node's agent receives on its durable to-edge consumer
            for node in ("W012", "W013"):
                deliveries = bus.consume(toedge_consumer(node), batch=10, idle=0.5)
                delivery = await asyncio.wait_for(anext(deliveries), 10)
                await delivery.ack()
                await deliveries.aclose()  # type: ignore[attr-defined]
                assert delivery.msg.subject == f"toedge.{node}.ses.goal.assigned"
                goal = delivery.event
                assert goal is not None and goal.data.node == node and goal.data.job_id == "bme-1"
                assert goal.data.plugins[0].bundle_id == BME
                assert goal.causationid == submit.id


# --- SIGKILL mid-stream -------------------------------------------------------------------------

JOBS = 1200


def start_handlers(url: str, log: Path, failpoints: str = "") -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "HIVEBUS_NATS_URL": url,
        "HIVEBUS_DUPLICATE_WINDOW": "100ms",
        "HIVEBUS_LOG_LEVEL": "info",
        "HIVEBUS_LOG_FORMAT": "json",
        "HIVEBUS_FAILPOINTS": failpoints,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "hivebus", "handlers"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM and wait; SIGKILL if it does not stop (never leave a process behind)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise AssertionError("the handlers did not stop on SIGTERM within 15 s") from None


async def ack_floor(bus: Bus, durable: str) -> int:
    try:
        info = await bus.js.consumer_info(EVENTS, durable)
    except Exception:
        return 0
    return info.ack_floor.stream_seq if info.ack_floor else 0


@pytest.mark.slow
async def test_a_handler_process_killed_mid_stream_publishes_nothing_twice(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Four handler processes in turn: one SIGKILLs itself halfway through publishing a batch of
    decisions, one right after publishing and before acknowledging, one is SIGKILLed from
    outside at whatever point it has reached, the last finishes the stream."""
    settings = Settings(nats_url=nats_server.url, duplicate_window=timedelta(milliseconds=100))
    log = tmp_path / "handlers.log"
    async with await Bus.connect(nats_server.url, settings=settings) as bus:
        await bus.ensure_streams()
        info = await bus.js.stream_info(EVENTS)
        assert info.config.duplicate_window == pytest.approx(0.1)
        setup = start_handlers(nats_server.url, log)
        try:
            pushed = await request(
                bus,
                by("alice", BundlePushed(app=app_spec(BME), pusher="alice"), BME),
                handler="ecr",
                answers=["evt.ecr.bundle.>"],
                timeout=30,
            )
            assert pushed.of_type("ecr.bundle.registered")
            await request(
                bus,
                by("admin", BundleApproved(bundle_id=BME, by="admin"), BME),
                handler="ecr",
                answers=[],
            )
            await register_nodes(bus, ["A", "B", "C"], tags=["t"], cpus=64)
        finally:
            stop_process(setup)
        spec = job_spec(tags=["t"])
        submits = [
            by(
                "alice",
                JobSubmitted(
                    job_id=f"j{i:04d}", user="alice", spec=spec, policy="roundrobin", max_nodes=1
                ),
                f"j{i:04d}",
            )
            for i in range(JOBS)
        ]
        seqs = await bus.publish_many(submits)
        for failpoints in ("ses.mid_publish=2", "ses.after_publish=2"):
            crashing = start_handlers(nats_server.url, log, failpoints)
            try:
                assert await asyncio.to_thread(crashing.wait, 60) == -signal.SIGKILL
            finally:
                if crashing.poll() is None:
                    crashing.kill()
            await asyncio.sleep(
                0.3
            )  # past the duplicate window: only the handler can avoid duplicates
        killed = start_handlers(nats_server.url, log)
        try:
            start = await ack_floor(bus, "handler-ses")

            async def progressed() -> bool:
                return await ack_floor(bus, "handler-ses") > start

            await until(progressed, 30, "progress after two crashes", max_delay=0.005)
            killed.send_signal(signal.SIGKILL)
            killed.wait(10)
        finally:
            if killed.poll() is None:
                killed.kill()
        assert await ack_floor(bus, "handler-ses") < seqs[-1], (
            "the kill came too late to be mid-stream"
        )
        await asyncio.sleep(0.3)
        last = start_handlers(nats_server.url, log)
        try:

            async def all_answered() -> bool:
                return await ack_floor(bus, "handler-ses") >= seqs[-1]

            await until(all_answered, 60, "every job decided after the restarts")
        finally:
            stop_process(last)
        events = await all_events(bus)

    ids = Counter(e.id for _, _, e in events)
    assert [i for i, n in ids.items() if n > 1] == []
    answers = Counter((e.data.job_id, e.type) for _, _, e in events if e.source == "handler/ses")
    for submit in submits:
        job = submit.data.job_id
        assert answers[(job, "ses.job.scheduled")] + answers[(job, "ses.job.rejected")] == 1, job
        assert answers[(job, "ses.goal.assigned")] == answers[(job, "ses.job.scheduled")], job
    # and the decisions are those of a scheduler that never crashed: round-robin went on
    # exactly where it had stopped each time
    replay = Driver(SesHandler())
    expected = []
    for _, _, event in events:
        if event.source != "handler/ses":
            expected += replay.deliver(event).publish
    published = [e for _, _, e in events if e.source == "handler/ses"]
    assert [codec.encode(e) for e in published] == [codec.encode(e) for e in expected]
    chosen = [e.data.placements[0].node for e in published if e.type == "ses.job.scheduled"]
    assert chosen[:6] == ["A", "B", "C", "A", "B", "C"] and len(chosen) == JOBS
    resumed = [
        json.loads(line)
        for line in log.read_text().splitlines()
        if '"handler.resumed"' in line and '"ses"' in line
    ]
    assert len(resumed) == 5
    # the processes after each self-inflicted crash found published, unacknowledged decisions
    assert resumed[2]["recorded"] > 0 and resumed[3]["recorded"] > 0, resumed
