"""The web dashboard at ``/``: static files (``web/static``), no build step.

``GET /`` is ``index.html``; ``GET /ui/<file>`` its scripts and styles. The page is vanilla
JavaScript and SVG that reads the JSON API (``/api/v1/...``) with the viewer's token, and
follows ``/api/v1/stream`` for live updates. Only the files shipped in ``static/`` are served
(the names listed at import), so no request path reaches the file system.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from hivebus.web.errors import ApiError

router = APIRouter(include_in_schema=False)

TYPES: Final = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}


STATIC: Final = resources.files("hivebus.web") / "static"
FILES: Final = frozenset(f.name for f in STATIC.iterdir() if f.is_file() and f.name.endswith(tuple(TYPES)))
NO_CACHE: Final = {"Cache-Control": "no-cache"}


def _file(name: str) -> Response:
    if name not in FILES:
        raise ApiError(404, f"the dashboard has no file {name!r}", "open / for the dashboard")
    kind = TYPES["." + name.rsplit(".", 1)[-1]]
    return Response((STATIC / name).read_bytes(), media_type=kind, headers=NO_CACHE)


@router.get("/", response_class=HTMLResponse)
async def index() -> Response:
    return _file("index.html")


@router.get("/ui/{name}")
async def static_file(name: str) -> Response:
    return _file(name)
