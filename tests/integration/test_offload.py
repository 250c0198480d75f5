"""Node-requested offload against a real server and the real handlers (issue 20, item 3):
a requester that scores highest is told to run locally, one that scores lower sees the best
node chosen, and with no hub it runs locally and reports afterwards."""

from __future__ import annotations

import pytest

from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.config import Settings
from hivebus.edge.offload import ask_offload
from hivebus.handlers.testing import app_spec, manifest, resources
from hivebus.schemas.ecr import BundleApproved, BundlePushed
from hivebus.schemas.node import NodeHeartbeat, NodeRegistered
from hivebus.services.requests import request
from tests.integration.test_handlers import BME, by, handlers

pytestmark = pytest.mark.integration

GiB = 2**30


async def test_the_scheduler_answers_a_nodes_offload_request_with_the_scores(
    nats_server: NatsServer,
) -> None:
    settings = Settings(nats_url=nats_server.url)
    async with await Bus.connect(nats_server.url, settings=settings) as bus:
        await bus.ensure_streams()
        async with handlers(settings, bus):
            await request(
                bus,
                by("alice", BundlePushed(app=app_spec(BME), pusher="alice"), BME),
                handler="ecr",
                answers=["evt.ecr.bundle.>"],
            )
            await request(
                bus,
                by("admin", BundleApproved(bundle_id=BME, by="admin"), BME),
                handler="ecr",
                answers=[],
            )
            sizes = {"BIG": (8, 16 * GiB, 0.1), "SMALL": (2, 2 * GiB, 1.8)}
            events = []
            for node, (cpus, memory, load1) in sizes.items():
                events.append(
                    by(f"node/{node}", NodeRegistered(manifest=manifest(node, cpus=cpus)), node)
                )
                beat = NodeHeartbeat(
                    node=node,
                    resources=resources(cpus=cpus, memory=memory, load1=load1),
                    uptime_seconds=5.0,
                )
                events.append(by(f"node/{node}", beat, node))
            await bus.publish_many(events)

            big = await ask_offload(bus, "BIG", BME, {"cpu": "1"}, timeout=15)
            assert big.decision is not None, "the hub did not answer"
            assert big.run_on == "BIG" and big.local and big.report is None
            assert set(big.decision.scores) == {"BIG", "SMALL"}

            small = await ask_offload(bus, "SMALL", BME, {"cpu": "1"}, timeout=15)
            assert small.decision is not None and small.run_on == "BIG" and not small.local
            assert small.decision.scores["BIG"] > small.decision.scores["SMALL"]


async def test_with_the_hub_down_the_requester_runs_it_locally_and_reports_afterwards(
    nats_server: NatsServer,
) -> None:
    async with await Bus.connect(nats_server.url) as bus:
        await bus.ensure_streams()
        nats_server.kill()
        outcome = await ask_offload(bus, "W012", BME, timeout=1.0)
    assert outcome.run_on == "W012" and outcome.local and outcome.decision is None
    assert outcome.report is not None and outcome.report.type == "ses.offload.ran_locally"
    assert outcome.report.source == "node/W012" and "did not answer" in outcome.report.data.reason
