"""The node takes for upload only files that the plugin's own run staged (issue 16).

Each run gets its own upload dir and token from the node's ``UploadService``
(``HIVEBUS_UPLOAD_DIR``, ``HIVEBUS_UPLOAD_TOKEN``); a ``local.upload`` request must name its
run and a path inside that run's dir. Real pieces: a node-local nats-server, the upload
service, ``PluginRun`` with the process executor running a real plugin process.
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

from hivebus.edge.executors import Capacity, ResourceGate, make_executor
from hivebus.edge.goals import Goal
from hivebus.edge.runs import PluginRun, RunEnvironment
from hivebus.edge.uploads import UploadService
from hivebus.schemas.ecr import HardwareProfile
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import PluginStatus
from hivebus.schemas.ses import GoalAssigned, GoalPlugin

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
