"""The hub's auth callout: who a connection is, decided per connection (nats-server >= 2.10).

The hub's nats-server (``permissions.render``) checks only ``service`` and ``admin`` itself
(its ``auth_users``); every other connection is handed to this service: the server sends a
signed authorization request on ``$SYS.REQ.USER.AUTH`` (the client's CONNECT options, its TLS
state) and lets the connection in only with the user JWT this service answers, signed by the
hub's callout key (``<auth-dir>/callout.nk``, the ``issuer`` in the server's config). The JWT
carries that one connection's permissions (``decide``):

- ``node-<ID>`` / ``site-<NAME>``: the password checked against the bcrypt hash the hub
  keeps (``identities.json``, read on every request: ``hivebus node add`` needs no reload),
  then the node's or site's own rules (``permissions``); a wrong, removed or unknown
  identity is refused.
- ``public`` with a secret the client chose (``public_connect_options``): the public rules,
  with an inbox prefix of its own, ``_INBOX.<h>`` where ``h`` is a hash of the secret. The
  prefix shows in reply subjects, the secret never does, so knowing another connection's
  prefix gives nobody the right to subscribe to it. No connection may subscribe to
  ``_INBOX.>`` or another prefix: replies (query results, command outcomes, pull
  deliveries) reach only the connection that asked.
- no credentials at all (a client that is not hivebus's): the public rules with no inbox:
  it may publish requests and never read a reply.
- ``user-<NAME>`` with a user token: that user's own connection (``auth.user_callout``).

The service runs in the hub's own process, on a thread of its own (``CalloutThread``), started
by ``NatsServer.start`` before anything else connects (the server's config requires it), and
restarted if it fails. If it is down, only ``service`` and ``admin`` can connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import bcrypt
import structlog

from hivebus.auth import nkeys, permissions, user_callout
from hivebus.auth.credentials import Credential, save_private
from hivebus.auth.node_certs import refusal as node_cert_refusal

log = structlog.get_logger()

SUBJECT: Final = "$SYS.REQ.USER.AUTH"
KEY_FILE: Final = "callout.nk"
IDENTITIES: Final = "identities.json"
PUBLIC_INBOX: Final = "_INBOX."  # + a hash of the connection's secret
_MIN_SECRET: Final = 22  # ~128 bits of token_urlsafe
_USER_JWT_TTL: Final = 0  # no expiry: a removal is enforced by the reload (auth.hub)


# --- the client's side --------------------------------------------------------------------


def public_inbox(secret: str) -> str:
    """The inbox prefix the callout gives the public connection holding ``secret``."""
    return PUBLIC_INBOX + hashlib.sha256(b"hivebus-inbox:" + secret.encode()).hexdigest()[:32]


def public_connect_options() -> dict[str, Any]:
    """``nats.connect`` options for a connection without credentials: a fresh secret and the
    private inbox it earns on the hub (a hub without auth ignores both)."""
    secret = secrets.token_urlsafe(24)
    return {"user": permissions.PUBLIC, "password": secret, "inbox_prefix": public_inbox(secret)}


# --- the issuer key -----------------------------------------------------------------------


def ensure_issuer(auth_dir: Path) -> nkeys.KeyPair:
    """The hub's callout key (an account nkey), created once, readable by its owner only."""
    path = Path(auth_dir) / KEY_FILE
    if path.exists():
        return nkeys.KeyPair.from_seed(path.read_text())
    pair = nkeys.KeyPair.create(nkeys.ACCOUNT)
    save_private(path, pair.seed + "\n")
    return pair


def has_callout(include: Path | None) -> Path | None:
    """The auth dir of a server config ``include`` that needs this callout (``HubAuth``'s), else None."""
    if include is None:
        return None
    auth_dir = Path(include).parent
    return auth_dir if (auth_dir / KEY_FILE).exists() and (auth_dir / IDENTITIES).exists() else None


# --- deciding -----------------------------------------------------------------------------


