"""A WASM app end to end, every part a real process on a real nats-server: the projector, the
handlers, two node agents (``hivebus node run``, one with ``--no-wasm``), the ``hivebus ecr``
and ``hivebus job`` commands. The app's only build is ``wasi/wasm``: the scheduler places it
only on the node that advertises the wasm executor, that node runs its ``main.wat`` with the
wasm executor, and the readings the module publishes land in the ``readings`` view with the
node's meta, its runs in ``plugin_runs`` with the store's memory as their peak."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.projections.client import query

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "examples" / "wasm" / "plugin-wasm-counter" / "sage.yaml"
BUNDLE = "hivebus-examples/plugin-wasm-counter:0.1.0"
JOB = f"""\
name: wasm-counter
plugins:
  - name: counter
    pluginSpec:
      image: registry.sagecontinuum.org/{BUNDLE}
nodeTags: [wasm-test]
"""


class Services:
    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HIVEBUS_NATS_URL": self.url,
            "HIVEBUS_DATA_DIR": str(self.root / "data"),
            "HIVEBUS_LOG_LEVEL": "info",
            "COLUMNS": "200",
        }

    def start(self, name: str, *args: str) -> None:
        log = self.root / f"{name}.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", *args],
                env=self.env(),
                cwd=self.root,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.procs.append((proc, log))

    def agent(self, node: str, *flags: str) -> None:
        manifest = self.root / f"{node}.yaml"
        manifest.write_text(
            f"node_id: {node}\nvsn: {node}\ntags: [wasm-test]\n"
            "hardware: {arch: linux/amd64, cpus: 2, memory: 4294967296, disk: 10737418240}\n"
        )
        self.start(
            f"agent-{node}", "hivebus", "node", "run", "--node-id", node, "--hub", self.url,
            "--manifest", str(manifest), "--data-dir", str(self.root / node),
            "--heartbeat", "1", *flags,
        )  # fmt: skip

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for _, log in self.procs)

    def stop(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def services(tmp_path: Path, nats_server: NatsServer) -> Iterator[Services]:
    made = Services(tmp_path, nats_server.url)
    try:
        yield made
    finally:
        made.stop()


def cli(services: Services, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hivebus", *args, "--hub", services.url],
        env=services.env(),
        cwd=services.root,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def until(
    what: str, probe: Callable[[], Awaitable[Any]], services: Services, timeout: float = 90
) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        got = await probe()
        if got:
            return got
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{services.logs()}")


async def test_a_wasm_app_runs_only_where_wasm_is_and_its_readings_reach_the_views(
    services: Services,
) -> None:
    services.start("projector", "hivebus.projections", "--db", str(services.root / "hub.duckdb"))
    services.start("handlers", "hivebus", "handlers")
    services.agent("W100")  # process, and wasm (wasmtime is installed)
    services.agent("W200", "--no-wasm")
    async with await Bus.connect(services.url) as bus:

        async def rows(sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
            try:
                return (await query(bus, sql, params or [], timeout=5)).records()
            except Exception:  # the projector is not up yet
                return []

        await until(
            "both nodes registered",
            lambda: _both(rows("SELECT node_id, executors FROM nodes ORDER BY node_id")),
            services,
        )
        nodes = await rows("SELECT node_id, executors FROM nodes ORDER BY node_id")
        assert [(n["node_id"], n["executors"]) for n in nodes] == [
            ("W100", ["process", "wasm"]),
            ("W200", ["process"]),
        ]

        pushed = cli(services, "ecr", "push", str(APP), "--user", "alice")
        assert pushed.returncode == 0 and f"registered {BUNDLE}" in pushed.stdout, pushed
        approved = cli(services, "ecr", "approve", BUNDLE, "--user", "admin")
        assert approved.returncode == 0, approved
        job = services.root / "job.yaml"
        job.write_text(JOB)
        dry = cli(services, "job", "submit", str(job), "--user", "alice", "--dry-run")
        assert dry.returncode == 0, dry
        shown = " ".join(dry.stdout.split())
        assert "W100" in shown and "do not include wasm" in shown, shown
        submitted = cli(services, "job", "submit", str(job), "--user", "alice", "--id", "wasm-1")
        assert submitted.returncode == 0, submitted
        assert "goals sent to W100" in submitted.stdout and "W200" not in submitted.stdout

        readings = await until(
            "three wasm.counter readings",
            lambda: _at_least(3, rows(
                "SELECT node, value, meta FROM readings WHERE name = 'wasm.counter' ORDER BY seq"
            )),
            services,
        )  # fmt: skip
        assert {r["node"] for r in readings} == {"W100"}
        assert [r["value"] for r in readings[:3]] == [1.0, 2.0, 3.0]
        meta = dict(readings[0]["meta"])
        assert meta["job"] == "wasm-1" and meta["plugin"] == BUNDLE and meta["vsn"] == "W100"
        runs = await until(
            "a completed run",
            lambda: rows(
                "SELECT node, state, exit_code, max_rss_bytes, wall_seconds FROM plugin_runs"
                " WHERE job_id = 'wasm-1' AND state = 'completed'"
            ),
            services,
        )
        assert runs[0]["node"] == "W100" and runs[0]["exit_code"] == 0
        assert runs[0]["max_rss_bytes"] == 65536  # the module's one page, not the worker's RSS
        assert runs[0]["wall_seconds"] > 0
        profile = await until(
            "a profile of the bundle",
            lambda: rows(
                "SELECT runs, failures, mem_bytes_max FROM profiles WHERE bundle_id = ?", [BUNDLE]
            ),
            services,
        )
        assert profile[0]["runs"] >= 1 and profile[0]["mem_bytes_max"] == 65536


async def _both(pending: Awaitable[list[dict[str, Any]]]) -> list[dict[str, Any]] | None:
    got = await pending
    return got if len(got) == 2 else None


async def _at_least(
    n: int, pending: Awaitable[list[dict[str, Any]]]
) -> list[dict[str, Any]] | None:
    got = await pending
    return got if len(got) >= n else None
