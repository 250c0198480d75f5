"""``Bus``: the one way hivebus code talks to NATS.

Connect (reconnecting forever once connected; a clear error if the server cannot be
reached at start), publish events (idempotent by event id), consume streams as decoded
events with their stream sequence, and request/reply. nats-py errors are translated into
``hivebus.errors`` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import AuthorizationError, NoRespondersError, NoServersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError, NoStreamResponseError

from hivebus.auth.callout import public_connect_options
from hivebus.auth.credentials import Credential
from hivebus.auth.permissions import USER_PREFIX, user_command_subject
from hivebus.bus.batch import unpack
from hivebus.bus.consumer import Delivery, RawMessage
from hivebus.bus.publisher import (
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
    MSG_ID,
    WRONG_LAST_SEQUENCE,
    Outgoing,
    Pipeline,
)
from hivebus.bus.reader import read_stream
from hivebus.bus.streams import (
    ConsumerSpec,
    StreamSpec,
    ensure_consumer,
    ensure_streams,
    platform_streams,
)
from hivebus.bus.subjects import subject_for
from hivebus.config import Settings
from hivebus.errors import (
    ConcurrencyConflict,
    ConnectError,
    CredentialRefused,
    HivebusError,
    PermissionDenied,
    PublishError,
    RequestTimeout,
    SetupError,
)
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event

log = structlog.get_logger()

_GATEWAY = "hivebus.cmd"  # services.requests.CMD_SUBJECT (the command gateway, services.gateway)
_PERMISSION_VIOLATION = re.compile(r"Permissions Violation for (Publish|Subscription) to \\?\"?([^\"\\'\s]+)", re.IGNORECASE)


class Bus:
    """A live connection to the hub's NATS server or cluster."""

    def __init__(self, nc: NATS, *, settings: Settings | None = None) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=10)
        self.settings = settings or Settings()
        self._pipeline = Pipeline(nc)
        # subject -> the server's message, for every publish/subscribe it refused us
        self.denied: dict[str, str] = {}
        self.urls: list[str] = []
        # (user, token) -> that user's own connection (auth.user_callout), made on first use
        self._as_user: dict[tuple[str, str], Bus] = {}
        self._as_user_lock = asyncio.Lock()  # two commands at once make one connection, not two

    # --- lifecycle ------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        servers: str | Sequence[str] | None = None,
        *,
        name: str = "hivebus",
        settings: Settings | None = None,
        connect_timeout: float = 5.0,
        **options: Any,
    ) -> Bus:
        """Connect; once connected, reconnect forever with backoff.

        Raises ``ConnectError`` if no server answers within ``connect_timeout`` seconds.
        """
        settings = settings or Settings.from_env()
        servers = servers or settings.nats_url
        urls = [s.strip() for s in servers.split(",")] if isinstance(servers, str) else list(servers)
        creds = settings.credentials_file()
        if creds is not None and "user" not in options:
            options = {**Credential.load(creds).connect_options(), **options}
        elif "user" not in options and "inbox_prefix" not in options:
            # no credentials: the public identity, with an inbox of this connection's own
            # (auth.callout): nobody else can read the replies it gets
            options = {**public_connect_options(), **options}
        if "tls" not in options and (context := hub_tls(settings)) is not None:
            options["tls"] = context
        if options.get("tls") is not None:
            # TLS before anything else: nothing, the password least of all, goes to a server
            # that has not proven itself with the hub's certificate (auth.tls: handshake_first)
            options.setdefault("tls_handshake_first", True)
        denied: dict[str, str] = {}
        refused: list[str] = []
        untrusted: list[str] = []

        user_token = str(options.get("user") or "").startswith(USER_PREFIX)
        connected: list[bool] = []
        deadline: list[asyncio.Timeout] = []

        async def on_error(exc: Exception) -> None:
            text = str(exc) or type(exc).__name__
            if "authorization violation" in text.lower():
                refused.append(text)
                if user_token and connected:
                    # a user's token withdrawn (auth.user_callout): retrying can only be refused
                    log.info("nats.user_token_refused", name=name)
                    asyncio.get_running_loop().create_task(_close_quietly(nc))
                elif deadline and not connected and (user_token or len(refused) >= len(urls)):
                    deadline[0].reschedule(asyncio.get_running_loop().time())  # refused: say so now
            if isinstance(exc, ssl.SSLError) or "[SSL:" in text:  # (over wss: aiohttp's ClientSSLError)
                untrusted.append(text)
                if deadline and not connected and len(untrusted) >= len(urls):
                    # every server failed the handshake (its certificate, or ours): waiting
                    # out the connect timeout would only repeat it
                    deadline[0].reschedule(asyncio.get_running_loop().time())
            if m := _PERMISSION_VIOLATION.search(text):
                # once per connection: a refused identity retrying must not flood the log
                first = not denied
                denied[m.group(2)] = text
                (log.warning if first else log.debug)("nats.permission_denied", action=m.group(1).lower(), subject=m.group(2), name=name)
                return
            log.debug("nats.error", error=text)

        async def on_disconnect() -> None:
            log.info("nats.disconnected", name=name)

        async def on_reconnect() -> None:
            log.info("nats.reconnected", name=name, url=str(nc.connected_url.netloc if nc.connected_url else ""))

        nc = NATS()
        try:
            async with asyncio.timeout(connect_timeout) as connecting:
                deadline.append(connecting)
                await nc.connect(
                    urls,
                    name=name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,  # type: ignore[arg-type]  # nats-py sleeps on it: a float is fine
                    connect_timeout=max(1, int(connect_timeout)),
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                    pending_size=64 * 1024 * 1024,
                    # hivebus builds every subject itself (bus.subjects); nats-py's per-publish
                    # regex check cost ~10% of a pipelined publish.
                    skip_subject_validation=True,
                    **options,
                )
        except (AuthorizationError, TimeoutError, NoServersError, OSError) as exc:
            await _close_quietly(nc)
            if untrusted:
                raise ConnectError(
                    f"NATS at {', '.join(urls)} requires TLS and its certificate is not trusted here ({untrusted[-1]})",
                    hint="give this machine the hub's CA: a credential from `hivebus node add` carries it, or set "
                    "HIVEBUS_TLS_CA to a copy of the hub's <data-dir>/tls/ca.pem; connect by a name the hub's "
                    "certificate holds (`hivebus up --tls-host NAME` adds one)",
                ) from None
            if refused or isinstance(exc, AuthorizationError):
                raise CredentialRefused(
                    f"NATS at {', '.join(urls)} refused the credentials"
                    + (f" in {creds}" if creds is not None else " (none given)"),
                    hint="set HIVEBUS_NATS_CREDENTIALS to this identity's creds file; "
                    "`hivebus node add <ID> --rotate` (on the hub) issues a new node credential",
                ) from None
            raise ConnectError(
                f"cannot reach NATS at {', '.join(urls)} ({type(exc).__name__})",
                hint="start the hub with `hivebus up` (or `hivebus server`), or point --hub / HIVEBUS_NATS_URL at it",
            ) from None
        connected.append(True)
        bus = cls(nc, settings=settings)
        bus.denied = denied
        bus.urls = urls
        return bus

    async def close(self) -> None:
        users, self._as_user = list(self._as_user.values()), {}
        for user_bus in users:
            await user_bus.close()
        await _close_quietly(self.nc)

    # --- a user's own connection ---------------------------------------------------------

    @property
    def hub_authenticates(self) -> bool:
        """Whether the server asked for credentials (a hub with auth: the callout decides)."""
        return bool(getattr(self.nc, "_server_info", {}).get("auth_required"))

    async def as_user(self, user: str, token: str) -> Bus | None:
        """``user``'s own connection to the same hub, made with ``token`` (``auth.user_callout``):
        the callout lets it in only with the token the hub's log gives ``user`` now, and it may
        send commands only as ``user``. Kept for the next command; None on a hub without
        authentication (it takes the token in the command, ``hivebus.cmd``).
        ``Unauthorized`` when the hub refuses the token (a command then goes the old way, the
        token in its body, and the gateway says why)."""
        if not self.hub_authenticates or not self.urls:
            return None
        async with self._as_user_lock:
            return await self._user_connection(user, token)

    async def _user_connection(self, user: str, token: str) -> Bus:
        from hivebus.auth.user_callout import user_connect_options
        from hivebus.errors import Unauthorized

        key = (user, token.strip())
        held = self._as_user.get(key)
        if held is not None and held.nc.is_connected:
            return held
        if held is not None:  # cut (a revoked token) or away: ask the hub again
            self._as_user.pop(key, None)
            await held.close()
        options = user_connect_options(user, token)
        if (tls := getattr(self.nc, "options", {}).get("tls")) is not None:
            options["tls"] = tls  # the same hub, trusted the same way
        try:
            bus = await Bus.connect(self.urls, name=f"hivebus-user-{user}", settings=self.settings, **options)
        except CredentialRefused:
            raise Unauthorized(
                f"the hub refused {user}'s token: it is unknown, rotated, revoked or another user's",
                hint=f"ask an admin for a new one (`hivebus user add {user}`), then pass --token or set HIVEBUS_TOKEN",
            ) from None
        self._as_user[key] = bus
        return bus

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ensure_streams(self, specs: list[StreamSpec] | None = None) -> dict[str, str]:
        """Create or update the platform's streams (idempotent)."""
        return await ensure_streams(self.js, specs or platform_streams(self.settings))

    # --- publish --------------------------------------------------------------------

    async def publish(
        self,
        event: Event,
        *,
        expected_last_subject_seq: int | None = None,
        expected_subject: str | None = None,
        timeout: float = 5.0,
        retries: int = 3,
    ) -> int:
        """Publish one event; returns its stream sequence.

        Idempotent by ``event.id``: publishing it again returns the first sequence.
        With ``expected_last_subject_seq`` the write succeeds only if the last message on
        the event's subject (or on ``expected_subject``, a wildcard over one aggregate;
        nats-server >= 2.11) has that sequence, else ``ConcurrencyConflict``.
        """
        subject = subject_for(event)
        headers = {MSG_ID: event.id}
        if expected_last_subject_seq is not None:
            headers[EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected_last_subject_seq)
            if expected_subject:
                headers[EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT] = expected_subject
        return await self._publish_one(subject, codec.encode(event), headers, timeout, retries)

    async def _publish_one(self, subject: str, payload: bytes, headers: dict[str, str], timeout: float, retries: int) -> int:
        for attempt in range(retries + 1):
            try:
                ack = await self.js.publish(subject, payload, timeout=timeout, headers=headers)
                return ack.seq
            except APIError as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    expected = int(headers.get(EXPECTED_LAST_SUBJECT_SEQUENCE, "-1"))
                    raise ConcurrencyConflict(headers.get(EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, subject), expected, exc.description or "") from None
                raise PublishError(f"JetStream refused {subject!r}: {exc.description}") from None
            except (NoRespondersError, NoStreamResponseError):
                raise PublishError(f"no stream listens on {subject!r}", hint="run `hivebus up` once to create the streams") from None
            except (NatsTimeout, TimeoutError, ConnectionError) as exc:
                self.raise_if_denied(subject)
                # Safe to resend: the same Nats-Msg-Id is dropped as a duplicate.
                log.warning("publish.retry", subject=subject, attempt=attempt + 1, error=type(exc).__name__)
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        raise PublishError(f"no acknowledgement for {subject!r} after {retries + 1} attempts", hint="is the NATS server up?")

    def raise_if_denied(self, subject: str) -> None:
        """``PermissionDenied`` if the server refused this identity a publish to ``subject``."""
        if subject.lower() in self.denied:  # nats-py lower-cases the server's message
            raise PermissionDenied(
                f"the hub does not let this identity publish to {subject!r}",
                hint="nodes publish only their own data.<node>.> and fromedge.<node>.>; "
                "user actions go through the gateway with a user token (HIVEBUS_TOKEN)",
            )

    async def publish_many(self, events: Iterable[Event], *, timeout: float = 10.0) -> list[int]:
        """Publish events pipelined; returns their stream sequences in order."""
        encode = codec.encode
        return await self._pipeline.publish(
            [Outgoing(subject_for(e), encode(e), e.id) for e in events], timeout=timeout
        )

    async def publish_raw_many(
        self, messages: Sequence[Outgoing], *, timeout: float = 10.0, retries: int = 8
    ) -> list[int]:
        """Publish pre-encoded messages pipelined (the edge outbox forwards these).

        ``retries=0`` fails fast instead of resending unacknowledged messages itself: the
        edge forwarder then checks the stream for what arrived before it sends again.
        """
        try:
            return await self._pipeline.publish(messages, timeout=timeout, retries=retries)
        except PublishError:
            for subject in {m.subject for m in messages}:
                self.raise_if_denied(subject)
            raise

    # --- consume --------------------------------------------------------------------

    async def consume(
        self,
        spec: ConsumerSpec,
        *,
        batch: int = 256,
        idle: float = 1.0,
        dead_letters: bool = True,
    ) -> AsyncIterator[Delivery]:
        """Deliveries from a durable pull consumer, at least once, in stream order.

        Each delivery carries the decoded event and its stream sequence; the caller acks.
        With ``dead_letters``, a message that does not decode is sent to
        ``dlq.<stream>.<consumer>`` with the reason, acked, and skipped.
        """
        await ensure_consumer(self.js, spec)
        sub = await self.js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
        try:
            while True:
                try:
                    msgs = await sub.fetch(batch, timeout=idle)
                except (NatsTimeout, TimeoutError):
                    continue
                for msg in msgs:
                    delivery = Delivery.of(msg, self, spec.stream, spec.durable)
                    if delivery.error is not None and dead_letters:
                        await delivery.dead_letter(delivery.error.reason, field=delivery.error.field)
                        continue
                    yield delivery
        finally:
            await _unsubscribe_quietly(sub)

    def read(
        self,
        stream: str,
        *,
        start_seq: int = 1,
        filter_subjects: Sequence[str] = (),
        batch: int = 2000,
        idle: float = 0.5,
        stop_at_end: bool = False,
        start_time: datetime | None = None,
        new_only: bool = False,
        name: str | None = None,
    ) -> AsyncIterator[list[RawMessage]]:
        """Raw messages of ``stream`` from ``start_seq`` (or ``start_time``, or only new
        ones) on, in batches, with no acks (see ``bus.reader``); with ``stop_at_end`` it
        ends when nothing is pending."""
        return read_stream(
            self.js, stream, start_seq=start_seq, filter_subjects=filter_subjects,
            batch=batch, idle=idle, stop_at_end=stop_at_end, start_time=start_time, new_only=new_only, name=name, denied=self.denied,
        )

    async def last_seq(self, stream: str) -> int:
        info = await self.js.stream_info(stream)
        return info.state.last_seq

    async def events(self, stream: str, **kwargs: Any) -> AsyncIterator[tuple[int, Event]]:
        """Decoded events of ``stream`` (see ``read``), a packed DATA message's readings each
        with that message's sequence (``bus.batch``); undecodable ones are skipped."""
        async for batch in self.read(stream, **kwargs):
            for m in batch:
                try:
                    bodies = unpack(m.data)  # one event, or a packed message's readings
                except Exception:
                    log.warning("read.undecodable", stream=stream, seq=m.seq)
                    continue
                for body in bodies:
                    try:
                        yield m.seq, codec.decode(body)
                    except Exception:
                        log.warning("read.undecodable", stream=stream, seq=m.seq)

    async def subscribe(self, subject: str) -> AsyncIterator[tuple[str, Event | None, bytes]]:
        """Live core-NATS messages on ``subject``: (subject, event or None if undecodable, raw)."""
        sub = await self.nc.subscribe(subject)
        try:
            async for msg in sub.messages:
                try:
                    yield msg.subject, codec.decode(msg.data), msg.data
                except Exception:
                    yield msg.subject, None, msg.data
        finally:
            await _unsubscribe_quietly(sub)

    # --- request / reply ------------------------------------------------------------

    async def request(self, subject: str, payload: bytes | dict[str, Any], *, timeout: float = 10.0) -> bytes:
        if subject == _GATEWAY and isinstance(payload, dict) and (mine := await self._own_command(payload)) is not None:
            # a command with a user token: sent on that user's own connection, as that user,
            # without the token (auth.user_callout); the caller sees the same reply
            user_bus, user, body_doc = mine
            return await user_bus.request(user_command_subject(user), body_doc, timeout=timeout)
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            reply = await self.nc.request(subject, body, timeout=timeout)
        except NoRespondersError:
            raise RequestTimeout(f"nothing serves {subject!r}", hint="is `hivebus up` running?") from None
        except (NatsTimeout, TimeoutError):
            raise RequestTimeout(f"no reply on {subject!r} within {timeout:g}s") from None
        return reply.data

    async def _own_command(self, doc: dict[str, Any]) -> tuple[Bus, str, dict[str, Any]] | None:
        """For a gateway request ``{"token", "event"}`` by ``user/<name>``: that user's own
        connection, the name and the body without the token; None to send it as it is."""
        token, event = doc.get("token"), doc.get("event")
        source = event.get("source") if isinstance(event, dict) else None
        if not isinstance(token, str) or not token or not isinstance(source, str) or not source.startswith("user/"):
            return None
        user = source.removeprefix("user/")
        try:
            user_bus = await self.as_user(user, token)
        except HivebusError:
            # refused (a wrong, revoked or another's token): the gateway, given the token as
            # before, says exactly which ("the token is bob's, but this push is by alice")
            return None
        if user_bus is None:
            return None
        return user_bus, user, {k: v for k, v in doc.items() if k != "token"}

    async def serve(
        self, subject: str, handler: Callable[[bytes], Awaitable[bytes]], *, queue: str = ""
    ) -> Any:
        """Answer requests on ``subject`` with ``handler(body) -> reply body``.

        A handler exception becomes a JSON error reply; the service keeps serving.
        """

        async def by_body(_subject: str, body: bytes) -> bytes:
            return await handler(body)

        return await self.serve_subjects(subject, by_body, queue=queue)

    async def serve_subjects(
        self, subject: str, handler: Callable[[str, bytes], Awaitable[bytes]], *, queue: str = ""
    ) -> Any:
        """``serve`` with ``handler(subject, body)``: ``subject`` a wildcard, the handler told
        which subject each request came on (the server checked who may publish there)."""

        async def on_request(msg: Msg) -> None:
            try:
                body = await handler(msg.subject, msg.data)
            except Exception as exc:  # the service must survive any request
                log.warning("serve.failed", subject=subject, error=str(exc))
                body = json.dumps({"error": str(exc), "kind": type(exc).__name__}).encode()
            if msg.reply:
                await msg.respond(body)

        return await self.nc.subscribe(subject, queue=queue, cb=on_request)


