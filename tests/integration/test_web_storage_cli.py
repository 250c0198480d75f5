"""``hivebus storage`` (the CLI mirror) against a real ``hivebus web`` on a real nats-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hivebus.bus.server import NatsServer, free_port
from tests.integration.test_web import WebProcess, web_process
from tests.integration.test_web_storage import tokens

pytestmark = pytest.mark.integration
__all__ = ["tokens"]  # the fixture


@pytest.fixture
def web(nats_server: NatsServer, tokens: dict[str, str], tmp_path: Path) -> Iterator[WebProcess]:
    with web_process(nats_server.url, tmp_path) as running:
        yield running


def storage(web: WebProcess, token: str | None, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HIVEBUS_API_URL": web.url, "XDG_CONFIG_HOME": str(cwd / "config"), "COLUMNS": "200"}
    env.pop("HIVEBUS_TOKEN", None)
    if token:
        env["HIVEBUS_TOKEN"] = token
    proc = subprocess.run([sys.executable, "-m", "hivebus", "storage", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"hivebus storage {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_the_slides_session_through_the_cli(web: WebProcess, tokens: dict[str, str], tmp_path: Path) -> None:
    alice, bob = tokens["alice"], tokens["bob"]
    picture = tmp_path / "camera_picture1.jpg"
    picture.write_bytes(os.urandom(200_000))
    created = json.loads(storage(web, alice, "bucket", "create", "--datatype", "training-data", "--name", "camera7",
                                 "--json", cwd=tmp_path).stdout)
    assert created["owner"] == "alice" and created["type"] == "training-data"
    storage(web, alice, "put", "camera7", str(picture), cwd=tmp_path)
    assert json.loads(storage(web, alice, "ls", "camera7", "--json", cwd=tmp_path).stdout) == ["camera_picture1.jpg"]

    refused = storage(web, bob, "get", "camera7", "camera_picture1.jpg", "-o", "copy.jpg", cwd=tmp_path, check=False)
    assert refused.returncode == 1 and "HTTP 404" in refused.stderr  # bob cannot see the bucket by its name
    by_id = storage(web, bob, "get", created["id"], "camera_picture1.jpg", "-o", "copy.jpg", cwd=tmp_path, check=False)
    assert by_id.returncode == 1 and "HTTP 403" in by_id.stderr and "Traceback" not in by_id.stderr
    assert not (tmp_path / "copy.jpg").exists()

    storage(web, alice, "grant", "camera7", "READ", "--to", "bob", cwd=tmp_path)
    storage(web, bob, "get", created["id"], "camera_picture1.jpg", "-o", "copy.jpg", cwd=tmp_path)
    assert (tmp_path / "copy.jpg").read_bytes() == picture.read_bytes()
    acl = json.loads(storage(web, alice, "bucket", "show", "camera7", "--permissions", "--json", cwd=tmp_path).stdout)
    assert {"granteeType": "USER", "grantee": "bob", "permission": "READ"} in acl

    storage(web, alice, "grant", "camera7", "READ", "--public", cwd=tmp_path)
    storage(web, None, "get", created["id"], "camera_picture1.jpg", "-o", "anon.jpg", cwd=tmp_path)
    assert (tmp_path / "anon.jpg").read_bytes() == picture.read_bytes()
    storage(web, alice, "revoke", "camera7", "--public", cwd=tmp_path)
    anonymous = storage(web, None, "get", created["id"], "camera_picture1.jpg", cwd=tmp_path, check=False)
    assert anonymous.returncode == 1 and "HTTP 401" in anonymous.stderr

    storage(web, alice, "rm", "camera7", "camera_picture1.jpg", cwd=tmp_path)
    assert json.loads(storage(web, alice, "ls", "camera7", "--json", cwd=tmp_path).stdout) == []
    storage(web, alice, "bucket", "rm", "camera7", cwd=tmp_path)
    assert json.loads(storage(web, alice, "bucket", "list", "--json", cwd=tmp_path).stdout) == []


def test_no_api_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "HIVEBUS_API_URL": f"http://127.0.0.1:{free_port()}", "HIVEBUS_TOKEN": "hbt_x"}  # nothing there
    proc = subprocess.run([sys.executable, "-m", "hivebus", "storage", "bucket", "list"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "cannot reach the web API" in proc.stderr and "Traceback" not in proc.stderr
