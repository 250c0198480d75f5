"""``hivebus server``: only the embedded NATS server, with the platform's streams."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from hivebus.auth.hub import HubAuth
from hivebus.auth.permissions import SERVICE
from hivebus.auth.tls import HubTLS
from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer, ServerConfig
from hivebus.cli.app import app, out, run, settings
from hivebus.config import Settings

Tls = Annotated[bool, typer.Option("--tls/--no-tls", envvar="HIVEBUS_TLS", help="Require TLS on the client port, with the hub's own CA in <data-dir>/tls; credentials from `hivebus node add` carry the CA, other clients set HIVEBUS_TLS_CA.")]
TlsHost = Annotated[list[str] | None, typer.Option("--tls-host", help="Another name or address of this hub for its certificate (repeatable; localhost, 127.0.0.1 and the host name are in it).")]
TlsCert = Annotated[Path | None, typer.Option(help="Your own server certificate (PEM), with --tls-key and --tls-ca, instead of the hub's own CA.")]
TlsKey = Annotated[Path | None, typer.Option(help="The key of --tls-cert (PEM).")]
TlsCa = Annotated[Path | None, typer.Option(help="The CA that issued --tls-cert (PEM): what clients trust.")]


def tls_note(tls: HubTLS) -> str:
    return (f"tls: required on the client port; CA {tls.ca_file} (in every credential `hivebus node add` writes; "
            "clients without one: HIVEBUS_TLS_CA=<a copy of it>)"
            + (f"; node listener on port {tls.node_port} (client certificates from `hivebus node add`)"
               if tls.node_port is not None else ""))


@app.command()
def server(
    data_dir: Annotated[Path, typer.Option(envvar="HIVEBUS_DATA_DIR", help="Where the JetStream store lives.")] = Path(".hivebus"),
    nats_port: Annotated[int, typer.Option(envvar="HIVEBUS_NATS_PORT", help="Client port (0 = any free port).")] = 4222,
    auth: Annotated[bool, typer.Option("--auth/--no-auth", help="Authenticate nodes and services (identities in <data-dir>/auth).")] = True,
    tls: Tls = False,
    tls_host: TlsHost = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
) -> None:
    """Start only the embedded nats-server (JetStream, streams created) until Ctrl-C."""
    cfg = settings(None, data_dir=data_dir)
    hub_tls = HubTLS.choose(data_dir, enabled=tls, hosts=tls_host or (), files=(tls_cert, tls_key, tls_ca))
    hub_auth = HubAuth.of_data_dir(data_dir).ensure() if auth else None
    include = hub_auth.conf_path if hub_auth is not None else None
    srv = NatsServer(ServerConfig(store_dir=data_dir / "nats", port=nats_port, fsync=cfg.fsync, include=include,
                                  tls=hub_tls.server_block() if hub_tls is not None else None,
                                  node_port=hub_tls.node_port if hub_tls is not None else None,
                                  node_tls=hub_tls.node_block() if hub_tls is not None else None)).start()
    try:
        service = replace(cfg, nats_credentials=hub_auth.creds_path(SERVICE)) if hub_auth is not None else cfg
        run(_create_streams(srv.url, service))
        out.print(f"[green]nats-server running[/] at [bold]{srv.url}[/] (store {data_dir / 'nats'}, fsync={cfg.fsync})")
        if hub_auth is not None:
            out.print(f"auth: service/admin credentials in {hub_auth.dir}; add nodes with `hivebus node add ID`")
        if hub_tls is not None:
            out.print(tls_note(hub_tls))
        out.print(f"try:  hivebus tail --hub {srv.url}   (and `hivebus handlers`, `hivebus projector` against it)")
        out.print("stop: Ctrl-C")
        run(_wait_for_signal())
    finally:
        srv.stop()


async def _create_streams(url: str, config: Settings) -> None:
    async with await Bus.connect(url, settings=config) as bus:
        await bus.ensure_streams()


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
