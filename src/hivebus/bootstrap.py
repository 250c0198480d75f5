"""The composition root: the whole platform on one machine.

``Platform`` builds the adapters and starts the services in order: the embedded
nats-server (unless an existing server or cluster is given), the streams, the projector
with its query service, the handler services, and N virtual edge nodes. Virtual nodes run
as their own processes (``hivebus node run --virtual``), as real nodes would, each with
its own outbox and node-local bus. Nothing here runs at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from hivebus.auth.hub import HubAuth
from hivebus.auth.permissions import SERVICE
from hivebus.auth.tls import HubTLS, hub_ca
from hivebus.bus.client import Bus
from hivebus.bus.lifeline import spawn
from hivebus.bus.server import NatsServer, ServerConfig
from hivebus.config import Settings

log = structlog.get_logger()


@dataclass(frozen=True, kw_only=True)
class PlatformOptions:
    data_dir: Path = Path(".hivebus")
    nats_port: int = 4222
    nats_url: str | None = None  # use this server/cluster instead of starting one
    virtual_nodes: int = 0
    node_prefix: str = "V"
    # Authentication on the embedded server: nodes and services present credentials
    # (``<data_dir>/auth``), everything else is the public identity (hivebus.auth).
    auth: bool = True
    # TLS on the embedded server's client port (auth.tls): the hub's own CA in <data_dir>/tls
    # with a server certificate for this machine's names and ``tls_hosts``, or the operator's
    # ``tls_files`` (certificate, key, CA).
    tls: bool = False
    tls_hosts: tuple[str, ...] = ()
    tls_files: tuple[Path | None, Path | None, Path | None] | None = None

    @property
    def db_path(self) -> Path:
        return self.data_dir / "hivebus.duckdb"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    def node_ids(self) -> list[str]:
        return [f"{self.node_prefix}{i:03d}" for i in range(1, self.virtual_nodes + 1)]


@dataclass
class PlatformInfo:
    """What runs where, for the operator."""

    nats_url: str
    data_dir: Path
    db_path: Path
    embedded_server: bool
    nodes: list[str] = field(default_factory=list)
    logs_dir: Path | None = None
    node_port: int | None = None  # the node listener (client certificates), with the hub's own CA


class Platform:
    def __init__(self, settings: Settings, options: PlatformOptions) -> None:
        self.settings = settings
        self.options = options
        self.server: NatsServer | None = None
        self.node_port: int | None = None  # the node listener's, once the server is started
        self.bus: Bus | None = None
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.info: PlatformInfo | None = None
        self.auth: HubAuth | None = None

    def start_server(self) -> str:
        if self.options.nats_url:
            return self.options.nats_url
        include = None
        # before any credential is written: they carry its CA
        tls = HubTLS.choose(self.options.data_dir, enabled=self.options.tls, hosts=self.options.tls_hosts,
                            files=self.options.tls_files or (None, None, None))
        if self.options.auth:
            self.auth = HubAuth.of_data_dir(self.options.data_dir).ensure()
            self.settings = replace(self.settings, nats_credentials=self.auth.creds_path(SERVICE))
            include = self.auth.conf_path
            for node in self.options.node_ids():  # before the server reads the rules
                self.auth.node_credential(node, self._node_creds(node))
        self.server = NatsServer(
            ServerConfig(
                store_dir=self.options.data_dir / "nats", port=self.options.nats_port, fsync=self.settings.fsync,
                include=include, tls=tls.server_block() if tls is not None else None,
                node_port=tls.node_port if tls is not None else None, node_tls=tls.node_block() if tls is not None else None,
            )
        ).start()
        self.node_port = tls.node_port if tls is not None and tls.node_block() is not None else None
        return self.server.url

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Start everything, set ``ready``, run until ``stop``, then stop in reverse order."""
        from hivebus.projections.runner import Projector
        from hivebus.services import run_handlers

        self.options.data_dir.mkdir(parents=True, exist_ok=True)
        self.options.logs_dir.mkdir(parents=True, exist_ok=True)
        url = await asyncio.to_thread(self.start_server)
        try:
            self.bus = await Bus.connect(url, name="hivebus-up", settings=self.settings)
            await self.bus.ensure_streams()
            projector = Projector(self.settings, self.bus, self.options.db_path)
            tasks = [
                asyncio.create_task(projector.run(stop), name="projector"),
                asyncio.create_task(run_handlers(self.settings, self.bus, stop), name="handlers"),
            ]
            for node in self.options.node_ids():
                self.nodes[node] = self._start_node(node, url)
            self.info = PlatformInfo(
                nats_url=url,
                data_dir=self.options.data_dir,
                db_path=self.options.db_path,
                embedded_server=self.server is not None,
                nodes=list(self.nodes),
                logs_dir=self.options.logs_dir,
                node_port=self.node_port,
            )
            if ready is not None:
                ready.set()
            stopper = asyncio.create_task(stop.wait(), name="stop")
            done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            for task in done:
                if task is not stopper and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            await asyncio.wait(tasks, timeout=15)
        finally:
            stop.set()
            await asyncio.to_thread(self._stop_nodes)
            if self.bus is not None:
                await self.bus.close()
            if self.server is not None:
                await asyncio.to_thread(self.server.stop)

    def _start_node(self, node: str, url: str) -> subprocess.Popen[bytes]:
        log_file = (self.options.logs_dir / f"node-{node}.log").open("ab")
        argv = self._node_argv(node, url)
        env = {**os.environ, "HIVEBUS_LOG_FORMAT": "json"}
        if self.auth is not None:
            env["HIVEBUS_NATS_CREDENTIALS"] = str(self._node_creds(node))
        if (ca := hub_ca(self.options.data_dir)) is not None:
            env["HIVEBUS_TLS_CA"] = str(ca.resolve())
        # spawn: the node gets SIGTERM from the kernel if this process dies, however it dies
        proc = spawn(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        log.info("platform.node_started", node=node, pid=proc.pid)
        return proc

    def _node_argv(self, node: str, url: str) -> list[str]:
        """``hivebus node run --virtual`` for ``node``, beating three times per
        ``node_offline_after`` (a beat every 30 s against a 30 s timeout let a node flip
        offline and back whenever one beat came a moment late)."""
        beat = max(1.0, self.settings.node_offline_after.total_seconds() / 3)
        return [
            sys.executable, "-m", "hivebus", "node", "run", "--virtual",
            "--node-id", node, "--hub", url, "--data-dir", str(self.options.data_dir / "nodes" / node),
            "--heartbeat", f"{beat:g}",
        ]  # fmt: skip

    def _node_creds(self, node: str) -> Path:
        return self.options.data_dir / "nodes" / node / "hub.creds"

    def _stop_nodes(self) -> None:
        for proc in self.nodes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for node, proc in self.nodes.items():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("platform.node_kill", node=node)
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
