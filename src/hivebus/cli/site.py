"""``hivebus site``: an edge site behind one NATS leafnode link (issue 20, DESIGN §9).

``hivebus site hub`` runs the hub's nats-server accepting leafnode connections, with a
JetStream domain; ``hivebus site run --hub nats-leaf://HOST:PORT`` runs a site's leaf
server, without JetStream of its own, whose ``$JS.API.>`` is mapped to the hub's domain:
the site's nodes connect to the leaf (``HIVEBUS_NATS_URL=nats://LEAF:PORT``) and publish,
de-duplicate and consume against the hub's streams as if they were connected to it.
See docs/sites.md and ``hivebus.bus.server_config``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated

import typer

from hivebus.bus.server import NatsServer, ServerConfig
from hivebus.cli.app import app, out, run, settings
from hivebus.cli.server import _create_streams, _wait_for_signal
from hivebus.errors import BusError, SetupError

site_app = typer.Typer(
    help="Edge sites: a hub accepting leafnodes, a site's leaf server.", no_args_is_help=True
)
app.add_typer(site_app, name="site")

DOMAIN = "hub"
_LEAF_URL = re.compile(r"^(nats-leaf|tls)://[^/\s]+:\d+$")
_DOMAIN = re.compile(r"^[A-Za-z0-9_-]+$")

Domain = Annotated[
    str,
    typer.Option("--domain", help="The hub's JetStream domain (the same on both sides)."),
]


def check_domain(domain: str) -> str:
    if not _DOMAIN.match(domain):
        raise SetupError(
            f"--domain {domain!r}: a JetStream domain is letters, digits, '-' and '_'",
            hint="the default is 'hub'",
        )
    return domain


def check_leaf_url(url: str) -> str:
    if not _LEAF_URL.match(url):
        raise SetupError(
            f"--hub {url!r} is not a leafnode URL",
            hint="write nats-leaf://HOST:PORT, the hub's leafnode port "
            "(`hivebus site hub` prints it; 7422 by default), not its client port",
        )
    return url


@site_app.command("hub")
def hub(
    data_dir: Annotated[
        Path, typer.Option(envvar="HIVEBUS_DATA_DIR", help="Where the JetStream store lives.")
    ] = Path(".hivebus"),
    nats_port: Annotated[
        int, typer.Option(envvar="HIVEBUS_NATS_PORT", help="Client port (0 = any free port).")
    ] = 4222,
    leafnode_port: Annotated[
        int, typer.Option(help="Port site leaves connect to (0 = any free port).")
    ] = 7422,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 for sites on other machines).")
    ] = "127.0.0.1",
    domain: Domain = DOMAIN,
) -> None:
    """The hub's nats-server accepting site leaves (JetStream domain, streams created) until Ctrl-C.

    Without authentication (see docs/sites.md): run it on a network you trust."""
    cfg = settings()
    srv = NatsServer(
        ServerConfig(
            store_dir=data_dir / "nats",
            host=host,
            port=nats_port,
            fsync=cfg.fsync,
            leafnode_port=leafnode_port,
            jetstream_domain=check_domain(domain),
        )
    ).start()
    try:
        run(_create_streams(srv.url, cfg))
        out.print(
            f"[green]hub nats-server running[/] at [bold]{srv.url}[/] (store {data_dir / 'nats'}, domain {domain})"
        )
        out.print(f"sites:  hivebus site run --hub {srv.leafnode_url} --domain {domain}")
        out.print("stop: Ctrl-C")
        run(_wait_for_signal())
    finally:
        srv.stop()


@site_app.command("run")
def site_run(
    hub_url: Annotated[
        str, typer.Option("--hub", help="The hub's leafnode URL, nats-leaf://HOST:PORT.")
    ],
    data_dir: Annotated[Path, typer.Option(help="Where the leaf keeps its config and log.")] = Path(
        ".hivebus-site"
    ),
    nats_port: Annotated[
        int, typer.Option(help="Client port the site's nodes connect to (0 = any free port).")
    ] = 4222,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 for nodes on other machines).")
    ] = "127.0.0.1",
    name: Annotated[
        str, typer.Option(help="The leaf server's name, as the hub's leafz lists it.")
    ] = "site",
    domain: Domain = DOMAIN,
    link_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for the link before saying it is down (it keeps retrying)."
        ),
    ] = 10.0,
) -> None:
    """A site's leaf nats-server linked to the hub, until Ctrl-C; nodes connect to it locally."""
    srv = NatsServer(
        ServerConfig(
            store_dir=data_dir / "nats",
            host=host,
            port=nats_port,
            server_name=name,
            leafnode_remotes=(check_leaf_url(hub_url),),
            jetstream=False,
            hub_jetstream_domain=check_domain(domain),
        )
    ).start()
    try:
        out.print(
            f"[green]site leaf running[/] at [bold]{srv.url}[/], linked to {hub_url} (domain {domain})"
        )
        if wait_for_link(srv, link_timeout):
            out.print("link: up")
        else:
            out.print(
                f"[yellow]link: not up after {link_timeout:g}s[/]; the leaf keeps retrying "
                f"and the nodes' outboxes keep their events meanwhile ({srv.log_path})"
            )
        out.print(f"nodes:  HIVEBUS_NATS_URL={srv.url} hivebus agent ...")
        out.print("stop: Ctrl-C")
        run(_wait_for_signal())
    finally:
        srv.stop()


def wait_for_link(server: NatsServer, timeout: float) -> bool:
    """Whether ``server`` has a leafnode connection to its hub within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if server.monitor("leafz").get("leafnodes", 0) >= 1:
                return True
        except BusError:  # monitoring hiccup: ask again
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
