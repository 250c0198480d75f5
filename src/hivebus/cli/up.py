"""``hivebus up``: the whole platform on this machine, and a live view of it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from hivebus.auth.tls import hub_ca
from hivebus.bootstrap import Platform, PlatformInfo, PlatformOptions
from hivebus.cli.app import app, out, run, settings
from hivebus.cli.server import Tls, TlsCa, TlsCert, TlsHost, TlsKey
from hivebus.cli.web import HttpHost, HttpPort
from hivebus.errors import HivebusError

STATUS_SQL = """
select
  (select count(*) from nodes) as nodes,
  (select count(*) from nodes where status = 'online') as nodes_online,
  (select count(*) from bundles) as bundles,
  (select count(*) from jobs) as jobs,
  (select count(*) from jobs where state = 'Running') as jobs_running,
  (select count(*) from plugin_runs) as plugin_runs,
  (select count(*) from readings) as readings,
  (select count(*) from dead_letters) as dead_letters
"""


@app.command()
def up(
    data_dir: Annotated[Path, typer.Option(envvar="HIVEBUS_DATA_DIR", help="Where the NATS store, the DuckDB file, node outboxes and logs live.")] = Path(".hivebus"),
    nats_port: Annotated[int, typer.Option(envvar="HIVEBUS_NATS_PORT", help="Port of the embedded nats-server.")] = 4222,
    nats_url: Annotated[str | None, typer.Option(help="Use this NATS server or cluster instead of starting one (comma-separated URLs).")] = None,
    virtual_nodes: Annotated[int, typer.Option(help="How many virtual edge nodes to run.")] = 0,
    demo: Annotated[bool, typer.Option(help="Push an example plugin, approve it, and run it on the virtual nodes every minute.")] = False,
    auth: Annotated[bool, typer.Option("--auth/--no-auth", help="Authenticate nodes and services on the embedded server (hivebus.auth); --no-auth opens it to anyone who can reach the port.")] = True,
    http_port: HttpPort = 8080,
    http_host: HttpHost = "127.0.0.1",
    tls: Tls = False,
    tls_host: TlsHost = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
) -> None:
    """Start the platform: nats-server, streams, handlers, projector + query service, virtual nodes."""
    cfg = settings(None, data_dir=data_dir, nats_port=nats_port)
    options = PlatformOptions(data_dir=data_dir, nats_port=nats_port, nats_url=nats_url, virtual_nodes=virtual_nodes,
                              auth=auth, tls=tls, tls_hosts=tuple(tls_host or ()), tls_files=(tls_cert, tls_key, tls_ca))
    platform = Platform(cfg, options)
    run(_up(platform, demo, (http_host, http_port)))


async def _up(platform: Platform, demo: bool, http: tuple[str, int]) -> None:
    stop = asyncio.Event()
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = asyncio.create_task(platform.run(stop, ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([runner, waiter], return_when=asyncio.FIRST_COMPLETED)
    if runner.done():
        waiter.cancel()
        runner.result()  # raises the start-up error
        return
    assert platform.info is not None and platform.bus is not None
    _announce(platform.info, authenticated=platform.auth is not None)
    web = asyncio.create_task(_web(platform, http, stop))
    if demo:
        from hivebus.demo import start_demo

        try:
            await start_demo(platform.bus, platform.info)
        except HivebusError as exc:
            out.print(f"[yellow]demo did not start:[/] {exc}")
    with contextlib.suppress(asyncio.CancelledError):
        await _watch(platform, stop)
    await runner
    await web


async def _web(platform: Platform, http: tuple[str, int], stop: asyncio.Event) -> None:
    """The HTTP face (``hivebus web``) on the platform's hub, as its service identity."""
    from hivebus.web.app import WebConfig
    from hivebus.web.serve import serve

    assert platform.info is not None
    config = WebConfig(settings=replace(platform.settings, nats_url=platform.info.nats_url))
    try:
        await serve(config, *http, stop, on_listening=lambda url: out.print(f"HTTP      {url}  (dashboard {url}/, API docs {url}/docs)"))
    except HivebusError as exc:
        out.print(f"[yellow]the web API did not start:[/] {exc}")


def _announce(info: PlatformInfo, *, authenticated: bool) -> None:
    access = (
        f"auth      nodes and services authenticated ({info.data_dir}/auth); user actions need a token"
        if authenticated
        else "auth      [yellow]off[/] (--no-auth): anyone who reaches the port may publish"
    )
    lines = [
        "[bold green]hivebus is running[/]",
        f"NATS      {info.nats_url}{' (embedded)' if info.embedded_server else ''}",
        f"data dir  {info.data_dir}",
        f"DuckDB    {info.db_path}",
        f"nodes     {', '.join(info.nodes) or 'none (--virtual-nodes N)'}",
        f"logs      {info.logs_dir}",
        access,
        *([f"tls       required; CA {ca} (in node credentials; elsewhere HIVEBUS_TLS_CA=<a copy>)"]
          if (ca := hub_ca(info.data_dir)) is not None else []),
        *([f"nodes by  certificate on port {info.node_port} (wss; `hivebus node add ID` issues one)"]
          if info.node_port is not None else []),
        "",
        "try, in another terminal (. .venv/bin/activate first):",
        f"  export HIVEBUS_NATS_URL={info.nats_url}",
        "  hivebus node list",
        "  hivebus job status demo-bme680",
        "  hivebus query \"select count(*) from readings\"",
        "  hivebus data query --start -5m --filter name=env.temperature --tail 1",
        "  hivebus tail --from-edge '*'",
        "  hivebus user add alice --save     (a token for alice's pushes and jobs)",
        "  (the README walks through pushing an app and submitting a job)",
        "stop: Ctrl-C",
    ]
    out.print(Panel("\n".join(lines), title="hivebus up", expand=False))


async def _watch(platform: Platform, stop: asyncio.Event) -> None:
    from hivebus.projections.client import query

    assert platform.bus is not None
    with Live(_status_table(None), console=out, refresh_per_second=1, transient=False) as live:
        while not stop.is_set():
            try:
                result = await query(platform.bus, STATUS_SQL, timeout=5)
                live.update(_status_table(result.records()[0]))
            except HivebusError as exc:
                live.update(_status_table(None, note=str(exc)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await stop.wait()


def _status_table(row: dict | None, note: str = "") -> Table:
    table = Table(title="platform (refreshes every 2 s)", show_header=True)
    for column in ("nodes online", "bundles", "jobs running", "plugin runs", "readings", "dead letters"):
        table.add_column(column, justify="right")
    if row is None:
        table.add_row(*["…"] * 6)
    else:
        table.add_row(
            f"{row['nodes_online']}/{row['nodes']}",
            str(row["bundles"]),
            f"{row['jobs_running']}/{row['jobs']}",
            str(row["plugin_runs"]),
            f"{row['readings']:,}",
            str(row["dead_letters"]),
        )
    if note:
        table.caption = note
    return table
