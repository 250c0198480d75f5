"""A site's credential as a file: what ``hivebus site run`` needs to link a leaf to the hub.

``hivebus site add NAME --node W0A1 --node W0A2 --out NAME.creds`` on the hub writes it
(mode 0600)::

    {"site": "north", "user": "site-north", "password": "...", "domain": "hub",
     "nodes": {"W0A1": "$2b$11$...", "W0A2": "$2b$11$..."}, "ca": "-----BEGIN ..."}

- ``user``/``password``: the leaf link's identity on the hub, whose permissions are the union
  of its nodes' (``permissions.site_permissions``): the hub bounds what the whole site may say.
- ``nodes``: the bcrypt hashes the hub keeps for those nodes' own credentials. The leaf renders
  them into its own config (``permissions.render_leaf``) and checks each node as the hub
  would: a node connects to the leaf with the same file ``hivebus node add`` gave it and is
  confined to its own subjects there, so one node of a site cannot speak for another. Hashes,
  not passwords: the leaf cannot log in as a node anywhere.
- ``ca``: the hub's CA when the hub runs TLS: the leaf's link verifies the hub against it.
- ``leaf_cert``/``leaf_key``: with TLS, a certificate for the leaf's client port signed by the
  hub's CA (for the names ``site add --leaf-host`` gave), so the nodes' own credentials, which
  carry that CA, trust the leaf as they trust the hub, and connect to it over TLS unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hivebus.auth.credentials import save_private
from hivebus.errors import SetupError


@dataclass(frozen=True, kw_only=True)
class SiteCredential:
    site: str
    user: str
    password: str
    domain: str = "hub"
    nodes: dict[str, str] = field(default_factory=dict)  # node id -> bcrypt hash of its password
    ca: str | None = None
    leaf_cert: str | None = None  # the leaf's client-port certificate (PEM), from the hub's CA
    leaf_key: str | None = None

    def dumps(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, indent=2) + "\n"

    def save(self, path: Path) -> Path:
        return save_private(path, self.dumps())

    def remote_url(self, hub_url: str) -> str:
        """``hub_url`` (``nats-leaf://HOST:PORT``) with this site's user and password in it, the
        form nats-server's leafnode remotes take (the password is URL-safe base64)."""
        scheme, sep, rest = hub_url.partition("://")
        return f"{scheme}{sep}{self.user}:{self.password}@{rest}"

    @classmethod
    def load(cls, path: Path) -> SiteCredential:
        try:
            doc = json.loads(Path(path).read_text())
            ca = doc.get("ca")
            cert, key = doc.get("leaf_cert"), doc.get("leaf_key")
            return cls(site=str(doc["site"]), user=str(doc["user"]), password=str(doc["password"]),
                       domain=str(doc.get("domain", "hub")), nodes={str(k): str(v) for k, v in dict(doc["nodes"]).items()},
                       ca=None if ca is None else str(ca), leaf_cert=None if cert is None else str(cert),
                       leaf_key=None if key is None else str(key))
        except FileNotFoundError:
            raise SetupError(
                f"site credentials file {path} does not exist",
                hint="on the hub: hivebus site add NAME --node ID ... --out NAME.creds, then copy it here",
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SetupError(
                f"credentials file {path} is not a site credential ({type(exc).__name__}: {exc})",
                hint="`hivebus site add NAME --node ID ... --out FILE` on the hub writes one "
                "(a node's credential from `hivebus node add` is not a site's)",
            ) from None
