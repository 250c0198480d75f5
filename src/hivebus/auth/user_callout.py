"""A user's token as a connection of that user's own (the auth callout's part for users).

A client holding a user token (``hivebus user add``: ``--token``, ``HIVEBUS_TOKEN`` or the
saved one) connects as NATS user ``user-<name>`` with the token as its password
(``user_connect_options``). The hub's callout (``auth.callout``) asks ``decide``: the token
must be the one the hub's log gives ``<name>`` now (``auth.user.added``, not revoked or
rotated since: ``TokenHolders`` reads the log again before every such decision, so a
revocation takes effect at once). The connection then gets

- an inbox prefix of its own, ``_INBOX.<hash of the token>`` (the token never shows; its
  hash tells nobody the token), and may subscribe to nothing else;
- the public rules for queries and reads, and commands **only as itself**: it may publish on
  ``hivebus.cmd.user.<name>`` (``permissions.user_command_subject``) and not on the shared
  ``hivebus.cmd``; the gateway takes the user from the subject the server let it publish on.

``TokenHolders.watch`` follows the log: when a user's token is revoked or rotated it asks the
hub's nats-server to reload, and the server asks the callout again about every open
connection: the ones made with the old token are refused, so they are closed at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import structlog

from hivebus.auth import permissions
from hivebus.auth.tokens import Users, digest

log = structlog.get_logger()

TOKENS: Final = "tokens"  # the key of the token holders in the document ``callout.decide`` gets
AUTH_USERS: Final = "evt.auth.user.>"
_INBOX: Final = "_INBOX."


class TokenRefused(Exception):
    pass


# --- the client's side --------------------------------------------------------------------


def nats_user(user: str) -> str:
    return permissions.USER_PREFIX + user


def user_inbox(token: str) -> str:
    """The inbox prefix the callout gives a connection made with ``token``."""
    return _INBOX + hashlib.sha256(b"hivebus-user-inbox:" + token.strip().encode()).hexdigest()[:32]


def user_connect_options(user: str, token: str) -> dict[str, Any]:
    """``nats.connect`` options for a connection as ``user`` with its token."""
    return {"user": nats_user(user), "password": token.strip(), "inbox_prefix": user_inbox(token)}


# --- deciding (pure) ----------------------------------------------------------------------


def decide(nats_name: str, token: str, holders: Mapping[str, str] | None, nodes: Iterable[str]) -> tuple[str, permissions.Permissions]:
    """(name, permissions) for a connection as ``nats_name`` (``user-<name>``) with ``token``;
    ``holders``: token digest -> user, as the hub's log has them now (None: not known)."""
    user = nats_name.removeprefix(permissions.USER_PREFIX)
    if holders is None:
        raise TokenRefused("the hub cannot check user tokens now")
    if not user or not token:
        raise TokenRefused(f"{nats_name!r}: no user or no token")
    holder = holders.get(digest(token))
    if holder is None:
        raise TokenRefused(f"user {user}: the token is unknown, rotated or revoked")
    if holder != user:
        raise TokenRefused(f"user {user}: the token is not {user}'s")
    return nats_name, permissions.user_permissions(user, nodes, inbox=user_inbox(token))


def wants_tokens(request_jwt: str) -> bool:
    """Whether an authorization request is from a user-token connection (read without checking
    the signature: it only tells the callout to read the token holders first; ``answer``
    checks the request)."""
    try:
        body = request_jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        user = claims["nats"]["connect_opts"].get("user") or ""
    except (IndexError, KeyError, TypeError, AttributeError, ValueError, binascii.Error):
        return False
    return isinstance(user, str) and user.startswith(permissions.USER_PREFIX)


# --- the token holders, from the hub's log ------------------------------------------------


class TokenHolders:
    """Who holds which token, folded from ``auth.user.*`` (the gateway's fold, ``tokens.Users``),
    read up to the log's end before each decision. ``nc``: the callout's own connection."""

    def __init__(self, nc: Any, auth_dir: Path, store_dir: Path | None = None) -> None:
        from hivebus.bus.client import Bus

        self.bus = Bus(nc)
        self.auth_dir = Path(auth_dir)
        self.store_dir = Path(store_dir) if store_dir is not None else self.auth_dir.parent / "nats"
        """The store of the server this callout serves (``reload`` signals it): the one that
        started the callout; by default ``<data-dir>/nats``, where ``hivebus up`` runs it."""
        self.users = Users()
        self._position = 0
        self._lock = asyncio.Lock()
        self.decided_from: int | None = None
        """The log position of the first decision made (a change at or before it let nobody in)."""

    async def current(self) -> dict[str, str]:
        """Token digest -> user, as of the log's end now."""
        from hivebus.bus.streams import EVENTS
        from hivebus.schemas import codec

        async with self._lock:
            async for batch in self.bus.read(EVENTS, start_seq=self._position + 1, filter_subjects=[AUTH_USERS], stop_at_end=True):
                for message in batch:
                    self._position = max(self._position, message.seq)
                    try:
                        self.users.apply(codec.decode(message.data))
                    except Exception as exc:  # a bad event must not stop the callout
                        log.warning("auth.callout_bad_user_event", seq=message.seq, error=str(exc))
            if self.decided_from is None:
                self.decided_from = self._position
            return dict(self.users.by_digest)

    async def watch(self) -> None:
        """Reload the hub's server whenever a token that may have let a connection in is revoked
        or replaced: the server asks the callout again about every open connection, and closes
        the ones refused now. It reads the log from its start, in order, so nothing is missed
        across its own restarts; only changes past the first decision count."""
        from hivebus.bus.streams import EVENTS
        from hivebus.schemas import codec

        fold, position = Users(), 0
        while True:
            try:
                async for batch in self.bus.read(EVENTS, start_seq=position + 1, filter_subjects=[AUTH_USERS]):
                    gone: set[str] = set()
                    for message in batch:
                        position = message.seq
                        try:
                            event = codec.decode(message.data)
                        except Exception:
                            continue  # current() says so
                        user = str(getattr(event.data, "user", ""))
                        before = fold.digest_of.get(user)
                        fold.apply(event)
                        decided = self.decided_from
                        if before is not None and fold.digest_of.get(user) != before and decided is not None and message.seq > decided:
                            gone.add(user)
                    if gone:
                        self.reload(sorted(gone))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the stream not there yet, the hub restarting: follow again
                log.info("auth.callout_watch_restarting", error=str(exc) or type(exc).__name__)
                await asyncio.sleep(0.5)

    def reload(self, users: list[str]) -> None:
        from hivebus.bus.server import reload_server

        # each cluster member's callout follows the log and reloads its own member
        reloaded = reload_server(self.store_dir)
        log.info("auth.user_tokens_withdrawn", users=users, reloaded=reloaded)


@contextlib.asynccontextmanager
async def holders_of(nc: Any, auth_dir: Path, store_dir: Path | None = None) -> Any:
    """``TokenHolders`` for the callout's connection, with its watch running."""
    holders = TokenHolders(nc, auth_dir, store_dir)
    task = asyncio.create_task(holders.watch())
    try:
        yield holders
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