@dataclass
class Verified:
    """Passwords already checked against a bcrypt hash (bcrypt costs ~0.1 s a check; a node
    reconnecting after a hub restart is then a dict lookup)."""

    seen: dict[tuple[str, str], bytes] = field(default_factory=dict)

    def check(self, user: str, password: str, hashed: str) -> bool:
        digest = hashlib.sha256(password.encode()).digest()
        if hmac.compare_digest(self.seen.get((user, hashed), b""), digest):
            return True
        try:
            ok = bcrypt.checkpw(password.encode(), hashed.encode())
        except ValueError:
            return False
        if ok:
            self.seen[(user, hashed)] = digest
        return ok


class Refused(Exception):
    pass


def decide(connect: Mapping[str, Any], doc: Mapping[str, Any], verified: Verified) -> tuple[str, permissions.Permissions]:
    """(name, permissions) for a connection with these CONNECT options, given the hub's
    identities (``identities.json``); ``Refused`` if it may not connect."""
    users: Mapping[str, str] = doc.get("users", {})
    sites: Mapping[str, list[str]] = doc.get("sites", {})
    nodes = [u.removeprefix(permissions.NODE_PREFIX) for u in users if u.startswith(permissions.NODE_PREFIX)]
    user = str(connect.get("user") or "")
    password = str(connect.get("pass") or "")
    if connect.get("auth_token") or connect.get("jwt") or connect.get("nkey"):
        raise Refused("this hub takes a user and password, or nothing")
    if not user and not password:
        return "anonymous", permissions.public_permissions(nodes, inbox=None)
    if user == permissions.PUBLIC:
        if len(password) < _MIN_SECRET:
            raise Refused("public: the secret is too short")
        return permissions.PUBLIC, permissions.public_permissions(nodes, inbox=public_inbox(password))
    if user.startswith(permissions.USER_PREFIX):
        try:
            return user_callout.decide(user, password, doc.get(user_callout.TOKENS), nodes)
        except user_callout.TokenRefused as exc:
            raise Refused(str(exc)) from None
    hashed = users.get(user)
    if hashed is None or not (user.startswith(permissions.NODE_PREFIX) or user.startswith(permissions.SITE_PREFIX)):
        raise Refused(f"unknown identity {user!r}")
    if not verified.check(user, password, hashed):
        raise Refused(f"wrong password for {user!r}")
    if user.startswith(permissions.NODE_PREFIX):
        return user, permissions.node_permissions(user.removeprefix(permissions.NODE_PREFIX))
    return user, permissions.site_permissions(sites.get(user.removeprefix(permissions.SITE_PREFIX), ()))


