"""A routed N-server JetStream cluster on loopback, for tests and local scale-out."""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog

from hivebus.bus.ports import free_ports
from hivebus.bus.probe import http_get
from hivebus.bus.server import PORT_ATTEMPTS, NatsServer, PortBusy
from hivebus.bus.server_config import FsyncPolicy, ServerConfig
from hivebus.errors import BusError, ServerStartError, SetupError

log = structlog.get_logger()



class NatsCluster:
    """``size`` JetStream servers on loopback, fully routed, each with its own store dir."""

    def __init__(
        self,
        base_dir: Path,
        size: int = 3,
        name: str = "hivebus",
        fsync: FsyncPolicy = "always",
        *,
        leafnodes: bool = False,
        jetstream_domain: str | None = None,
        include: Path | None = None,
    ) -> None:
        """``leafnodes``: each member also listens for site leaves (``leafnode_urls``, all of
        them in one leaf's remote, so its link moves to another member when its own goes
        away); a site leaf needs the cluster's ``jetstream_domain`` (``hivebus site``).
        ``include``: the hub's identities (``auth.hub``), the same file for every member."""
        if size < 2:
            raise SetupError(
                f"cluster size {size}: a JetStream cluster needs at least 2 servers (3 to survive a loss)"
            )
        self._base_dir = Path(base_dir)
        self._size = size
        self._name = name
        self._fsync: FsyncPolicy = fsync
        self._servers: list[NatsServer] = []
        self._leafnodes = leafnodes
        self._jetstream_domain = jetstream_domain
        self._include = include

    @property
    def name(self) -> str:
        return self._name

    @property
    def servers(self) -> list[NatsServer]:
        return list(self._servers)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self._servers]

    @property
    def url(self) -> str:
        """All client URLs comma-joined: the form ``HIVEBUS_NATS_URL`` and ``nats --server`` take.

        nats-py's ``servers=`` does *not* split on commas (it rejects the string); give it
        ``urls`` (or ``url.split(",")``).
        """
        return ",".join(self.urls)

    @property
    def leafnode_urls(self) -> list[str]:
        """Every member's leafnode URL: what a site leaf lists in its remote (``leafnodes=True``)."""
        return [s.leafnode_url for s in self._servers]

    def server(self, server_name: str) -> NatsServer:
        """The member called ``server_name`` (as JetStream reports leaders)."""
        for server in self._servers:
            if server.server_name == server_name:
                return server
        raise KeyError(server_name)

    def start(self, timeout: float = 30.0) -> Self:
        """Start every server, then wait until they agree on a JetStream meta leader."""
        if any(s.is_running() for s in self._servers):
            raise ServerStartError(f"cluster {self._name!r} is already running")
        deadline = time.monotonic() + timeout
        for attempt in range(1, PORT_ATTEMPTS + 1):
            if not self._servers:
                self._servers = self._members()
            try:
                for server in self._servers:
                    server._spawn()
                for server in self._servers:
                    server._await_ready(deadline, timeout)
                self.wait_for_meta_leader(max(0.0, deadline - time.monotonic()))
                for server in self._servers:  # the hub's auth callout, when its config names one
                    server._start_callout(max(1.0, deadline - time.monotonic()))
            except PortBusy as busy:
                self._kill_all()
                if attempt == PORT_ATTEMPTS or any(s._started_once for s in self._servers):
                    raise busy.as_error("127.0.0.1") from None
                log.warning("nats.port_race", cluster=self._name, kind=busy.kind, port=busy.port)
                self._servers = []
                continue
            except BaseException:
                self._kill_all()
                raise
            for server in self._servers:
                server._started_once = True
            log.info("nats.cluster_started", cluster=self._name, urls=self.urls)
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        for server in self._servers:
            server.stop(timeout)

    def wait_for_meta_leader(self, timeout: float = 10.0) -> str:
        """Block until every running member reports the same meta leader and is healthy."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self._agreed_meta_leader()
            if leader is not None:
                return leader
            if time.monotonic() >= deadline:
                tails = "\n".join(f"--- {s.server_name}\n{s.log_tail(8)}" for s in self._servers)
                raise ServerStartError(
                    f"cluster {self._name!r} elected no JetStream meta leader within {timeout:g}s\n{tails}"
                )
            time.sleep(0.02)

    def _agreed_meta_leader(self) -> str | None:
        leaders: set[str] = set()
        for server in self._servers:
            if not server.is_running():
                continue
            try:
                status, _ = http_get(f"{server.monitor_url}/healthz", timeout=0.5)
                meta = server.monitor("jsz", timeout=0.5).get("meta_cluster") or {}
            except (OSError, BusError):
                return None
            if status != 200 or not meta.get("leader"):
                return None
            leaders.add(meta["leader"])
        return leaders.pop() if len(leaders) == 1 else None

    def _members(self) -> list[NatsServer]:
        cluster_ports = free_ports(self._size)
        routes = tuple(f"nats-route://127.0.0.1:{p}" for p in cluster_ports)
        members = []
        for i, cluster_port in enumerate(cluster_ports, start=1):
            name = f"{self._name}-{i}"
            config = ServerConfig(
                store_dir=self._base_dir / name,
                server_name=name,
                fsync=self._fsync,
                cluster_name=self._name,
                cluster_port=cluster_port,
                routes=tuple(r for r in routes if not r.endswith(f":{cluster_port}")),
                leafnode_port=0 if self._leafnodes else None,
                jetstream_domain=self._jetstream_domain,
                include=self._include,
            )
            members.append(NatsServer(config))
        return members

    def _kill_all(self) -> None:
        for server in self._servers:
            server.kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<NatsCluster {self._name} size={self._size} urls={self.urls}>"
