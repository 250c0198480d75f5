"""The devices a goal gives a plugin reach its run: the run's spec names their host paths and
its environment says which devices it got (``HIVEBUS_DEVICES``, which the job's env cannot
set), and the docker executor passes the paths into the container."""

from __future__ import annotations

import json

import docker.models.containers

from hivebus.edge.executors import RunSpec
from hivebus.edge.executors.docker import container_config
from hivebus.schemas.ses import GoalDevice, GoalPlugin
from tests.unit.test_edge_runner import T0, Harness, goal

CAMERA = GoalDevice(name="top_camera", type="RGB_image_producer", path="/dev/video0")
SHARED = GoalDevice(name="mic", type="microphone", exclusive=False)


async def test_a_run_gets_its_goals_devices_and_cannot_be_told_others() -> None:
    h = Harness()
    plugin = GoalPlugin(
        name="p",
        bundle_id="test/p:1.0",
        image="test/p:1.0",
        env={"HIVEBUS_DEVICES": "[]"},
        devices=[CAMERA, SHARED],
    )
    h.runner.set_goals({"job-1": goal(["schedule(p): true"], [plugin])})
    h.runner.tick(T0)
    await h.settle()
    (run,) = h.executor.specs
    assert run.devices == ("/dev/video0",)  # the shared mic has no path to pass
    assert json.loads(run.env["HIVEBUS_DEVICES"]) == [
        {
            "name": "top_camera",
            "type": "RGB_image_producer",
            "path": "/dev/video0",
            "exclusive": True,
        },
        {"name": "mic", "type": "microphone", "exclusive": False},
    ]
    await h.runner.shutdown()


async def test_a_run_without_devices_has_none() -> None:
    h = Harness()
    h.runner.set_goals({"job-1": goal(["schedule(p): true"])})
    h.runner.tick(T0)
    await h.settle()
    (run,) = h.executor.specs
    assert run.devices == () and "HIVEBUS_DEVICES" not in run.env
    await h.runner.shutdown()


def spec(devices: tuple[str, ...] = ()) -> RunSpec:
    return RunSpec(
        run_id="01HRUN",
        node="W012",
        job_id="job-1",
        plugin="cam",
        bundle_id="waggle/plugin-image-sampler:0.3.0",
        image="registry.sagecontinuum.org/waggle/plugin-image-sampler:0.3.0",
        devices=devices,
    )


def test_the_container_gets_the_devices_at_the_same_path() -> None:
    config = container_config(spec(devices=("/dev/video0", "/dev/ttyUSB0")))
    args = docker.models.containers._create_container_args({**config, "version": "1.44"})
    assert args["host_config"]["Devices"] == [
        {"PathOnHost": p, "PathInContainer": p, "CgroupPermissions": "rwm"}
        for p in ("/dev/video0", "/dev/ttyUSB0")
    ]
    assert "devices" not in container_config(spec())
