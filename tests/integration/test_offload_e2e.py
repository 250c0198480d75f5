"""Home Edge offload end to end on real processes under hub auth (issue 20, item 3).

A real authenticating nats-server, ``hivebus handlers`` and two ``hivebus node run`` agents
(BIG and SMALL, each with its own credential). SMALL already runs a job that holds 1.5 of its
cores, so it scores lower. A plugin on a node asks for one execution through the SDK
(``Plugin.request_offload`` on the node-local bus): asked by SMALL, the scheduler places it
on BIG and BIG runs it (its reading reaches the hub from BIG); asked by BIG, it is "run
locally" and BIG runs it; with the hub down, SMALL runs it itself and reports afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hivebus.auth.credentials import Credential
from hivebus.auth.hub import HubAuth
from hivebus.auth.permissions import SERVICE
from hivebus.bus.batch import bodies_of
from hivebus.bus.client import Bus
from hivebus.bus.ports import free_port
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import DATA, EVENTS, ensure_consumer, toedge_consumer
from hivebus.bus.subjects import data_filter, fromedge_filter
from hivebus.config import Settings
from hivebus.handlers.testing import app_spec
from hivebus.plugin import Plugin, PluginConfig
from hivebus.schemas.codec import decode
from hivebus.schemas.ecr import BundleApproved, BundlePushed
from hivebus.schemas.envelope import Event
from hivebus.schemas.ses import JobPlugin, JobSpec, JobSubmitted, PluginSpec
from hivebus.services.requests import request
from tests.integration.test_handlers import BME, by, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BIG, SMALL = "W0B1", "W0S1"
# what the offloaded execution runs: one reading naming where it ran and for which request
CODE = (
    "import sys\n"
    "from hivebus.plugin import Plugin\n"
    "with Plugin() as p:\n"
    "    p.publish('test.offloaded', sys.argv[1])\n"
)


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    full = {**os.environ, "HIVEBUS_LOG_FORMAT": "json", "HIVEBUS_FSYNC": "interval", **env}
    full.pop("HIVEBUS_NATS_URL", None)
    with log.open("wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "hivebus", *args], env=full, stdout=sink,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Site:
    def __init__(self, server: NatsServer, auth: HubAuth, tmp: Path) -> None:
        self.server, self.auth, self.tmp = server, auth, tmp
        self.service = Settings(nats_credentials=auth.creds_path(SERVICE), data_dir=tmp / "nowhere")
        self.local: dict[str, str] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.creds: dict[str, Credential] = {}

    def node(self, node: str) -> None:
        creds = self.creds[node].save(self.tmp / f"{node}.creds")
        port = free_port()
        self.local[node] = f"nats://127.0.0.1:{port}"
        self.procs.append(start(
            ["node", "run", "--node-id", node, "--hub", self.server.url, "--credentials", str(creds),
             "--data-dir", str(self.tmp / node), "--heartbeat", "1", "--metrics", "3600",
             "--local-port", str(port)],
            self.tmp / f"{node}.log", {}))

    def handlers(self) -> None:
        self.procs.append(start(["handlers", "--hub", self.server.url], self.tmp / "handlers.log",
                                {"HIVEBUS_NATS_CREDENTIALS": str(self.auth.creds_path(SERVICE))}))

    def ask(self, node: str, tag: str, timeout: float = 10.0) -> dict[str, object]:
        """What a plugin on ``node`` asking for the execution hears (run in a thread)."""
        with Plugin(PluginConfig.from_env({"HIVEBUS_LOCAL_BUS": self.local[node]})) as plugin:
            return plugin.request_offload(BME, {"cpu": "0.25"}, entrypoint=sys.executable,
                                          args=["-c", CODE, tag], timeout=timeout)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp.glob("*.log")))


@pytest.fixture
async def site(tmp_path: Path, nats_server_factory: Callable[..., NatsServer]) -> AsyncIterator[Site]:
    auth = HubAuth(tmp_path / "hub" / "auth").ensure()
    creds = {node: auth.add_node(node) for node in (BIG, SMALL)}  # before the server reads the rules
    server = nats_server_factory("hub", include=auth.conf_path, fsync="interval")
    at = Site(server, auth, tmp_path)
    at.creds = creds
    async with await Bus.connect(server.url, settings=at.service) as bus:
        await bus.ensure_streams()
        for node in (BIG, SMALL):
            await ensure_consumer(bus.js, toedge_consumer(node))
    try:
        yield at
    finally:
        for proc in reversed(at.procs):
            stop(proc)


async def offloaded(bus: Bus, node: str) -> list[str]:
    """The tags of the offloaded runs whose reading reached the hub from ``node``."""
    tags: list[str] = []
    async for batch in bus.read(DATA, filter_subjects=[data_filter(node)], stop_at_end=True):
        for m in batch:
            for body in bodies_of(m.data):
                event = decode(body)
                if getattr(event.data, "name", None) == "test.offloaded":
                    tags.append(str(event.data.value))
    return tags


async def node_events(bus: Bus, node: str, type_: str) -> list[Event]:
    return [e async for _, e in bus.events(EVENTS, filter_subjects=[fromedge_filter(node)], stop_at_end=True)
            if e.type == type_]


async def test_an_offload_asked_by_a_plugin_starts_on_the_best_node_or_here(site: Site) -> None:
    site.handlers()
    site.node(BIG)
    site.node(SMALL)
    async with await Bus.connect(site.server.url, settings=site.service) as bus:
        await request(bus, by("alice", BundlePushed(app=app_spec(BME), pusher="alice"), BME),
                      handler="ecr", answers=["evt.ecr.bundle.>"], timeout=30)
        await request(bus, by("admin", BundleApproved(bundle_id=BME, by="admin"), BME),
                      handler="ecr", answers=[], timeout=30)
        for node in (BIG, SMALL):
            await until(lambda n=node: _registered(bus, n), 30, f"{node} to register and beat")  # type: ignore[misc]
        # SMALL holds a job that takes 1.5 of its cores: it scores lower than BIG
        busy = PluginSpec(image=f"registry.sagecontinuum.org/{BME}", resource={"cpu": "1.5"},
                          entrypoint=sys.executable, args=["-c", "import time; time.sleep(600)"])
        spec = JobSpec(name="busy", nodes=[SMALL], plugins=[JobPlugin(name="busy", plugin_spec=busy)])
        await request(bus, by("alice", JobSubmitted(job_id="busy", user="alice", spec=spec), "busy"),
                      handler="ses", answers=["evt.ses.job.>"], timeout=30)

        try:
            # asked by SMALL: placed on BIG, and BIG runs it
            placed = await asyncio.to_thread(site.ask, SMALL, "from-small")
            assert placed["decided_by"] == "hub" and placed["run_on"] == BIG and placed["local"] is False, placed
            scores = placed["scores"]
            assert isinstance(scores, dict) and scores[BIG] > scores[SMALL], scores
            await until(lambda: _has(bus, BIG, "from-small"), 40, "BIG to run the execution SMALL asked for")
            assert "from-small" not in await offloaded(bus, SMALL)

            # asked by BIG, which scores highest: run locally, by BIG
            here = await asyncio.to_thread(site.ask, BIG, "from-big")
            assert here["decided_by"] == "hub" and here["run_on"] == BIG and here["local"] is True, here
            await until(lambda: _has(bus, BIG, "from-big"), 40, "BIG to run its own execution")
        except AssertionError:
            print(site.logs())
            raise

    # the hub down: SMALL runs it itself, and the hub hears of it once it is back
    await asyncio.to_thread(site.server.kill)
    alone = await asyncio.to_thread(site.ask, SMALL, "hub-down", 2.0)
    assert alone["decided_by"] == "node" and alone["run_on"] == SMALL and alone["local"] is True, alone
    await asyncio.to_thread(site.server.start)
    async with await Bus.connect(site.server.url, settings=site.service) as bus:
        try:
            await until(lambda: _has(bus, SMALL, "hub-down"), 40, "SMALL's own run to reach the hub")
            await until(lambda: _ran_locally(bus, SMALL, str(alone["request_id"])), 20, "the ran_locally report")
        except AssertionError:
            print(site.logs())
            raise
        assert await offloaded(bus, BIG) == ["from-small", "from-big"]  # each once


async def _registered(bus: Bus, node: str) -> bool:
    return bool(await node_events(bus, node, "node.heartbeat"))


async def _has(bus: Bus, node: str, tag: str) -> bool:
    return tag in await offloaded(bus, node)


async def _ran_locally(bus: Bus, node: str, request_id: str) -> bool:
    return any(e.data.request_id == request_id for e in await node_events(bus, node, "ses.offload.ran_locally"))
