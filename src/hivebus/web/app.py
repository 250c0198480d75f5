"""The HTTP face of the platform: ``create_app(WebConfig)`` -> a FastAPI app on the bus.

The NATS connection is FastStream's (``faststream.nats.fastapi.NatsRouter``): the router's
lifespan connects its broker when the app starts and drains it when it stops; hivebus's own
``Bus`` wraps that one connection (``bus.nc`` is the broker's), so HTTP routes, FastStream
subscribers and hivebus's readers share it. OpenAPI is at ``/docs`` (``/openapi.json``),
FastStream's AsyncAPI of the platform's subjects (``web.asyncapi``) at ``/asyncapi``.

Routes: ``web.data`` (``POST /api/v1/query``, ``POST /api/v1/sql``), ``web.buckets`` (the
object store, sage-storage-api's shape), ``web.stream`` (``GET /api/v1/stream``,
Server-Sent Events), ``web.read`` (``GET /api/v1/nodes``, ``/jobs``, ``/apps``,
``/dead-letters``: the views as paged JSON). Errors are JSON (``web.errors``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Final

import structlog
from fastapi import Depends, FastAPI, Request
from faststream.nats.fastapi import NatsRouter
from faststream.security import BaseSecurity

from hivebus.auth.credentials import Credential
from hivebus.bus.client import Bus
from hivebus.config import Settings
from hivebus.web.catalog import Access
from hivebus.web.errors import BodyLimit, install
from hivebus.web.identity import Identities
from hivebus.web.storage import Storage

log = structlog.get_logger()

MiB: Final = 1024 * 1024
API: Final = "/api/v1"


@dataclass(frozen=True, kw_only=True)
class WebConfig:
    settings: Settings
    max_body: int = 1 * MiB  # JSON bodies (queries, ACL changes)
    max_upload: int = 8 * 1024 * MiB  # one object
    query_limit: int = 1_000_000  # readings returned by /api/v1/query

    def __post_init__(self) -> None:
        from hivebus.errors import SetupError

        if self.max_body < 1 or self.max_upload < 1:
            raise SetupError("the body and upload limits must be at least 1 byte")


@dataclass
class Face:
    """What the routes use, built once the broker is connected."""

    config: WebConfig
    bus: Bus
    identities: Identities
    storage: Storage
    access: Access


def face(request: Request) -> Face:
    found: Face | None = getattr(request.app.state, "face", None)
    if found is None:  # only between start-up and the broker's connection
        from hivebus.web.errors import ApiError

        raise ApiError(503, "the service is starting", "try again in a moment")
    return found


WebFace = Annotated[Face, Depends(face)]


def nats_router(settings: Settings) -> NatsRouter:
    """FastStream's router, connecting as this machine's service identity (if it has one)."""
    from faststream.nats.security import NatsUserPassword

    from hivebus.auth.callout import public_connect_options
    from hivebus.bus.client import hub_tls

    options: dict[str, Any] = {}
    security: BaseSecurity | None = None
    creds = settings.credentials_file()
    credential = Credential.load(creds) if creds is not None else None
    tls = hub_tls(settings, credential)
    # as Bus.connect: with the hub's CA, TLS first (auth.tls)
    tls_options: dict[str, Any] = {"ssl_context": tls, "tls_handshake_first": True} if tls is not None else {}
    if credential is not None:
        security = NatsUserPassword(credential.user, credential.password, **tls_options)
        options["inbox_prefix"] = credential.inbox_prefix
    else:  # the public identity, with an inbox of its own (auth.callout)
        public = public_connect_options()
        security = NatsUserPassword(public["user"], public["password"], **tls_options)
        options["inbox_prefix"] = public["inbox_prefix"]
    servers = [s.strip() for s in settings.nats_url.split(",")]
    return NatsRouter(
        servers, name="hivebus-web", security=security, max_reconnect_attempts=-1, reconnect_time_wait=1,
        pending_size=64 * MiB, logger=None, schema_url="/asyncapi", **options,
    )


def create_app(config: WebConfig) -> FastAPI:
    from hivebus.web import buckets, dashboard, data, read, stream
    from hivebus.web.asyncapi import declare_subjects

    router = nats_router(config.settings)
    declare_subjects(router)  # documented at /asyncapi

    @router.after_startup
    async def _connected(app: FastAPI) -> None:
        bus = Bus(router.broker.connection, settings=config.settings)
        app.state.face = Face(config=config, bus=bus, identities=Identities(bus), storage=Storage(bus),
                             access=Access(bus))
        log.info("web.connected", nats=config.settings.nats_url)

    app = FastAPI(
        title="hivebus",
        summary="The HTTP face of hivebus: Sage's data API, the SAGE object store, live streams.",
        version="1",
        docs_url="/docs",
    )
    app.include_router(router)
    app.include_router(data.router, prefix=API)
    app.include_router(buckets.router, prefix=API)
    app.include_router(stream.router, prefix=API)
    app.include_router(read.router, prefix=API)
    app.include_router(dashboard.router)  # the web dashboard at /
    install(app)
    app.add_middleware(BodyLimit, limit=config.max_body, uploads=config.max_upload)
    return app
