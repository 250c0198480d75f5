"""``hivebus web``: the HTTP face (Sage data API, object store, streams) on the hub's bus."""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated

import typer

from hivebus.cli.app import Hub, app, err, run, settings

HttpPort = Annotated[int, typer.Option("--http-port", envvar="HIVEBUS_HTTP_PORT",
                                       help="HTTP port of the web API (0 picks a free one and prints it).")]
HttpHost = Annotated[str, typer.Option("--http-host", envvar="HIVEBUS_HTTP_HOST", help="Address the web API listens on.")]


@app.command()
def web(
    hub: Hub = None,
    http_port: HttpPort = 8080,
    http_host: HttpHost = "127.0.0.1",
    max_body: Annotated[int, typer.Option(help="Largest JSON request body, in bytes.")] = 1024 * 1024,
    max_upload: Annotated[int, typer.Option(help="Largest object upload, in bytes.")] = 8 * 1024**3,
) -> None:
    """Serve the dashboard at / and the HTTP API: POST /api/v1/query (Sage data API), /api/v1/sql, /api/v1/objects; docs at /docs."""
    from hivebus.bus.client import Bus
    from hivebus.web.app import WebConfig
    from hivebus.web.serve import serve

    config = WebConfig(settings=settings(hub), max_body=max_body, max_upload=max_upload)

    async def go() -> None:
        # Fail fast with hivebus's own words if the hub cannot be reached or refuses us.
        async with await Bus.connect(config.settings.nats_url, name="hivebus-web-check", settings=config.settings):
            pass
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, http_host, http_port, stop, on_listening=announce)

    run(go())


def announce(url: str) -> None:
    err.print(f"hivebus web: {url} (dashboard {url}/, API docs {url}/docs; Ctrl-C stops)", highlight=False, soft_wrap=True)
    print(url, flush=True)
