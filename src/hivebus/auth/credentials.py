"""A NATS credential as a file: what a process presents when it connects to the hub.

``{"user": "node-W012", "password": "...", "inbox_prefix": "_INBOX_W012"}``, mode 0600.
The inbox prefix matters: an identity may subscribe only to its own inboxes, so nobody
else can read the replies (and pull deliveries) meant for it. A hub with TLS adds ``"ca"``,
its CA certificate (PEM): the holder then connects over TLS and trusts only that hub, with
nothing else to copy to the node. A node's credential from a hub with its own CA also carries
the node's client certificate and key (``"cert"``, ``"key"``, PEM; ``auth.tls.issue_node_cert``)
and the hub's node listener (``"node_url"``, ``wss://host:port``): the node then connects there,
presenting the certificate (``node_urls``).
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hivebus.errors import SetupError


@dataclass(frozen=True, kw_only=True)
class Credential:
    user: str
    password: str
    inbox_prefix: str
    ca: str | None = None  # the hub's CA (PEM) when the hub requires TLS
    cert: str | None = None  # a node's client certificate (PEM), for the hub's node listener
    key: str | None = None  # its private key (PEM)
    node_url: str | None = None  # the node listener, wss://host:port, as the hub knew itself

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        options: dict[str, Any] = {"user": self.user, "password": self.password, "inbox_prefix": self.inbox_prefix}
        if self.ca is not None:
            options["tls"] = self.tls_context()
        return options

    def tls_context(self) -> ssl.SSLContext | None:
        from hivebus.auth.tls import client_context

        if self.ca is None:
            return None
        context = client_context(self.ca)
        if self.cert is not None and self.key is not None:
            _load_client_cert(context, self.cert, self.key)
        return context

    def node_urls(self, hub_url: str) -> list[str]:
        """Where to reach the hub, in order: with a client certificate, the node listener at
        the host of ``hub_url`` (the name this machine knows the hub by) on the listener's port
        in the credential, then ``hub_url`` itself (a site leaf, which has no node listener, or
        a hub that has not one any more); without a certificate ``hub_url`` alone. A ``ws://``
        or ``wss://`` ``hub_url`` is taken as it is."""
        return node_urls(hub_url, self.node_url if self.cert is not None else None)

    def with_ca(self, ca: str | None) -> Credential:
        return replace(self, ca=ca)

    def dumps(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, indent=2) + "\n"

    def save(self, path: Path) -> Path:
        return save_private(path, self.dumps())

    @classmethod
    def load(cls, path: Path) -> Credential:
        try:
            doc = json.loads(Path(path).read_text())
            extra = {k: str(doc[k]) for k in ("ca", "cert", "key", "node_url") if doc.get(k) is not None}
            return cls(user=str(doc["user"]), password=str(doc["password"]), inbox_prefix=str(doc["inbox_prefix"]),
                       **extra)
        except FileNotFoundError:
            raise SetupError(
                f"credentials file {path} does not exist",
                hint="`hivebus node add <ID> --out FILE` writes one for a node; the hub's own are in <data-dir>/auth/",
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SetupError(
                f"credentials file {path} is not a hivebus credential ({type(exc).__name__}: {exc})",
                hint='expected JSON {"user": ..., "password": ..., "inbox_prefix": ...}',
            ) from None


def node_urls(hub_url: str, node_url: str | None) -> list[str]:
    """``Credential.node_urls``, for a credential whose node listener is ``node_url``."""
    given = urlsplit(hub_url if "://" in hub_url else f"nats://{hub_url}")
    if node_url is None or given.scheme in ("ws", "wss"):
        return [hub_url]
    listener = urlsplit(node_url)
    if listener.port is None or given.hostname is None:
        return [hub_url]
    host = given.hostname if ":" not in given.hostname else f"[{given.hostname}]"
    return [f"wss://{host}:{listener.port}", hub_url]


def _load_client_cert(context: ssl.SSLContext, cert: str, key: str) -> None:
    """``load_cert_chain`` reads files only: the PEMs go through a private temporary directory
    that is removed at once."""
    with tempfile.TemporaryDirectory(prefix="hivebus-cert-") as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        save_private(cert_file, cert)
        save_private(key_file, key)
        try:
            context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as exc:
            raise SetupError(f"the node certificate in the credential is not usable ({exc})",
                             hint="`hivebus node add ID --rotate --out FILE` on the hub issues a new one") from None


def save_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` readable by its owner only (a credential: never group/world)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)
    return path
