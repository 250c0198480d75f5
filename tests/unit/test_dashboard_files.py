"""The dashboard's files as the web app serves them (no browser, no bus: web/dashboard.py's router)."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.testclient import TestClient

from hivebus.web import dashboard
from hivebus.web.errors import install


def client() -> TestClient:
    app = FastAPI()
    app.include_router(dashboard.router)
    install(app)
    return TestClient(app)


def test_the_index_and_every_file_it_loads_are_served_with_their_types() -> None:
    web = client()
    index = web.get("/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    wanted = re.findall(r'(?:src|href)="/ui/([^"]+)"', index.text)
    assert sorted(wanted) == ["app.js", "style.css"]
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        answer = web.get(f"/ui/{name}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(kind)
        assert answer.content == (dashboard.STATIC / name).read_bytes()


def test_only_the_shipped_files_are_served() -> None:
    web = client()
    for path in ("/ui/dashboard.py", "/ui/..%2Fdashboard.py", "/ui/%2e%2e%2fapp.py", "/ui/"):
        answer = web.get(path)
        assert answer.status_code == 404, path
        assert "error" in answer.json()
    assert web.get("/ui/dashboard.py").json()["error"] == "the dashboard has no file 'dashboard.py'"


def test_the_pages_stay_out_of_the_api_docs() -> None:
    app = FastAPI()
    app.include_router(dashboard.router)
    assert "/" not in app.openapi()["paths"]
