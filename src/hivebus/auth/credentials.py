"""A NATS credential as a file: what a process presents when it connects to the hub.

``{"user": "node-W012", "password": "...", "inbox_prefix": "_INBOX_W012"}``, mode 0600.
The inbox prefix matters: an identity may subscribe only to its own inboxes, so nobody
else can read the replies (and pull deliveries) meant for it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from hivebus.errors import SetupError


@dataclass(frozen=True, kw_only=True)
class Credential:
    user: str
    password: str
    inbox_prefix: str

    def connect_options(self) -> dict[str, str]:
        """Keyword arguments for ``nats.connect``."""
        return {"user": self.user, "password": self.password, "inbox_prefix": self.inbox_prefix}

    def dumps(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def save(self, path: Path) -> Path:
        """Write it readable by its owner only."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.dumps())
        os.chmod(path, 0o600)
        return path

    @classmethod
    def load(cls, path: Path) -> Credential:
        try:
            doc = json.loads(Path(path).read_text())
            return cls(user=str(doc["user"]), password=str(doc["password"]), inbox_prefix=str(doc["inbox_prefix"]))
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
