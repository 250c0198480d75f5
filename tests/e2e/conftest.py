"""A whole platform (`hivebus up`) in a subprocess, for tests that drive it as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hivebus.bus.server import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RunningPlatform:
    url: str
    workdir: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path

    def cli(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "hivebus", *args],
            cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"hivebus {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def sql(self, query: str) -> list[dict]:
        return json.loads(self.cli("query", query, "--format", "json").stdout)

    def wait_until(self, query: str, ok, timeout: float = 120) -> list[dict]:
        deadline = time.monotonic() + timeout
        rows: list[dict] = []
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"hivebus up exited early:\n{self.log.read_text()[-3000:]}"
            proc = self.cli("query", query, "--format", "json", check=False)
            if proc.returncode == 0:
                rows = json.loads(proc.stdout)
                if ok(rows):
                    return rows
            time.sleep(1)
        raise AssertionError(f"timed out waiting for {query!r}; last rows {rows}\n{self.log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    """`hivebus up --virtual-nodes 2 --demo` on a free port, in a scratch directory that
    sees the repo's examples/ (as a checkout would). One for the session: starting it takes
    ~7 s, and the e2e modules each act as their own users on their own bundles and jobs."""
    workdir = tmp_path_factory.mktemp("platform")
    (workdir / "examples").symlink_to(REPO / "examples")
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    env = {
        **os.environ, "HIVEBUS_NATS_URL": url, "HIVEBUS_LOG_LEVEL": "warning", "COLUMNS": "200",
        "XDG_CONFIG_HOME": str(workdir / "config"),  # where `hivebus user add --save` keeps tokens
    }
    log = workdir / "up.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "hivebus", "up", "--virtual-nodes", "2", "--demo",
             "--nats-port", str(port), "--http-port", "0", "--data-dir", str(workdir / ".hivebus")],
            cwd=workdir, env=env, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    running = RunningPlatform(url, workdir, env, process, log)
    try:
        running.wait_until("select count(*) as n from nodes where status = 'online'", lambda r: r[0]["n"] == 2)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
