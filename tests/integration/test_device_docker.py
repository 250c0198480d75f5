"""A device the scheduler gave a run is in its container, on a real Docker engine (the private
dockerd of tests/docker_engine.py): a character device made for the test (the null device's
numbers, so writing to it is harmless) is there, usable, only for the run that names it."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import textwrap
from pathlib import Path

import pytest

from hivebus.edge.executors import RunSpec, make_executor
from hivebus.schemas.ids import new_ulid
from tests.docker_engine import BASE_IMAGE, DockerEngine

pytestmark = [pytest.mark.integration, pytest.mark.docker]

PROBE = """
    import json, os, stat, sys
    path = sys.argv[1]
    if not os.path.exists(path):
        print(json.dumps(None))
    else:
        st = os.stat(path)
        with open(path, "wb") as device:
            device.write(b"frame")
        print(json.dumps([stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev)]))
"""


def device_node(tmp_path: Path) -> str:
    path = tmp_path / "video0"
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError as exc:
        pytest.skip(f"cannot make a device node here ({exc}): needs root and a dev-capable fs")
    return str(path)


async def test_a_device_of_the_run_is_in_its_container(
    docker_engine: DockerEngine, tmp_path: Path
) -> None:
    executor = make_executor("docker", base_url=docker_engine.host, kill_grace=1.0)
    why_not = executor.available()
    if why_not is not None:
        pytest.skip(f"docker executor unavailable: {why_not}")
    path = device_node(tmp_path)
    try:
        seen = []
        for devices in ((path,), ()):
            spec = RunSpec(
                run_id=new_ulid(),
                node="W012",
                job_id="job-1",
                plugin="camera",
                bundle_id="hivebus-test/camera:1.0.0",
                image=BASE_IMAGE,
                command=("python3", "-c", textwrap.dedent(PROBE), path),
                devices=devices,
            )
            handle = await executor.start(spec)
            result = await asyncio.wait_for(executor.wait(handle), 60)
            assert result.state == "completed", result
            seen.append(json.loads(result.log_tail[-1]))
    finally:
        close = getattr(executor, "close", None)
        if close is not None:
            close()
    assert seen == [[True, 1, 3], None]
