"""What the executors decide without running anything: the container docker-py would create,
how an engine's final state becomes a result, perf from stats, input defaults, the factory.

These are pure (no engine, no subprocess), so they run everywhere — including where the
docker contract cases in test_executors.py skip for want of an engine.
"""

from __future__ import annotations

from pathlib import Path

import docker.models.containers
import pytest

from hivebus.edge.executors import (
    Limits,
    Perf,
    RunSpec,
    executor_availability,
    input_args,
    make_executor,
    plugin_environment,
)
from hivebus.edge.executors.docker import (
    DockerExecutor,
    classify,
    container_config,
    perf_from_stats,
)
from hivebus.errors import ExecutorError, SetupError
from hivebus.schemas.ecr import AppInput

MIB = 2**20


def spec(**changes: object) -> RunSpec:
    base: dict[str, object] = {
        "run_id": "01HRUN",
        "node": "W012",
        "job_id": "job-1",
        "plugin": "bme680",
        "bundle_id": "waggle/plugin-bme680:0.2.1",
        "image": "registry.sagecontinuum.org/waggle/plugin-bme680:0.2.1",
        "args": ("--interval", "30"),
        "env": {"HIVEBUS_LOCAL_BUS": "nats://127.0.0.1:40111", "HIVEBUS_VSN": "W012"},
    }
    return RunSpec(**{**base, **changes})  # type: ignore[arg-type]


# --- docker: the container ----------------------------------------------------------------------


def host_config(config: dict[str, object]) -> dict[str, object]:
    """What docker-py turns these keywords into (it raises on any it does not know)."""
    args = docker.models.containers._create_container_args({**config, "version": "1.44"})
    return dict(args["host_config"])


def test_container_gets_the_limits_the_engine_enforces() -> None:
    config = container_config(spec(limits=Limits(cpu=0.5, memory_bytes=128 * MIB)))
    assert config["mem_limit"] == 128 * MIB and config["memswap_limit"] == 128 * MIB
    assert config["nano_cpus"] == 500_000_000
    assert "device_requests" not in config
    hc = host_config(config)
    assert (
        hc["Memory"] == 128 * MIB
        and hc["MemorySwap"] == 128 * MIB
        and hc["NanoCpus"] == 500_000_000
    )
    assert hc["NetworkMode"] == "host"  # the local bus listens on loopback


