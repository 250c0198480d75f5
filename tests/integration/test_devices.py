"""Devices as resources through the real handlers on a real nats-server and the real CLI: a node
registers a node.yaml with a top camera, a job whose app claims it is placed and its goal names
the device on the node's to-edge consumer; a second job wanting the same camera is refused, by
``hivebus job submit --dry-run`` and by the scheduler, naming the device and its holder; once the
first job is removed the second one gets the camera."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import toedge_consumer
from hivebus.config import Settings
from hivebus.formats import load_manifest
from hivebus.handlers.testing import app_spec, resources
from hivebus.schemas.ecr import BundleApproved, BundlePushed
from hivebus.schemas.node import NodeHeartbeat, NodeRegistered
from hivebus.services.dryrun import DRYRUN_SUBJECT
from hivebus.services.requests import request
from tests.integration.test_handlers import by, handlers, until
from tests.integration.test_services import hivebus as run_cli

pytestmark = pytest.mark.integration

SAMPLER = "waggle/plugin-image-sampler:0.3.0"
COUNTER = "waggle/plugin-object-counter:0.5.1"
TOP = [{"type": "RGB_image_producer", "view": "top", "min_resolution": "600x800"}]
NODE_YAML = """\
node_id: W012
vsn: W012
hardware: {arch: linux/arm64, cpus: 8, memory: 16Gi, disk: 100Gi}
devices:
  - name: top_camera
    type: RGB_image_producer
    view: top
    resolution: 1920x1080
    path: /dev/video0
"""
JOB = """\
name: {name}
plugins:
  - name: {plugin}
    pluginSpec:
      image: registry.sagecontinuum.org/{bundle}
nodes:
  W012:
scienceRules:
  - "schedule({plugin}): cronjob('{plugin}', '*/5 * * * *')"
