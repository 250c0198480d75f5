"""A NATS credential as a file: what a process presents when it connects to the hub.

``{"user": "node-W012", "password": "...", "inbox_prefix": "_INBOX_W012"}``, mode 0600.
The inbox prefix matters: an identity may subscribe only to its own inboxes, so nobody
else can read the replies (and pull deliveries) meant for it. A hub with TLS adds ``"ca"``,
its CA certificate (PEM): the holder then connects over TLS and trusts only that hub, with
nothing else to copy to the node.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from hivebus.errors import SetupError


@dataclass(frozen=True, kw_only=True)
class Credential:
    user: str
    password: str
    inbox_prefix: str
    ca: str | None = None  # the hub's CA (PEM) when the hub requires TLS

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        options: dict[str, Any] = {"user": self.user, "password": self.password, "inbox_prefix": self.inbox_prefix}
        if self.ca is not None:
            options["tls"] = self.tls_context()
        return options

    def tls_context(self) -> ssl.SSLContext | None:
        from hivebus.auth.tls import client_context

        return client_context(self.ca) if self.ca is not None else None

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
            ca = doc.get("ca")
            return cls(user=str(doc["user"]), password=str(doc["password"]), inbox_prefix=str(doc["inbox_prefix"]),
                       ca=None if ca is None else str(ca))
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


def save_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` readable by its owner only (a credential: never group/world)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)
    return path
