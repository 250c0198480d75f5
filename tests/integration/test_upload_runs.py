"""The node takes for upload only files that the plugin's own run staged (issue 16).

Each run gets its own upload dir and token from the node's ``UploadService``
(``HIVEBUS_UPLOAD_DIR``, ``HIVEBUS_UPLOAD_TOKEN``); a ``local.upload`` request must name its
run and a path inside that run's dir. Real pieces: a node-local nats-server, the upload
service, ``PluginRun`` with the process executor running a real plugin process, and a whole
node agent shipping a scheduled plugin's frame to the hub's upload service.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import EVENTS
from hivebus.edge.executors import Capacity, ResourceGate, make_executor
from hivebus.edge.goals import Goal
from hivebus.edge.runs import PluginRun, RunEnvironment
from hivebus.edge.uploads import UploadService
from hivebus.schemas.ecr import HardwareProfile
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import PluginStatus
from hivebus.schemas.ses import GoalAssigned, GoalPlugin
from hivebus.services.uploads import UploadDecider
from hivebus.web.objects import store_name

pytestmark = pytest.mark.integration

NODE = "W012"
TS = 1_800_000_000_000_000_000


@pytest.fixture
async def service(nats_server_factory, tmp_path: Path) -> AsyncIterator[UploadService]:
    local = nats_server_factory("local")
    nc = await nats.connect(local.url)
    uploads = UploadService(nc, tmp_path / "agent", NODE, lambda event: None, lambda: None,
                            runs_dir=tmp_path / "agent" / "scratch" / "uploads")
    uploads.local_url = local.url  # type: ignore[attr-defined]
    stop = asyncio.Event()
    task = asyncio.create_task(uploads.run(stop))
    await asyncio.wait_for(uploads.ready.wait(), 10)
    yield uploads
    stop.set()
    await asyncio.wait_for(task, 10)
    await nc.close()


async def ask(service: UploadService, body: dict[str, Any]) -> dict[str, Any]:
    async with await nats.connect(service.local_url) as nc:  # type: ignore[attr-defined]
        return json.loads((await nc.request("local.upload", json.dumps(body).encode(), timeout=10)).data)


async def run_plugin(service: UploadService, code: str, env: dict[str, str] | None = None) -> tuple[PluginRun, list[PluginStatus]]:
    statuses: list[PluginStatus] = []

    async def emit(status: PluginStatus, goal: Goal) -> None:
        statuses.append(status)

    plugin = GoalPlugin(name="cam", bundle_id="acme/cam:1.0.0", image="acme/cam:1.0.0",
                        entrypoint=sys.executable, args=["-c", textwrap.dedent(code)], env=env or {})
    goal = Goal.of(Event.new(GoalAssigned(node=NODE, job_id="job-cam", plugins=[plugin], science_rules=[]),
                             source="handler/ses", subject="job-cam"))
    run = PluginRun(
        goal, plugin, executor=make_executor("process"), gate=ResourceGate(Capacity(cpus=2, memory_bytes=2**31)),
        emit=emit, wall_seconds=60,
        environment=RunEnvironment(node=NODE, env={"HIVEBUS_LOCAL_BUS": service.local_url},  # type: ignore[attr-defined]
                                   hardware=HardwareProfile(arch="linux/amd64"), uploads=service),
    )
    await asyncio.wait_for(run.start(), 90)
    return run, statuses


async def test_a_run_uploads_what_it_staged_and_nothing_outside_its_own_dir(service: UploadService, tmp_path: Path) -> None:
    secret = tmp_path / "agent-credentials.txt"
    secret.write_text("the node's hub password")
    code = f"""
        import json, os
        from pathlib import Path
        import nats, asyncio
        from hivebus.plugin import Plugin

        with Plugin() as plugin:
            Path("frame.jpg").write_bytes(b"pixels")
            plugin.upload_file("frame.jpg", timestamp={TS})
            print("dir:", os.environ["HIVEBUS_UPLOAD_DIR"])

        async def sneak(path):
            nc = await nats.connect(os.environ["HIVEBUS_LOCAL_BUS"])
            body = {{"path": path, "meta": {{}}, "timestamp": {TS}, "keep": True,
                     "run_id": os.environ["HIVEBUS_RUN_ID"], "token": os.environ["HIVEBUS_UPLOAD_TOKEN"]}}
            reply = await nc.request("local.upload", json.dumps(body).encode(), timeout=10)
            await nc.close()
            return json.loads(reply.data)

        print("outside:", asyncio.run(sneak({str(secret)!r}))["error"])
        link = Path(os.environ["HIVEBUS_UPLOAD_DIR"]) / "innocent.txt"
        link.symlink_to({str(secret)!r})
        print("link:", asyncio.run(sneak(str(link)))["error"])
    """
    run, statuses = await run_plugin(service, code)
    assert statuses[-1].state == "completed", statuses[-1].log_tail
    tail = statuses[-1].log_tail
    run_dir = Path(next(line for line in tail if line.startswith("dir: "))[5:])
    assert run_dir.parent == tmp_path / "agent" / "scratch" / "uploads" and run.run_id in run_dir.name
    outside = next(line for line in tail if line.startswith("outside: "))
    assert f"{secret} is outside run {run.run_id}'s upload dir {run_dir}" in outside
    link = next(line for line in tail if line.startswith("link: "))
    assert f"is outside run {run.run_id}'s upload dir {run_dir}" in link  # a link is judged by its target
    [staged] = service.pending()  # the one it staged, not the secret
    assert staged.data.read_bytes() == b"pixels" and staged.meta["job"] == "job-cam"
    assert service.counters == {**service.counters, "accepted": 1, "refused": 2}
    assert not run_dir.exists()  # removed when the run ended


async def test_another_runs_dir_an_unknown_run_and_an_ended_run_are_refused(service: UploadService) -> None:
    mine, theirs = service.open_run("run-a"), service.open_run("run-b")
    theirs_file = Path(theirs["HIVEBUS_UPLOAD_DIR"]) / "b.txt"
    theirs_file.write_text("run b's")
    body = {"path": str(theirs_file), "meta": {}, "timestamp": TS, "keep": True}
    reply = await ask(service, {**body, "run_id": "run-a", "token": mine["HIVEBUS_UPLOAD_TOKEN"]})
    assert reply["error"].startswith(f"{theirs_file} is outside run run-a's upload dir {mine['HIVEBUS_UPLOAD_DIR']}")
    forged = await ask(service, {**body, "run_id": "run-b", "token": mine["HIVEBUS_UPLOAD_TOKEN"]})
    assert "names no running plugin of this node (run 'run-b')" in forged["error"]  # a wrong token
    anonymous = await ask(service, body)
    assert "names no running plugin of this node (run None)" in anonymous["error"]
    assert "ref" in await ask(service, {**body, "run_id": "run-b", "token": theirs["HIVEBUS_UPLOAD_TOKEN"]})
    service.close_run("run-b")
    ended = await ask(service, {**body, "run_id": "run-b", "token": theirs["HIVEBUS_UPLOAD_TOKEN"]})
    assert "names no running plugin" in ended["error"] and not theirs_file.parent.exists()


async def test_a_jobs_env_cannot_move_the_runs_upload_dir(service: UploadService, tmp_path: Path) -> None:
    code = """
        import os
        print("dir:", os.environ["HIVEBUS_UPLOAD_DIR"])
    """
    _, statuses = await run_plugin(service, code, env={"HIVEBUS_UPLOAD_DIR": str(tmp_path)})
    [line] = [x for x in statuses[-1].log_tail if x.startswith("dir: ")]
    assert Path(line[5:]).parent == tmp_path / "agent" / "scratch" / "uploads"


async def test_the_agent_ships_a_scheduled_plugins_file_from_its_run_dir_to_the_nodes_bucket(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """The whole path on a real agent: a goal schedules examples/plugins/plugin-snapshot on the
    process executor; its run's own upload dir takes the frame; the hub records it in upload-W012."""
    from tests.integration.test_agent import agent_config, goal, running, until

    snapshot = GoalPlugin(name="snapshot", bundle_id="waggle/plugin-snapshot:0.1.0",
                          image="registry.sagecontinuum.org/waggle/plugin-snapshot:0.1.0")
    async with await Bus.connect(nats_server.url) as hub:
        await hub.ensure_streams()
        decider = await UploadDecider(hub).serve()
        try:
            async with running(agent_config(tmp_path, nats_server.url)) as agent:
                await hub.publish(goal("job-snap", [snapshot], ["schedule(snapshot): true"]))

                async def recorded() -> bool:
                    return bool([e async for _, e in hub.events(EVENTS, filter_subjects=["evt.storage.object.put.>"],
                                                                stop_at_end=True)])

                async def ended() -> set[str]:
                    statuses = [e async for _, e in hub.events(EVENTS, stop_at_end=True,
                                                               filter_subjects=["fromedge.W012.plugin.status"])]
                    return {e.data.run_id for e in statuses if e.data.state in ("completed", "failed")}

                await until(recorded, 60, "the frame to be recorded in upload-W012")
                await until(lambda: _nonempty(ended()), 60, "the run's last status")
                runs_dir = tmp_path / "node" / "scratch" / "uploads"
                assert all(not (runs_dir / run).exists() for run in await ended())  # removed at the end
                assert agent.uploads.counters["refused"] == 0
            [put] = [e.data async for _, e in hub.events(EVENTS, filter_subjects=["evt.storage.object.put.>"],
                                                         stop_at_end=True)][:1]
        finally:
            await decider.close()
    assert put.bucket_id == "upload-W012" and put.key.startswith("job-snap/snapshot/") and put.key.endswith(".pgm")
    async with await Bus.connect(nats_server.url) as hub:
        data = (await (await hub.js.object_store(store_name("upload-W012"))).get(put.key)).data
    assert data.startswith(b"P5\n64 48\n255\n") and len(data) == put.size


async def _nonempty(found: Any) -> bool:
    return bool(await found)
