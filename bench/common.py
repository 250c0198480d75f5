"""Shared bits of the benchmarks: a fresh embedded server, timing, and the report table."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hivebus.bus.server import NatsServer, ServerConfig
from hivebus.logs import configure_logging

configure_logging("warning")  # benchmarks print their figures; the logs would drown them


@contextmanager
def fresh_server(fsync: str = "always") -> Iterator[NatsServer]:
    with tempfile.TemporaryDirectory(prefix="hivebus-bench-") as d:
        server = NatsServer(ServerConfig(store_dir=Path(d), fsync=fsync))  # type: ignore[arg-type]
        server.start()
        try:
            yield server
        finally:
            server.stop()


@dataclass
class Timer:
    started: float = 0.0
    seconds: float = 0.0

    def __enter__(self) -> Timer:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s"


def machine() -> str:
    from importlib.metadata import version

    import duckdb

    from hivebus.bus.server import nats_server_binary

    server_version = os.popen(f"{nats_server_binary()} --version").read().strip()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, nats-py {version('nats-py')}, "
        f"{server_version}, duckdb {duckdb.__version__}"
    )
