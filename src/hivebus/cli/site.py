"""``hivebus site``: an edge site behind one NATS leafnode link (issue 20, DESIGN §9).

``hivebus site hub`` runs the hub's nats-server accepting leafnode connections, with a
JetStream domain; ``hivebus site run --hub nats-leaf://HOST:PORT`` runs a site's leaf
server, without JetStream of its own, whose ``$JS.API.>`` is mapped to the hub's domain:
the site's nodes connect to the leaf (``HIVEBUS_NATS_URL=nats://LEAF:PORT``) and publish,
de-duplicate and consume against the hub's streams as if they were connected to it.
See docs/sites.md and ``hivebus.bus.server_config``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from hivebus.auth import permissions
from hivebus.auth.hub import HubAuth
from hivebus.auth.sites import SiteCredential
from hivebus.auth.tls import HubTLS, server_tls_block
from hivebus.bus.server import NatsServer, ServerConfig
from hivebus.cli.app import app, out, run, settings
from hivebus.cli.server import (
    Tls,
    TlsCa,
    TlsCert,
    TlsHost,
    TlsKey,
    _create_streams,
    _wait_for_signal,
    tls_note,
)
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
HubDataDir = Annotated[
    Path, typer.Option(envvar="HIVEBUS_DATA_DIR", help="The hub's data dir (its auth/ holds the identities).")
]
# what a leaf logs when the hub refuses its link's credential
_REFUSED = re.compile(r"Leafnode Error '(Authorization Violation|[^']*[Aa]uthentication[^']*)'")


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
    auth: Annotated[
        bool,
        typer.Option("--auth/--no-auth", help="Authenticate nodes, services and site links (identities in <data-dir>/auth)."),
    ] = True,
    tls: Tls = False,
    tls_host: TlsHost = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
) -> None:
    """The hub's nats-server accepting site leaves (JetStream domain, streams created) until Ctrl-C.

    With --auth (the default) a leaf links only with a site credential (`hivebus site add`)
    and carries only its own nodes' subjects; see docs/sites.md."""
    cfg = settings(None, data_dir=data_dir)
    # before any credential is written: they carry its CA
    hub_tls = HubTLS.choose(data_dir, enabled=tls, hosts=tls_host or (), files=(tls_cert, tls_key, tls_ca))
    hub_auth = HubAuth.of_data_dir(data_dir).ensure() if auth else None
    srv = NatsServer(
        ServerConfig(
            store_dir=data_dir / "nats",
            host=host,
            port=nats_port,
            fsync=cfg.fsync,
            leafnode_port=leafnode_port,
            jetstream_domain=check_domain(domain),
            include=hub_auth.conf_path if hub_auth is not None else None,
            tls=hub_tls.server_block() if hub_tls is not None else None,
            leafnode_tls=hub_tls.leafnode_block() if hub_tls is not None else None,
            node_port=hub_tls.node_port if hub_tls is not None else None,
            node_tls=hub_tls.node_block() if hub_tls is not None else None,
        )
    ).start()
    try:
        service = replace(cfg, nats_credentials=hub_auth.creds_path(permissions.SERVICE)) if hub_auth is not None else cfg
        run(_create_streams(srv.url, service))
        out.print(
            f"[green]hub nats-server running[/] at [bold]{srv.url}[/] (store {data_dir / 'nats'}, domain {domain})"
        )
        if hub_auth is not None:
            out.print(f"auth: identities in {hub_auth.dir}; nodes: `hivebus node add ID`, sites: "
                      "`hivebus site add NAME --node ID ... --out NAME.creds`")
            out.print(f"sites:  hivebus site run --hub {srv.leafnode_url} --credentials NAME.creds")
        else:
            out.print("auth: [yellow]off[/] (--no-auth): any leaf may link and publish")
            out.print(f"sites:  hivebus site run --hub {srv.leafnode_url} --domain {domain}")
        if hub_tls is not None:
            out.print(tls_note(hub_tls) + "; site leaves link over TLS (their site credential carries the CA)")
        out.print("stop: Ctrl-C")
        run(_wait_for_signal())
    finally:
        srv.stop()


