"""What ``sync_interval: always`` costs against nats-server's default lazy fsync.

One run starts two embedded servers (``fsync="always"`` and ``fsync="interval"``) side by
side on the same disk and, alternating between them round by round, publishes N small
messages to a file-storage stream with raw nats-py JetStream calls:

- pipelined: ``js.publish_async`` for all N (nats-py keeps up to 4000 in flight), then
  ``js.publish_async_completed()``; every ack is checked;
- sequential: ``await js.publish(...)`` one at a time -- the latency a publisher that
  waits for each ack (an outbox forwarder without pipelining) sees.

It prints the median msgs/s of each and the always/interval ratio. A tmpfs store dir
makes fsync free and the comparison meaningless, so the script says where it writes.

    .venv/bin/python bench/fsync.py [-n 20000] [--size 128] [--rounds 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats
import structlog
from common import result
from nats.aio.client import Client
from nats.js.api import StorageType, StreamConfig
from nats.js.client import JetStreamContext

from hivebus.bus.server import FsyncPolicy, NatsServer, ServerConfig, nats_server_binary

POLICIES: tuple[FsyncPolicy, ...] = ("always", "interval")
STREAM = "BENCH"
WARMUP = 500


@dataclass
class Rates:
    pipelined: list[float] = field(default_factory=list)
    sequential: list[float] = field(default_factory=list)


async def pipelined(js: JetStreamContext, payload: bytes, n: int) -> float:
    """msgs/s publishing ``n`` messages with ``publish_async`` and waiting for all acks."""
    start = time.perf_counter()
    futures = [await js.publish_async("bench.async", payload) for _ in range(n)]
    await asyncio.wait_for(js.publish_async_completed(), timeout=300)
    elapsed = time.perf_counter() - start
    failed = [f.exception() for f in futures if f.exception() is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} of {n} async publishes failed, first: {failed[0]!r}")
    return n / elapsed


async def sequential(js: JetStreamContext, payload: bytes, n: int) -> float:
    """msgs/s publishing ``n`` messages, awaiting each ack before the next publish."""
    start = time.perf_counter()
    for _ in range(n):
        await js.publish("bench.sync", payload)
    return n / (time.perf_counter() - start)


async def fresh_stream(js: JetStreamContext) -> None:
    """Same starting point for every pass: an empty file-storage stream."""
    await js.purge_stream(STREAM)
    await sequential(js, b"w" * 16, WARMUP)
    await js.purge_stream(STREAM)


async def measure(
    clients: dict[FsyncPolicy, Client], n: int, size: int, rounds: int
) -> dict[FsyncPolicy, Rates]:
    payload = os.urandom(size // 2).hex().encode()[:size]
    rates = {policy: Rates() for policy in POLICIES}
    for js in (nc.jetstream() for nc in clients.values()):
        await js.add_stream(
            StreamConfig(name=STREAM, subjects=["bench.>"], storage=StorageType.FILE)
        )
    for round_no in range(rounds):
        # Alternate which policy goes first so drift on a shared machine hits both.
        order = POLICIES if round_no % 2 == 0 else POLICIES[::-1]
        for policy in order:
            js = clients[policy].jetstream(timeout=30)
            await fresh_stream(js)
            rates[policy].pipelined.append(await pipelined(js, payload, n))
            await fresh_stream(js)
            rates[policy].sequential.append(await sequential(js, payload, n))
            print(
                f"  round {round_no + 1} {policy:<8} pipelined {rates[policy].pipelined[-1]:>9,.0f}/s"
                f"  sequential {rates[policy].sequential[-1]:>8,.0f}/s",
                flush=True,
            )
    return rates


def raw_fsync_rate(directory: Path, size: int, n: int = 2000) -> float:
    """Appends+fsyncs per second on the store's disk: the ceiling for ``fsync="always"``."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        start = time.perf_counter()
        for _ in range(n):
            os.write(fd, b"x" * size)
            os.fsync(fd)
        return n / (time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()


def filesystem_of(path: Path) -> str:
    """The type of the filesystem ``path`` is on, from /proc/mounts (Linux; else "unknown")."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    best = max(
        (m for m in mounts if resolved.startswith(m[0].rstrip("/") + "/") or resolved == m[0]),
        key=lambda m: len(m[0]),
        default=None,
    )
    return best[1] if best else "unknown"


async def run(n: int, size: int, rounds: int, base: Path) -> None:
    servers = {
        p: NatsServer(ServerConfig(store_dir=base / p, server_name=f"bench-{p}", fsync=p))
        for p in POLICIES
    }
    clients: dict[FsyncPolicy, Client] = {}
    try:
        for policy, server in servers.items():
            server.start()
            clients[policy] = await nats.connect(server.url)
        rates = await measure(clients, n, size, rounds)
    finally:
        for nc in clients.values():
            await nc.close()
        for server in servers.values():
            server.stop()
    report(rates, n, size, rounds)
    print(
        f"raw baseline: {raw_fsync_rate(base, size):,.0f} append+fsync/s on this disk (one writer)"
    )


def report(rates: dict[FsyncPolicy, Rates], n: int, size: int, rounds: int) -> None:
    median = {
        p: (statistics.median(r.pipelined), statistics.median(r.sequential))
        for p, r in rates.items()
    }
    print(f"\nfsync policy cost: N={n:,} messages of {size} B, median of {rounds} round(s)")
    print(f"{'policy':<10}{'pipelined msgs/s':>18}{'sequential msgs/s':>20}")
    for policy in POLICIES:
        pipe, seq = median[policy]
        print(f"{policy:<10}{pipe:>18,.0f}{seq:>20,.0f}")
    pipe_ratio = median["always"][0] / median["interval"][0]
    seq_ratio = median["always"][1] / median["interval"][1]
    print(f"{'always/interval':<10}{pipe_ratio:>13.2f}x{seq_ratio:>19.2f}x")
    result("fsync=always (hivebus default) vs interval: raw JetStream pipelined publish (msgs/s)", median["always"][0], "msgs/s",
           median["interval"][0], "fsync=interval (nats-server's default)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="messages per pass (default 20000)")
    parser.add_argument("--size", type=int, default=128, help="payload bytes (default 128)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds per policy; the median is reported"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the store dirs go (default: system temp)"
    )
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    base = Path(tempfile.mkdtemp(prefix="hivebus-fsync-", dir=args.dir))
    version = subprocess.run(
        [nats_server_binary(), "--version"], capture_output=True, text=True
    ).stdout.strip()
    print(f"{version}; store dirs under {base} ({filesystem_of(base)}); {os.cpu_count()} cores")
    if filesystem_of(base) in ("tmpfs", "ramfs"):
        print(
            "WARNING: the store is in memory, fsync costs nothing here; pass --dir on a real disk"
        )
    try:
        asyncio.run(run(args.n, args.size, args.rounds, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
