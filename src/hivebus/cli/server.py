"""``hivebus server``: only the embedded NATS server, with the platform's streams."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer

from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer, ServerConfig
from hivebus.cli.app import app, out, run, settings


@app.command()
def server(
    data_dir: Annotated[Path, typer.Option(envvar="HIVEBUS_DATA_DIR", help="Where the JetStream store lives.")] = Path(".hivebus"),
    nats_port: Annotated[int, typer.Option(envvar="HIVEBUS_NATS_PORT", help="Client port (0 = any free port).")] = 4222,
) -> None:
    """Start only the embedded nats-server (JetStream, streams created) until Ctrl-C."""
    cfg = settings()
    srv = NatsServer(ServerConfig(store_dir=data_dir / "nats", port=nats_port, fsync=cfg.fsync)).start()
    try:
        run(_create_streams(srv.url))
        out.print(f"[green]nats-server running[/] at [bold]{srv.url}[/] (store {data_dir / 'nats'}, fsync={cfg.fsync})")
        out.print(f"try:  hivebus tail --hub {srv.url}   (and `hivebus handlers`, `hivebus projector` against it)")
        out.print("stop: Ctrl-C")
        run(_wait_for_signal())
    finally:
        srv.stop()


async def _create_streams(url: str) -> None:
    async with await Bus.connect(url) as bus:
        await bus.ensure_streams()


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
