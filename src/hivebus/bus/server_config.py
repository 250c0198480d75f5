"""What a nats-server runs with: ``ServerConfig``, its resolved ports, the config file text.

fsync policy
------------
``fsync="always"`` (the default, ``HIVEBUS_FSYNC``) writes ``sync_interval: always`` into
the ``jetstream`` block: every stream write is fsync'ed before the server acknowledges
it, so *acknowledged = on disk*. ``fsync="interval"`` leaves nats-server's own default, a
lazy flush every 2 minutes. Jepsen's analysis of NATS 2.12.1 showed that this default
loses writes the server had already acknowledged when the machine loses power or the
OS crashes (a process crash alone is survivable: the data is in the page cache). An
event log that is the source of truth, fed by edge outboxes that delete a record as
soon as it is acked, cannot accept that: the record would be gone from both places.
The price is throughput. ``bench/fsync.py`` measures it against the lazy default in the
same run (20,000 x 128 B to a file stream; dev VM, 2 cores, ext4 on a virtual disk doing
~17k fsync/s; three runs): pipelined ``publish_async`` ~9.7-9.9k msgs/s vs 25-38k
(0.25-0.40x), sequential ``publish`` ~3.0-3.5k vs 5.8-7.0k (0.43-0.55x). nats-server
fsyncs once per message even when publishes are pipelined (strace: 5,500 messages, 5,500
fsyncs), so throughput is capped by the disk's fsync rate -- on an SD card or eMMC far
below this VM's; measure there before sizing a node.
The setting is server-wide (nats-server has no per-stream sync), so ``DATA`` pays it too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hivebus.bus.ports import free_ports, hostport
from hivebus.errors import SetupError

FsyncPolicy = Literal["always", "interval"]

CONFIG_FILE = "nats-server.conf"
LOG_FILE = "nats-server.log"
PID_FILE = "nats-server.pid"  # written by nats-server itself: the data dir records its server


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """What to run. A port of 0 means "pick a free one" (fixed after the first start).

    ``cluster_port``/``leafnode_port`` of ``None`` mean no such listener; ``authorization``
    is the body of the ``authorization { ... }`` block, pasted verbatim; ``include`` is a
    config file included at the top level (``hivebus.auth`` writes its users and their
    permissions there, and a ``reload`` picks up changes without a restart).

    ``jetstream=False`` runs no JetStream at all: the form of a *site leaf* (``hivebus site
    run``). A leaf without JetStream of its own forwards ``$JS.API.>`` and every publish over
    its leafnode link. nats-server 2.15 does not let the plain ``$JS.API.>`` cross a leaf
    link, only the domain's name for it ``$JS.<domain>.API.>``: so the hub runs with a
    ``jetstream_domain`` and the leaf is given it as ``hub_jetstream_domain``, which renders
    ``mappings { "$JS.API.>": "$JS.<domain>.API.>" }``. A node connected to the leaf then
    talks to the hub's streams exactly as if it were connected to the hub (publish acks,
    ``Nats-Msg-Id`` de-duplication, stream info, pull consumers) without knowing the domain.
    """

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    http_port: int = 0
    server_name: str = "hivebus"
    fsync: FsyncPolicy = "always"
    max_file_store: int | None = None
    max_memory_store: int | None = None
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: tuple[str, ...] = ()
    leafnode_port: int | None = None
    leafnode_remotes: tuple[str, ...] = ()
    jetstream_domain: str | None = None
    jetstream: bool = True
    hub_jetstream_domain: str | None = None
    authorization: str | None = None
    tls: str | None = None  # the body of a ``tls { ... }`` block: TLS required on the client port
    leafnode_tls: str | None = None  # the body of ``leafnodes { tls { } }``: leaves link over TLS only
    leafnode_remote_ca: Path | None = None  # a leaf's remote verifies the hub against this CA (TLS)
    # the node listener (auth.tls): nats-server's websocket port, its ``tls { }`` body requiring
    # a client certificate of every connection; both or neither
    node_port: int | None = None
    node_tls: str | None = None
    include: Path | None = None
    debug: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "store_dir", Path(self.store_dir))
        if self.fsync not in ("always", "interval"):
            raise SetupError(f"fsync: {self.fsync!r} must be 'always' or 'interval'")
        for name in ("port", "http_port", "cluster_port", "leafnode_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise SetupError(f"{name}: {value} is not a port number", hint="0 picks a free one")
        if (self.node_port is None) != (self.node_tls is None):
            raise SetupError("node_port and node_tls go together (the node listener requires TLS)")
        if self.node_port is not None and not 0 < self.node_port <= 65535:
            raise SetupError(f"node_port: {self.node_port} is not a port number")
        for name in ("max_file_store", "max_memory_store"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise SetupError(f"{name}: {value} must be a byte count >= 0")
        if not self.server_name or any(c.isspace() for c in self.server_name):
            raise SetupError(f"server_name: {self.server_name!r} must be non-empty, without spaces")
        if not self.jetstream and (self.cluster_name is not None or self.jetstream_domain):
            raise SetupError(
                "jetstream=False: a server without JetStream takes no cluster or jetstream_domain"
            )
        if self.hub_jetstream_domain is not None and (self.jetstream or not self.leafnode_remotes):
            raise SetupError(
                "hub_jetstream_domain is for a site leaf: jetstream=False and leafnode_remotes set"
            )
        if (self.cluster_name is None) != (self.cluster_port is None):
            raise SetupError(
                "cluster_name and cluster_port go together", hint="set both or neither"
            )
        if self.cluster_name is not None and not self.routes:
            raise SetupError(
                "a JetStream cluster member needs routes to its peers",
                hint="use NatsCluster, or pass routes=('nats-route://host:port', ...)",
            )
        if self.routes and self.cluster_name is None:
            raise SetupError("routes need cluster_name and cluster_port")


@dataclass(frozen=True)
class Ports:
    client: int
    http: int
    cluster: int | None
    leafnode: int | None

    def named(self) -> dict[str, int]:
        kinds = {"client": self.client, "monitoring": self.http}
        if self.cluster is not None:
            kinds["cluster"] = self.cluster
        if self.leafnode is not None:
            kinds["leafnode"] = self.leafnode
        return kinds


def resolve_ports(config: ServerConfig) -> Ports:
    """Replace every 0 with a distinct free port."""
    wanted = [config.port, config.http_port, config.cluster_port, config.leafnode_port]
    fresh = iter(free_ports(sum(1 for p in wanted if p == 0), config.host))
    client, http, cluster, leafnode = (next(fresh) if p == 0 else p for p in wanted)
    assert client is not None and http is not None
    return Ports(client, http, cluster, leafnode)


def render_config(config: ServerConfig, ports: Ports) -> str:
    """The nats-server config file text for ``config`` with its ports resolved."""
    q = json.dumps  # nats config strings accept JSON quoting
    lines = [
        "# generated by hivebus.bus.server -- edits are overwritten on the next start",
        f"server_name: {q(config.server_name)}",
        f"listen: {q(hostport(config.host, ports.client))}",
        f"http: {q(hostport(config.host, ports.http))}",
        f"pid_file: {q(str((config.store_dir / PID_FILE).resolve()))}",
    ]
    if not config.jetstream:
        lines.append(
            "jetstream: disabled  # a site leaf: the hub's JetStream answers over the link"
        )
        if config.hub_jetstream_domain is not None:
            target = f"$JS.{config.hub_jetstream_domain}.API.>"
            lines += ["mappings {", f"  {q('$JS.API.>')}: {q(target)}", "}"]
    else:
        lines += _jetstream_block(config)
    if config.cluster_name is not None:
        lines += [
            "cluster {",
            f"  name: {q(config.cluster_name)}",
            f"  listen: {q(hostport(config.host, ports.cluster))}",
            f"  routes: [{', '.join(q(r) for r in config.routes)}]",
            "}",
        ]
    if ports.leafnode is not None or config.leafnode_remotes:
        lines.append("leafnodes {")
        if ports.leafnode is not None:
            lines.append(f"  listen: {q(hostport(config.host, ports.leafnode))}")
            if config.leafnode_tls is not None:
                lines += ["  tls {", config.leafnode_tls, "  }"]
        if config.leafnode_remotes:
            # one remote with every URL: the servers of one hub (a cluster's members), tried in
            # turn, so the leaf keeps one link and moves it when its server goes away
            urls = ", ".join(q(url) for url in config.leafnode_remotes)
            tls = ""
            if config.leafnode_remote_ca is not None:
                tls = f", tls: {{ca_file: {q(str(Path(config.leafnode_remote_ca).resolve()))}}}"
            lines.append(f"  remotes: [{{urls: [{urls}]{tls}}}]")
        lines.append("}")
    if config.tls is not None:
        lines += ["tls {", config.tls, "}"]
    if config.node_port is not None and config.node_tls is not None:
        # nodes only: a client certificate from the hub's CA, checked again by the auth callout
        lines += ["websocket {", f"  listen: {q(hostport(config.host, config.node_port))}",
                  "  tls {", config.node_tls, "  }", "}"]
    if config.authorization is not None:
        lines += ["authorization {", config.authorization, "}"]
    if config.include is not None:
        # nats-server resolves an include relative to the including file's directory.
        target = os.path.relpath(config.include.resolve(), config.store_dir.resolve())
        lines.append(f"include {q(target)}")
    if config.debug:
        lines.append("debug: true")
    return "\n".join(lines) + "\n"


def _jetstream_block(config: ServerConfig) -> list[str]:
    q = json.dumps
    lines = ["jetstream {", f"  store_dir: {q(str(config.store_dir.resolve()))}"]
    if config.fsync == "always":
        lines.append("  sync_interval: always  # fsync before every ack; see module docstring")
    if config.max_file_store is not None:
        lines.append(f"  max_file_store: {config.max_file_store}")
    if config.max_memory_store is not None:
        lines.append(f"  max_memory_store: {config.max_memory_store}")
    if config.jetstream_domain is not None:
        lines.append(f"  domain: {q(config.jetstream_domain)}")
    lines.append("}")
    return lines