"""
HELD = "W012's top_camera (RGB_image_producer) is claimed by job heat-1's plugin imagesampler"


async def hivebus(url: str, *args: str) -> tuple[int, str]:
    return await run_cli(url, *args, columns=250)  # wide enough for a holder's whole reason on one line


def job_file(tmp_path: Path, name: str, plugin: str, bundle: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(JOB.format(name=name, plugin=plugin, bundle=bundle))
    return str(path)


async def test_an_exclusive_camera_serves_one_job_at_a_time(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    url = nats_server.url
    settings = Settings(nats_url=url)
    (tmp_path / "node.yaml").write_text(NODE_YAML)
    manifest = load_manifest(tmp_path / "node.yaml")
    sampler = job_file(tmp_path, "heat", "imagesampler", SAMPLER)
    counter = job_file(tmp_path, "count", "counter", COUNTER)
    async with await Bus.connect(url, settings=settings) as bus:
        await bus.ensure_streams()
        async with handlers(settings, bus):
            for bundle in (SAMPLER, COUNTER):
                app = app_spec(bundle, resource_list=TOP)
                await request(
                    bus,
                    by("alice", BundlePushed(app=app, pusher="alice"), bundle),
                    handler="ecr",
                    answers=[],
                )
                await request(
                    bus,
                    by("admin", BundleApproved(bundle_id=bundle, by="admin"), bundle),
                    handler="ecr",
                    answers=[],
                )
            beat = NodeHeartbeat(node="W012", resources=resources(cpus=8), uptime_seconds=1.0)
            await bus.publish_many(
                [
                    by("node/W012", NodeRegistered(manifest=manifest), "W012"),
                    by("node/W012", beat, "W012"),
                ]
            )

            rc, out = await hivebus(
                url, "job", "submit", sampler, "--user", "alice", "--id", "heat-1"
            )
            assert rc == 0, out
            assert "top_camera" in out  # the devices column

            # The node's agent receives the goal with the device it got.
            deliveries = bus.consume(toedge_consumer("W012"), batch=10, idle=0.5)
            delivery = await asyncio.wait_for(anext(deliveries), 10)
            await delivery.ack()
            await deliveries.aclose()  # type: ignore[attr-defined]
            goal = delivery.event
            assert goal is not None and goal.type == "ses.goal.assigned"
            (plugin,) = goal.data.plugins
            assert [(d.name, d.path) for d in plugin.devices or []] == [
                ("top_camera", "/dev/video0")
            ]

            rc, out = await hivebus(url, "job", "submit", counter, "--user", "alice", "--dry-run")
            assert rc == 1 and "would be rejected" in out, out
            assert HELD in " ".join(out.split()), out
            rc, out = await hivebus(
                url, "job", "submit", counter, "--user", "alice", "--id", "count-1"
            )
            assert rc != 0 and HELD in " ".join(out.split()), out

            rc, out = await hivebus(url, "job", "rm", "heat-1", "--user", "alice")
            assert rc == 0, out
            rc, out = await hivebus(
                url, "job", "submit", counter, "--user", "alice", "--id", "count-2"
            )
            assert rc == 0 and "top_camera" in out, out


async def test_a_real_agents_node_yaml_devices_reach_the_scheduler_and_the_nodes_view(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """The edge path: ``hivebus node run --manifest node.yaml``'s agent registers its devices,
    the scheduler places on them and ``hivebus node list`` shows them (through the projector)."""
    from hivebus.bus.streams import DATA, EVENTS
    from hivebus.formats import load_job
    from hivebus.projections.runner import running as projecting
    from tests.integration.test_agent import agent_config, running

    url = nats_server.url
    settings = Settings(nats_url=url)
    (tmp_path / "node.yaml").write_text(
        NODE_YAML + "  - {name: mic, type: microphone, exclusive: false}\n"
    )
    manifest = load_manifest(tmp_path / "node.yaml")
    # Hourly on New Year's day at midnight: placed now, never run during the test.
    job = tmp_path / "heat.yaml"
    job.write_text(
        JOB.format(name="heat", plugin="imagesampler", bundle=SAMPLER).replace(
            "*/5 * * * *", "0 0 1 1 *"
        )
    )
    async with await Bus.connect(url, settings=settings) as bus:
        await bus.ensure_streams()
        async with handlers(settings, bus), projecting(bus, tmp_path / "views.duckdb") as projector:
            app = app_spec(SAMPLER, resource_list=TOP)
            await request(
                bus,
                by("alice", BundlePushed(app=app, pusher="alice"), SAMPLER),
                handler="ecr",
                answers=[],
            )
            await request(
                bus,
                by("admin", BundleApproved(bundle_id=SAMPLER, by="admin"), SAMPLER),
                handler="ecr",
                answers=[],
            )
            config = agent_config(tmp_path, url, manifest=manifest, heartbeat_seconds=0.5)
            async with running(config):
                spec = load_job(job).model_dump(mode="json")

                async def placed_on_the_camera() -> bool:
                    body = {"user": "alice", "spec": spec}
                    plan = json.loads(await bus.request(DRYRUN_SUBJECT, body, timeout=10))
                    return [p.get("devices") for p in plan["placements"]] == [["top_camera"]]

                await until(placed_on_the_camera, 30, "the agent's registration to be placed on")
                rc, out = await hivebus(
                    url, "job", "submit", str(job), "--user", "alice", "--id", "heat-1"
                )
                assert rc == 0 and "top_camera" in out, out
                ends = {DATA: await bus.last_seq(DATA), EVENTS: await bus.last_seq(EVENTS)}
                assert await projector.wait_for(ends, 30)
                rc, listed = await hivebus(url, "node", "list", "--json")
                rc_table, table = await hivebus(url, "node", "list")
    assert rc == 0, listed
    (node,) = json.loads(listed)
    assert [(d["name"], d["type"], d["exclusive"]) for d in node["devices"]] == [
        ("top_camera", "RGB_image_producer", True),
        ("mic", "microphone", False),
    ]
    assert node["devices"][0]["attributes"] == {"view": "top", "resolution": "1920x1080"}
    assert rc_table == 0 and "top_camera,mic (shared)" in table, table
