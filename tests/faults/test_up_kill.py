"""``hivebus up --virtual-nodes 2`` SIGKILLed while its nodes publish, then started again.

Issue 15's acceptance, item 1: a SIGKILLed ``hivebus up`` must take its children with it (the
embedded nats-server and the virtual nodes' processes), so the next ``hivebus up`` on the same
data dir starts without manual cleanup (no "port in use"), and every event the nodes produced
-- buffered in their outboxes while the hub was gone -- is stored exactly once, counted by
``(node, nodeseq)``. The issue asks for a 25 s outage; this test waits only until every child
has gone (a few seconds) plus ``OUTAGE`` s, to stay well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from hivebus.auth.hub import HubAuth
from hivebus.auth.permissions import SERVICE
from hivebus.bus.client import Bus
from hivebus.bus.ports import free_port
from hivebus.config import Settings
from tests.faults.conftest import until
from tests.faults.test_hub_kill import outbox_state, stored_nodeseqs
from tests.faults_edge.conftest import fresh_outbox  # opens the outbox before its node does

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]

NODES = ("V001", "V002")
OUTAGE = 3.0  # seconds with no hub, after every child of the killed run has gone


def children(pid: int) -> set[int]:
    """Direct children of ``pid`` (all its threads' children)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Up:
    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.data = root / ".hivebus"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "up-0.log"
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        self.log = self.root / f"up-{self.runs}.log"
        env = {**os.environ, "HIVEBUS_LOG_LEVEL": "info", "COLUMNS": "200"}
        env.pop("HIVEBUS_NATS_URL", None)
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hivebus", "up", "--virtual-nodes", "2",
                 "--nats-port", str(self.port), "--http-port", "0", "--data-dir", str(self.data)],
                cwd=self.root, env=env, stdout=sink, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def running(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"hivebus up exited:\n{self.output()[-4000:]}"
        return "hivebus is running" in self.output()


def sent_up_to(data_dir: Path, next_seq: int) -> bool:
    """The node's outbox holds none of the numbers below ``next_seq`` any more."""
    _, held, _ = outbox_state(data_dir)
    return not any(s < next_seq for s in held)


async def test_sigkilled_up_restarts_on_its_data_dir_and_loses_no_reading(tmp_path: Path) -> None:
    up = Up(tmp_path, free_port())
    url = f"nats://127.0.0.1:{up.port}"
    node_dirs = {n: up.data / "nodes" / n for n in NODES}
    figures: dict[str, float | int] = {}
    kids: set[int] = set()
    try:
        first = {n: await fresh_outbox(d, n) for n, d in node_dirs.items()}
        up.start()
        await until(up.running, 60, "the first hivebus up")
        settings = replace(
            Settings.from_env(), nats_credentials=HubAuth.of_data_dir(up.data).creds_path(SERVICE)
        )

        async def produced(n: int) -> bool:
            return all(outbox_state(d)[0] - first[node] >= n for node, d in node_dirs.items())

        await until(lambda: produced(6), 60, "both nodes to produce")
        assert up.proc is not None
        kids = children(up.proc.pid)
        assert len(kids) >= 3, f"expected nats-server and two nodes, got {kids}"
        up.proc.send_signal(signal.SIGKILL)
        up.proc.wait()
        killed = time.monotonic()

        async def all_gone() -> bool:
            return not any(alive(k) for k in kids)

        try:
            await until(all_gone, 20, "every child of the killed hivebus up to exit")
        except AssertionError:
            left = [Path(f"/proc/{k}/cmdline").read_bytes()[:160] for k in kids if alive(k)]
            raise AssertionError(f"children outlived a SIGKILLed hivebus up: {left}") from None
        figures["children_gone_s"] = round(time.monotonic() - killed, 2)
        await asyncio.sleep(OUTAGE)
        at_kill = {n: outbox_state(d)[0] for n, d in node_dirs.items()}

        up.start()
        await until(up.running, 60, "the second hivebus up")
        restarted = time.monotonic()
        assert "in use" not in up.output()
        for node, d in node_dirs.items():
            await until(lambda d=d, s=at_kill[node]: asyncio.sleep(0, sent_up_to(d, s)), 40,
                        f"{node}'s outbox to send what it held")  # fmt: skip
        figures["drained_after_restart_s"] = round(time.monotonic() - restarted, 2)
        async with await Bus.connect(url, settings=settings) as bus:
            for node in NODES:
                counts: Counter[int] = await stored_nodeseqs(bus, node)
                assert [s for s, k in counts.items() if k > 1] == [], f"{node}: stored twice"
                before = sorted(s for s in counts if s < at_kill[node])
                assert before == list(range(first[node], at_kill[node])), f"{node}: events missing"
                figures[f"{node}_events_before_kill"] = len(before)
    finally:
        for kid in kids:  # a child that outlived the kill (the failure this test is about)
            if alive(kid):
                os.kill(kid, signal.SIGKILL)
        if up.proc is not None and up.proc.poll() is None:
            up.proc.send_signal(signal.SIGINT)
            try:
                up.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                up.proc.kill()
                up.proc.wait()
    print(f"\nfaults.up_kill {json.dumps(figures)}")