def test_a_run_that_asks_for_a_gpu_gets_a_device_request() -> None:
    hc = host_config(container_config(spec(limits=Limits(gpu=True))))
    assert hc["DeviceRequests"] == [
        {"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]


def test_container_runs_the_jobs_entrypoint_and_args_with_the_node_environment() -> None:
    config = container_config(spec(command=("python3", "/app/main.py")))
    assert config["entrypoint"] == ["python3", "/app/main.py"] and config["command"] == [
        "--interval",
        "30",
    ]
    assert config["image"] == "registry.sagecontinuum.org/waggle/plugin-bme680:0.2.1"
    env = config["environment"]
    assert (
        env["HIVEBUS_NODE"] == "W012"
        and env["HIVEBUS_TASK"] == "bme680"
        and env["HIVEBUS_RUN_ID"] == "01HRUN"
    )
    assert env["HIVEBUS_LOCAL_BUS"] == "nats://127.0.0.1:40111"
    assert config["labels"]["org.hivebus.bundle"] == "waggle/plugin-bme680:0.2.1"
    assert container_config(spec())["entrypoint"] is None  # the image's own ENTRYPOINT


def test_the_upload_dir_is_mounted_at_the_same_path() -> None:
    config = container_config(spec(env={"HIVEBUS_UPLOAD_DIR": "/var/lib/hivebus/uploads/incoming"}))
    assert config["volumes"]["/var/lib/hivebus/uploads/incoming"] == {
        "bind": "/var/lib/hivebus/uploads/incoming",
        "mode": "rw",
    }
    assert (
        "/var/lib/hivebus/uploads/incoming:/var/lib/hivebus/uploads/incoming:rw"
        in host_config(config)["Binds"]
    )


def test_the_waggle_shim_and_the_sdk_are_mounted_read_only_first_on_the_path() -> None:
    from hivebus.edge.shim import CONTAINER_SHIM, waggle_shim_dir

    config = container_config(spec(env={"PYTHONPATH": "/app/lib"}))
    shim = str(waggle_shim_dir() / "waggle")
    assert config["volumes"][shim] == {"bind": f"{CONTAINER_SHIM}/waggle", "mode": "ro"}
    assert all(
        Path(host).exists() and mount["mode"] == "ro" for host, mount in config["volumes"].items()
    )
    assert config["environment"]["PYTHONPATH"] == "/run/hivebus/shim:/run/hivebus/sdk:/app/lib"


# --- docker: outcomes -------------------------------------------------------------------------


def outcome(state: dict[str, object], code: int, kill_reason=None, message: str = ""):  # type: ignore[no-untyped-def]
    return classify(
        state,
        code,
        kill_reason=kill_reason,
        kill_message=message,
        memory_limit=64 * MIB,
        perf=Perf(),
        log_tail=("last",),
    )


def test_engine_states_become_reasons() -> None:
    assert outcome({"OOMKilled": True}, 137).reason == "oom"
    assert "64.0 MiB" in outcome({"OOMKilled": True}, 137).message
    assert (
        outcome({}, 137, "timeout", "still running at its 5 s wall-time limit").reason == "timeout"
    )
    assert outcome({}, 143, "stopped", "stopped on request").reason == "stopped"
    done = outcome({}, 0)
    assert (done.state, done.exit_code, done.reason) == ("completed", 0, None)
    failed = outcome({"Error": "boom"}, 2)
    assert (failed.state, failed.reason, failed.exit_code) == (
        "failed",
        "exit",
        2,
    ) and "boom" in failed.message
    assert outcome({"OOMKilled": True}, 137, "timeout").reason == "oom"  # the engine's verdict wins
    assert (
        outcome({}, 137, "oom").reason == "oom"
    )  # killed by the executor at the engine's oom event


def test_oom_killed_needs_exit_137_because_cgroup_v1_sets_it_for_a_child_too() -> None:
    survived = outcome({"OOMKilled": True}, 0)
    assert (survived.state, survived.reason) == ("completed", None)
    assert (
        "a process in it was killed for exceeding the memory limit of 64.0 MiB" in survived.message
    )
    failed = outcome({"OOMKilled": True}, 1)
    assert (failed.state, failed.reason, failed.exit_code) == ("failed", "exit", 1)
    assert outcome({}, 0, "oom").state == "completed"  # the kill came after it had exited by itself


def test_a_memory_error_under_a_limit_is_oom_and_a_missing_command_not_found() -> None:
    def tail(code: int, *lines: str):  # type: ignore[no-untyped-def]
        return classify(
            {},
            code,
            kill_reason=None,
            kill_message="",
            memory_limit=64 * MIB,
            perf=Perf(),
            log_tail=lines,
        )

    assert tail(1, "Traceback (most recent call last):", "MemoryError").reason == "oom"
    missing = tail(127, "hivebus-plugin: 1: exec: nope-xyz: not found")
    assert (missing.reason, missing.message) == (
        "not_found",
        "command not found in the image: 1: exec: nope-xyz: not found",
    )


def test_output_is_merged_through_a_shell_with_the_images_own_program() -> None:
    from hivebus.edge.executors.docker import MERGE_WRAPPER

    own = container_config(
        spec(args=()),
        merge_output=True,
        image_config={"Entrypoint": ["/app/run"], "Cmd": ["--fast"]},
    )
    assert own["entrypoint"] == list(MERGE_WRAPPER) and own["command"] == ["/app/run", "--fast"]
    given = container_config(
        spec(command=("python3", "main.py")),
        merge_output=True,
        image_config={"Entrypoint": ["/app/run"], "Cmd": ["--fast"]},
    )
    assert given["command"] == [
        "python3",
        "main.py",
        "--interval",
        "30",
    ]  # an entrypoint resets CMD
    assert container_config(spec(args=()), merge_output=True, image_config={})["entrypoint"] is None


def test_run_cgroup_accounting_is_read_from_v1_and_v2_layouts(tmp_path: Path) -> None:
    from hivebus.edge.executors.cgroups import RunCgroup, parent_of

    parent = parent_of("01H/RUN")
    assert parent == "/hivebus/01H_RUN"
    v1 = tmp_path / "v1"
    for ctrl, files in {
        "cpuacct": {"cpuacct.usage": "1500000000"},
        "memory": {
            "memory.max_usage_in_bytes": str(100 * MIB),
            "memory.stat": f"cache 0\ntotal_inactive_file {4 * MIB}\n",
        },
    }.items():
        (v1 / ctrl / "hivebus" / "01H_RUN").mkdir(parents=True)
        for name, text in files.items():
            (v1 / ctrl / "hivebus" / "01H_RUN" / name).write_text(text)
    found = RunCgroup.find(parent, root=v1)
    assert found is not None and found.version == 1
    got = found.read()
    assert got is not None and (got.cpu_seconds, got.peak_bytes) == (1.5, 96 * MIB)
    v2 = tmp_path / "v2"
    (v2 / "hivebus" / "01H_RUN").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory\n")
    for name, text in {
        "cpu.stat": "usage_usec 250000\nuser_usec 200000\n",
        "memory.peak": str(50 * MIB),
        "memory.stat": f"anon 1\ninactive_file {2 * MIB}\n",
    }.items():
        (v2 / "hivebus" / "01H_RUN" / name).write_text(text)
    found = RunCgroup.find(parent, root=v2)
    assert found is not None and found.version == 2
    got = found.read()
    assert got is not None and (got.cpu_seconds, got.peak_bytes) == (0.25, 48 * MIB)
    assert RunCgroup.find("/hivebus/other", root=v2) is None


def test_perf_from_cgroup_v2_and_v1_stats() -> None:
    v2 = [
        {
            "cpu_stats": {"cpu_usage": {"total_usage": 200_000_000}},
            "memory_stats": {"usage": 50 * MIB, "stats": {"inactive_file": 10 * MIB}},
        },
        {
            "cpu_stats": {"cpu_usage": {"total_usage": 1_500_000_000}},
            "memory_stats": {"usage": 30 * MIB, "stats": {"inactive_file": 2 * MIB}},
        },
    ]
    perf = perf_from_stats(v2, 2.5)
    assert perf == Perf(cpu_seconds=1.5, max_rss_bytes=40 * MIB, wall_seconds=2.5)
    v1 = [
        {
            "cpu_stats": {"cpu_usage": {"total_usage": 10**9}},
            "memory_stats": {"usage": 20 * MIB, "max_usage": 90 * MIB, "stats": {"cache": 5 * MIB}},
        }
    ]
    assert perf_from_stats(v1, 1.0).max_rss_bytes == 85 * MIB
    assert perf_from_stats([], 1.0) == Perf(wall_seconds=1.0)


def test_no_engine_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    socket = tmp_path / "docker.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket}")
    why = DockerExecutor().available()
    assert why is not None and why.startswith(f"no Docker engine answers at unix://{socket}")


def test_pull_policy_is_checked_when_built() -> None:
    with pytest.raises(SetupError, match="pull='sometimes'"):
        DockerExecutor(pull="sometimes")


# --- shared helpers and the factory -----------------------------------------------------------


def test_input_defaults_fill_what_the_job_does_not_give() -> None:
    inputs = [
        AppInput(id="interval", type="int", default=30),
        AppInput(id="continuous", type="boolean", default=False),
        AppInput(id="verbose", type="boolean", default=True),
        AppInput(id="model", type="string", default="tiny.tflite"),
        AppInput(id="stream", type="string"),
    ]
    assert input_args(inputs, ("--interval", "5")) == (
        "--interval",
        "5",
        "--verbose",
        "--model",
        "tiny.tflite",
    )
    assert input_args(inputs, ("--model=big.tflite",)) == (
        "--model=big.tflite",
        "--interval",
        "30",
        "--verbose",
    )


def test_identity_variables_come_from_the_spec() -> None:
    env = plugin_environment(spec(env={"HIVEBUS_JOB": "someone-elses", "SENSOR": "bme680"}))
    assert env["HIVEBUS_JOB"] == "job-1" and env["SENSOR"] == "bme680"
    assert env["HIVEBUS_PLUGIN"] == "waggle/plugin-bme680:0.2.1"


def test_make_executor_builds_by_name_and_explains_mistakes() -> None:
    assert make_executor().name == "process"
    assert make_executor("docker", network_mode="bridge").name == "docker"
    assert make_executor("wasm", backstop_seconds=1.0).name == "wasm"
    with pytest.raises(
        ExecutorError, match=r"unknown executor 'k8s'.*known executors: process, docker, wasm"
    ):
        make_executor("k8s")
    with pytest.raises(ExecutorError, match="unexpected keyword argument 'memory'"):
        make_executor("process", memory=1)
    availability = executor_availability()
    assert set(availability) == {"process", "docker", "wasm"}
    assert availability["process"] is None and availability["wasm"] is None  # wasmtime is a dependency


async def test_starting_without_an_engine_fails_the_run_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'docker.sock'}")
    executor = DockerExecutor()
    handle = await executor.start(spec())
    result = await executor.wait(handle)
    assert (result.state, result.reason) == ("failed", "error")
    assert result.message.startswith("docker: ") and result.log_tail == (
        f"hivebus: {result.message}",
    )
    assert await executor.logs(handle, 5) == [f"hivebus: {result.message}"]
