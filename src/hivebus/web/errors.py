"""Every HTTP error is JSON ``{"error": ..., "hint": ...}`` with the right status, never a traceback.

``ApiError`` is what a route raises on purpose; ``install`` maps hivebus's own errors (a bad
query is 400, a refused statement 403, a timeout 504...), FastAPI's validation errors (422)
and anything unexpected (500, logged, with no detail for the client) onto that shape.
``BodyLimit`` refuses a request body past a size (413) before a route reads it, whether the
client announced its length or streams it chunked.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hivebus.errors import (
    BusError,
    ConnectError,
    HivebusError,
    NoAnswer,
    QueryError,
    QueryRefused,
    QueryTimeout,
    RequestTimeout,
    SchemaError,
    Unauthorized,
)

log = structlog.get_logger()
LIMIT_HINT = "send less, or raise the server's limit (hivebus web --max-body / --max-upload)"


class ApiError(Exception):
    def __init__(self, status: int, error: str, hint: str | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.hint = hint


def body(error: str, hint: str | None = None) -> dict[str, Any]:
    return {"error": error, "hint": hint}


def status_of(exc: HivebusError) -> int:
    if isinstance(exc, Unauthorized):
        return 401
    if isinstance(exc, QueryRefused):
        return 403
    if isinstance(exc, QueryTimeout):
        return 504
    if isinstance(exc, QueryError | SchemaError):
        return 400
    if isinstance(exc, RequestTimeout | NoAnswer | ConnectError | BusError):
        return 503
    return 400


def _message(exc: HivebusError) -> str:
    return Exception.__str__(exc)  # without the hint: it has its own field


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(body(exc.error, exc.hint), status_code=exc.status)

    @app.exception_handler(HivebusError)
    async def _hivebus(_: Request, exc: HivebusError) -> JSONResponse:
        return JSONResponse(body(_message(exc), exc.hint), status_code=status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
        return JSONResponse(body("; ".join(problems) or "invalid request", "see /docs for the request's shape"),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        hint = "see /docs for the routes" if exc.status_code in (404, 405) else None
        return JSONResponse(body(str(exc.detail), hint), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("web.unexpected", path=request.url.path, error=repr(exc))
        return JSONResponse(body("internal error", "the server log has the details"), status_code=500)


class BodyLimit:
    """Refuse bodies larger than ``limit`` bytes (``uploads`` bytes under ``upload_prefix``)."""

    def __init__(self, app: ASGIApp, *, limit: int, uploads: int, upload_prefix: str = "/api/v1/objects/") -> None:
        self.app = app
        self.limit = limit
        self.uploads = uploads
        self.upload_prefix = upload_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        upload = scope.get("method") == "PUT" and "/" in path.removeprefix(self.upload_prefix) and path.startswith(self.upload_prefix)
        limit = self.uploads if upload else self.limit
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    announced = int(value)
                except ValueError:
                    announced = 0
                if announced > limit:
                    await _too_large(send, limit)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # raised inside the route reading the body: a 413 by ``install``
                    raise ApiError(413, f"the request body is larger than {limit} bytes", LIMIT_HINT)
            return message

        await self.app(scope, counted, send)


async def _too_large(send: Send, limit: int) -> None:
    response = JSONResponse(body(f"the request body is larger than {limit} bytes", LIMIT_HINT), status_code=413)
    await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})
