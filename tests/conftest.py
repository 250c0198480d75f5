"""Fixtures that run real nats-servers and always take them down again.

Each fixture stops what it started in a ``finally``; behind that, a session fixture and
``hivebus.bus.server``'s own atexit hook terminate any server the session started and
left running (a test that started one by hand and then failed, say). On Linux the
kernel also SIGTERMs the servers if pytest itself is killed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hivebus.bus.cluster import NatsCluster
from hivebus.bus.server import (
    NatsServer,
    ServerConfig,
    nats_server_binary,
    stop_all_servers,
)

NatsServerFactory = Callable[..., NatsServer]


@pytest.fixture(scope="session", autouse=True)
def _no_server_outlives_the_session() -> Iterator[None]:
    yield
    leaked = stop_all_servers()
    if leaked:
        # Not an error of any one test, but worth seeing in the report.
        print(f"\nhivebus: stopped {len(leaked)} nats-server(s) left running: {leaked}")


@pytest.fixture(scope="session")
def server_binary() -> Path:
    """The nats-server executable; the session fails early and clearly without it."""
    return nats_server_binary()


@pytest.fixture
def nats_server_factory(tmp_path: Path, server_binary: Path) -> Iterator[NatsServerFactory]:
    """``make(name="n", start=True, **ServerConfig fields) -> NatsServer``, all stopped at teardown.

    Each server gets its own store dir under ``tmp_path``, free ports and loopback only.
    """
    made: list[NatsServer] = []

    def make(name: str | None = None, *, start: bool = True, **options: Any) -> NatsServer:
        name = name or f"nats-{len(made) + 1}"
        options.setdefault("store_dir", tmp_path / name)
        options.setdefault("server_name", name)
        server = NatsServer(ServerConfig(**options))
        made.append(server)
        return server.start() if start else server

    try:
        yield make
    finally:
        _stop_each(made)


@pytest.fixture
def nats_server(nats_server_factory: NatsServerFactory) -> NatsServer:
    """A fresh single JetStream server (fsync always) on free loopback ports."""
    return nats_server_factory("hivebus")


@pytest.fixture
def nats_cluster(tmp_path: Path, server_binary: Path) -> Iterator[NatsCluster]:
    """A started 3-server JetStream cluster on loopback, with a meta leader."""
    cluster = NatsCluster(tmp_path / "cluster", size=3)
    try:
        cluster.start()
        yield cluster
    finally:
        _stop_each(cluster.servers)


def _stop_each(servers: list[NatsServer]) -> None:
    """Stop every server even if stopping one of them raises; SIGKILL as the fallback."""
    for server in servers:
        try:
            server.stop(timeout=5.0)
        except Exception:
            server.kill()


pytest_plugins = ("tests.docker_engine",)  # the docker_engine session fixture