async def _close_quietly(nc: NATS) -> None:
    try:
        if not nc.is_closed:
            await nc.close()
    except Exception as exc:
        log.debug("nats.close_failed", error=str(exc))


async def _unsubscribe_quietly(sub: Any) -> None:
    try:
        await sub.unsubscribe()
    except Exception as exc:
        log.debug("nats.unsubscribe_failed", error=str(exc))


def hub_tls(settings: Settings, credential: Credential | None = None) -> ssl.SSLContext | None:
    """The TLS context for the hub: the CA ``credential`` carries, else ``HIVEBUS_TLS_CA`` or this
    machine's own hub CA (``Settings.tls_ca_file``); None: plain NATS."""
    if credential is not None and credential.ca is not None:
        return credential.tls_context()
    ca = settings.tls_ca_file()
    return tls_context_from(ca) if ca is not None else None


def tls_context_from(ca_file: Path) -> ssl.SSLContext:
    """A client context trusting only the hub's CA in ``ca_file`` (``HIVEBUS_TLS_CA``)."""
    from hivebus.auth.tls import client_context

    try:
        return client_context(Path(ca_file).read_text())
    except OSError as exc:
        raise SetupError(f"HIVEBUS_TLS_CA: cannot read {ca_file} ({exc.strerror})",
                         hint="copy the hub's <data-dir>/tls/ca.pem here, or use a credential from `hivebus node add`") from None