@site_app.command("add")
def site_add(
    name: Annotated[str, typer.Argument(help="The site's name, e.g. north-field.")],
    node: Annotated[list[str], typer.Option("--node", help="A node behind this site's leaf (repeatable; each needs `hivebus node add` first).")],
    data_dir: HubDataDir = Path(".hivebus"),
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the site credential to this file (mode 0600) instead of printing it.")] = None,
    rotate: Annotated[bool, typer.Option(help="Replace the site's credential and its nodes (the old file stops working).")] = False,
    domain: Domain = DOMAIN,
    leaf_host: Annotated[
        list[str] | None,
        typer.Option("--leaf-host", help="A name or address nodes reach the site's leaf by, for its TLS certificate (repeatable; localhost and 127.0.0.1 are in it)."),
    ] = None,
) -> None:
    """Create a site's link credential for `hivebus site run` (on the hub machine)."""
    auth = HubAuth.of_data_dir(data_dir)
    if not (auth.dir / "identities.json").exists():
        raise SetupError(f"{auth.dir} has no hub identities", hint="run this on the hub machine, in the data dir of `hivebus site hub` (--data-dir)")
    credential = auth.add_site(name, node, rotate=rotate, domain=check_domain(domain), leaf_hosts=leaf_host or ())
    reloaded = auth.reload(data_dir / "nats")
    if out_file is not None:
        credential.save(out_file)
        out.print(f"site {name} ({', '.join(credential.nodes)}): credential written to {out_file} (keep it secret)", highlight=False)
    else:
        out.print(f"site {name}: credential (shown once; the hub keeps only its hash):", highlight=False)
        print(credential.dumps(), end="")
    out.print("hub reloaded" if reloaded else "no hub running on this data dir: the next start reads it", highlight=False)
    out.print(f"at the site: hivebus site run --hub nats-leaf://HUB-HOST:7422 --credentials {out_file or 'FILE'}", highlight=False)


@site_app.command("remove")
def site_remove(name: Annotated[str, typer.Argument()], data_dir: HubDataDir = Path(".hivebus")) -> None:
    """Withdraw a site's link credential (its leaf can no longer link)."""
    auth = HubAuth.of_data_dir(data_dir)
    if not auth.remove_site(name):
        raise SetupError(f"site {name} has no credential", hint=f"sites on this hub: {', '.join(auth.sites()) or 'none'}")
    auth.reload(data_dir / "nats")
    out.print(f"site {name}: credential withdrawn")