def _jwt_permissions(perms: permissions.Permissions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ours, theirs in (("publish", "pub"), ("subscribe", "sub")):
        rules = perms.get(ours, {})
        out[theirs] = {k: list(v) for k, v in rules.items() if v}
    return out


def answer(request_jwt: str, issuer: nkeys.KeyPair, doc: Mapping[str, Any], verified: Verified,
           data_dir: Path | None = None) -> bytes:
    """The signed authorization response to one request: a user JWT, or the refusal. With the
    hub's ``data_dir``, nodes are held to their client certificates (``auth.node_certs``)."""
    request = nkeys.decode_jwt(request_jwt, nkeys.SERVER)["nats"]
    user_nkey = str(request["user_nkey"])
    server_id = str(request["server_id"]["id"])
    response: dict[str, Any] = {"type": "authorization_response", "version": 2}
    try:
        name, perms = decide(request.get("connect_opts", {}), doc, verified)
        if data_dir is not None and (why := node_cert_refusal(name, request, data_dir)) is not None:
            raise Refused(why)
    except Refused as exc:
        log.info("auth.callout_refused", reason=str(exc), host=request.get("client_info", {}).get("host"))
        response["error"] = str(exc)
    else:
        claims: dict[str, Any] = {
            "sub": user_nkey, "aud": "$G", "name": name,
            "nats": {**_jwt_permissions(perms), "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2},
        }
        if _USER_JWT_TTL:
            claims["exp"] = int(time.time()) + _USER_JWT_TTL
        response["jwt"] = nkeys.encode_jwt(claims, issuer)
    return nkeys.encode_jwt({"sub": user_nkey, "aud": server_id, "nats": response}, issuer).encode()


# --- the service --------------------------------------------------------------------------


async def serve(url: str, auth_dir: Path, ready: threading.Event, stop: asyncio.Event,
                store_dir: Path | None = None) -> None:
    """Answer the server's authorization requests until ``stop``, as the service identity.
    ``store_dir``: the server's store, reloaded when a user's token is withdrawn."""
    import nats

    issuer = ensure_issuer(auth_dir)
    verified = Verified()
    credential = Credential.load(Path(auth_dir) / f"{permissions.SERVICE}.creds")
    options = credential.connect_options()
    if options.get("tls") is not None:
        options["tls_handshake_first"] = True

    async def on_error(exc: Exception) -> None:
        log.debug("auth.callout_nats_error", error=str(exc) or type(exc).__name__)

    async def on_request(msg: Any) -> None:
        try:
            doc = json.loads((Path(auth_dir) / IDENTITIES).read_text())
            if user_callout.wants_tokens(msg.data.decode()):
                doc[user_callout.TOKENS] = await _token_holders(tokens)
            # off the loop: a node's first check is a bcrypt (~0.1 s), and requests keep coming
            reply = await asyncio.to_thread(answer, msg.data.decode(), issuer, doc, verified, Path(auth_dir).parent)
        except Exception as exc:  # a bad request must not stop the service
            log.warning("auth.callout_failed", error=f"{type(exc).__name__}: {exc}")
            return  # the server refuses the connection when no answer comes
        await msg.respond(reply)

    nc = await nats.connect(url, name="hivebus-auth-callout", allow_reconnect=True, max_reconnect_attempts=-1,
                            reconnect_time_wait=0.2, connect_timeout=2, error_cb=on_error, **options)
    try:
        async with user_callout.holders_of(nc, Path(auth_dir), store_dir) as tokens:
            await nc.subscribe(SUBJECT, queue="hivebus-auth-callout", cb=on_request)
            await nc.flush()
            ready.set()
            await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def _token_holders(tokens: user_callout.TokenHolders) -> dict[str, str] | None:
    """The user tokens as of the log's end; None when the log cannot be read (then every
    user-token connection is refused, never let in on what was read before)."""
    try:
        async with asyncio.timeout(1.5):  # an answer must come before the server stops waiting
            return await tokens.current()
    except Exception as exc:
        log.warning("auth.callout_tokens_unreadable", error=f"{type(exc).__name__}: {exc}")
        return None


class CalloutThread:
    """``serve`` on a thread with its own event loop, started again whenever it fails."""

    def __init__(self, url: str, auth_dir: Path, store_dir: Path | None = None) -> None:
        self.url = url
        self.auth_dir = Path(auth_dir)
        self.store_dir = store_dir  # the server's, for reloads (None: <data-dir>/nats)
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.failures = 0

    def start(self, timeout: float = 10.0) -> CalloutThread:
        from hivebus.errors import ServerStartError

        self._thread = threading.Thread(target=self._run, name="hivebus-auth-callout", daemon=True)
        self._thread.start()
        if not self.ready.wait(timeout):
            raise ServerStartError(f"the auth callout did not connect to {self.url} within {timeout:g}s",
                                   hint=f"is {self.auth_dir / 'service.creds'} the hub's own?")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        try:
            while not self._stop.is_set():
                try:
                    loop.run_until_complete(serve(self.url, self.auth_dir, self.ready, self._stop, self.store_dir))
                except Exception as exc:
                    self.failures += 1
                    log.warning("auth.callout_restarting", error=f"{type(exc).__name__}: {exc}", failures=self.failures)
                    loop.run_until_complete(asyncio.sleep(min(2.0, 0.1 * self.failures)))
        finally:
            loop.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
