"""User tokens: what a user presents to act (push, approve, grant, submit, ...).

A token is 256 random bits (``hbt_...``); the log keeps only its SHA-256 in
``auth.user.added``. ``Users`` is the pure fold the gateway and the hub's auth callout
(``auth.user_callout``: a token as a connection of its user's own) check tokens against. A user's
CLI finds its token in ``--token``, ``HIVEBUS_TOKEN``, or the file ``hivebus user add
--save`` wrote (``$XDG_CONFIG_HOME/hivebus/tokens/<user>``, mode 0600).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from hivebus.schemas.auth import UserAdded, UserRevoked
from hivebus.schemas.envelope import Event

PREFIX: Final = "hbt_"


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


@dataclass
class Users:
    """Who holds which token, folded from ``auth.user.*`` events."""

    by_digest: dict[str, str] = field(default_factory=dict)
    digest_of: dict[str, str] = field(default_factory=dict)

    def apply(self, event: Event) -> None:
        data = event.data
        if isinstance(data, UserAdded):
            self._forget(data.user)
            self.by_digest[data.token_sha256] = data.user
            self.digest_of[data.user] = data.token_sha256
        elif isinstance(data, UserRevoked):
            self._forget(data.user)

    def who(self, token: str) -> str | None:
        """The user holding ``token``, or None (unknown, rotated or revoked). A lookup by
        digest: the token is 256 random bits, so timing reveals nothing usable."""
        return self.by_digest.get(digest(token))

    def _forget(self, user: str) -> None:
        old = self.digest_of.pop(user, None)
        if old is not None:
            self.by_digest.pop(old, None)


def tokens_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hivebus" / "tokens"


def save_token(user: str, token: str) -> Path:
    path = tokens_dir() / user
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return path


def find_token(user: str, explicit: str | None = None) -> str | None:
    """``explicit`` (--token), ``HIVEBUS_TOKEN``, or the saved token of ``user``."""
    if explicit:
        return explicit.strip()
    if env := os.environ.get("HIVEBUS_TOKEN"):
        return env.strip()
    try:
        return (tokens_dir() / user).read_text().strip() or None
    except OSError:
        return None