@site_app.command("run")
def site_run(
    hub_url: Annotated[
        str, typer.Option("--hub", help="The hub's leafnode URL, nats-leaf://HOST:PORT (a cluster hub: every member's, comma-separated).")
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
    domain: Annotated[
        str | None,
        typer.Option("--domain", help="The hub's JetStream domain (default: the credential's, else 'hub')."),
    ] = None,
    credentials: Annotated[
        Path | None,
        typer.Option(help="The site's credential (`hivebus site add NAME --node ... --out FILE` on the hub)."),
    ] = None,
    link_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for the link before saying it is down (it keeps retrying)."
        ),
    ] = 10.0,
) -> None:
    """A site's leaf nats-server linked to the hub, until Ctrl-C; nodes connect to it locally.

    With --credentials the link authenticates as the site and the leaf admits only the site's
    nodes, each with its own `hivebus node add` credential and confined to its own subjects."""
    hub_urls = [check_leaf_url(u.strip()) for u in hub_url.split(",")]
    site = SiteCredential.load(credentials) if credentials is not None else None
    domain = check_domain(domain or (site.domain if site is not None else DOMAIN))
    srv = NatsServer(leaf_config(data_dir, hub_urls, site, host=host, port=nats_port, name=name, domain=domain)).start()
    try:
        who = f" as site {site.site} (nodes {', '.join(site.nodes)})" if site is not None else " without a credential"
        out.print(
            f"[green]site leaf running[/] at [bold]{srv.url}[/], linked to {hub_url}{who} (domain {domain})",
            highlight=False,
        )
        state = wait_for_link(srv, link_timeout)
        if state == "up":
            out.print("link: up")
        elif state == "refused":
            raise SetupError(
                f"link: the hub at {hub_url} refused this site's credential"
                + (f" ({credentials})" if credentials is not None else " (none given)"),
                hint=(f"on the hub: hivebus site add {site.site} --rotate --node ... --out FILE, and copy FILE here"
                      if site is not None else "on the hub: hivebus site add NAME --node ID ... --out NAME.creds; "
                      "then --credentials NAME.creds"),
            )
        else:
            out.print(
                f"[yellow]link: not up after {link_timeout:g}s[/]; the leaf keeps retrying "
                f"and the nodes' outboxes keep their events meanwhile ({srv.log_path})"
            )
        creds_hint = " --credentials <the node's own file>" if site is not None else ""
        out.print(f"nodes:  hivebus node run --node-id ID --hub {srv.url}{creds_hint}")
        out.print("stop: Ctrl-C")
        run(_wait_for_signal())
    finally:
        srv.stop()


def leaf_config(data_dir: Path, hub_urls: list[str], site: SiteCredential | None, *, host: str = "127.0.0.1",
                port: int = 0, name: str = "site", domain: str = DOMAIN) -> ServerConfig:
    """A site leaf's server config, its auth and TLS files written under ``data_dir``: the
    site's nodes as its users, its link's password in the remote URL, and with a TLS hub the
    hub's CA for the link and the leaf's own certificate (from the hub's CA) for its nodes."""
    include = remote_ca = tls = None
    if site is not None:
        include = write_leaf_auth(data_dir / "auth", site)
        if site.ca is not None:
            remote_ca = _write_private(data_dir / "auth" / "hub-ca.pem", site.ca)
        if site.leaf_cert is not None and site.leaf_key is not None:
            tls = server_tls_block(_write_private(data_dir / "auth" / "leaf.pem", site.leaf_cert),
                                   _write_private(data_dir / "auth" / "leaf.key", site.leaf_key))
    return ServerConfig(
        store_dir=data_dir / "nats",
        host=host,
        port=port,
        server_name=name,
        # one remote with every member's URL: the link moves when its member goes away
        leafnode_remotes=tuple(site.remote_url(u) if site is not None else u for u in hub_urls),
        leafnode_remote_ca=remote_ca,
        jetstream=False,
        hub_jetstream_domain=domain,
        include=include,
        tls=tls,
    )


def _write_private(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def write_leaf_auth(auth_dir: Path, site: SiteCredential) -> Path:
    """The leaf's own users (the site's nodes, checked against the hub's hashes), owner-only."""
    auth_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(auth_dir, 0o700)
    path = auth_dir / "leaf-auth.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as conf:
        conf.write(permissions.render_leaf(site.nodes))
    return path


def link_refused(server: NatsServer) -> str | None:
    """The hub's refusal of the link's credential, as this run of the leaf logged it last."""
    found = _REFUSED.findall(server.log_tail(400))
    return found[-1] if found else None


def wait_for_link(server: NatsServer, timeout: float) -> str:
    """``up`` once ``server`` has a leafnode connection to its hub, ``refused`` if the hub
    refused its credential, ``down`` if neither within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if server.monitor("leafz").get("leafnodes", 0) >= 1:
                return "up"
        except BusError:  # monitoring hiccup: ask again
            pass
        if link_refused(server) is not None:
            return "refused"
        if time.monotonic() >= deadline:
            return "down"
        time.sleep(0.1)
