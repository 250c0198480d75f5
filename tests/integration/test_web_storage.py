"""The SAGE slides' object-store session over real HTTP against a real ``hivebus web``.

Users and tokens are ``auth.user.added`` facts on a real nats-server; the web process folds
them (as the command gateway does), decides storage commands with ``handlers.storage`` and
streams bytes into JetStream object stores. Everything is checked through HTTP and the log.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hivebus.auth.tokens import digest, new_token
from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import EVENTS
from hivebus.schemas import codec
from hivebus.schemas.auth import UserAdded
from hivebus.schemas.envelope import Event
from tests.integration.test_web import WebProcess, web_process

pytestmark = pytest.mark.integration

USERS = ("alice", "bob")


@pytest.fixture
async def tokens(nats_server: NatsServer) -> dict[str, str]:
    made = {user: new_token() for user in USERS}
    async with await Bus.connect(nats_server.url) as bus:
        await bus.ensure_streams()
        for user, token in made.items():
            await bus.publish(Event.new(UserAdded(user=user, token_sha256=digest(token), by="admin"),
                                        source="user/admin", subject=user))
    return made


@pytest.fixture
def web(nats_server: NatsServer, tokens: dict[str, str], tmp_path: Path) -> Iterator[WebProcess]:
    with web_process(nats_server.url, tmp_path, "--max-upload", str(64 * 1024 * 1024)) as running:
        yield running


def client(web: WebProcess, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"sage {token}"} if token else {}
    return httpx.Client(base_url=f"{web.url}/api/v1", headers=headers, timeout=60)


async def storage_facts(url: str) -> list[str]:
    async with await Bus.connect(url) as bus:
        return [codec.decode(m.data).type
                async for batch in bus.read(EVENTS, filter_subjects=["evt.storage.>"], stop_at_end=True)
                for m in batch]


async def test_the_slides_session(nats_server: NatsServer, web: WebProcess, tokens: dict[str, str]) -> None:
    picture = os.urandom(300_000)  # more than two object-store chunks
    with client(web, tokens["alice"]) as alice, client(web, tokens["bob"]) as bob, client(web) as anyone:
        created = alice.post("/objects", params={"type": "training-data", "name": "camera7"})
        assert created.status_code == 200, created.text
        bucket = created.json()
        assert bucket["name"] == "camera7" and bucket["owner"] == "alice" and bucket["type"] == "training-data"
        bucket_id = bucket["id"]

        put = alice.put(f"/objects/{bucket_id}/", files={"file": ("camera_picture1.jpg", picture, "image/jpeg")})
        assert put.status_code == 200, put.text
        assert put.json()["key"] == "camera_picture1.jpg" and put.json()["size"] == len(picture)
        assert alice.get(f"/objects/{bucket_id}/").json() == ["camera_picture1.jpg"]
        assert alice.get("/objects/camera7").json()["id"] == bucket_id  # by name too
        got = alice.get(f"/objects/{bucket_id}/camera_picture1.jpg")
        assert got.status_code == 200 and got.content == picture
        assert got.headers["content-type"] == "image/jpeg"

        assert bob.get(f"/objects/{bucket_id}/camera_picture1.jpg").status_code == 403
        assert anyone.get(f"/objects/{bucket_id}/camera_picture1.jpg").status_code == 401
        assert bob.get("/objects").json() == []

        grant = {"granteeType": "USER", "grantee": "bob", "permission": "READ"}
        as_curl_sends_it = {"content-type": "application/x-www-form-urlencoded"}  # curl -d '{...}'
        granted = alice.put(f"/objects/{bucket_id}", params={"permissions": ""}, content=json.dumps(grant),
                            headers=as_curl_sends_it)
        assert granted.status_code == 200 and granted.json() == grant
        read = bob.get(f"/objects/{bucket_id}/camera_picture1.jpg")
        assert read.status_code == 200 and read.content == picture
        assert [b["id"] for b in bob.get("/objects").json()] == [bucket_id]
        no_write = bob.put(f"/objects/{bucket_id}/mine.jpg", content=b"x")
        assert no_write.status_code == 403 and "WRITE" in no_write.json()["error"]
        assert bob.put(f"/objects/{bucket_id}", params={"permissions": ""}, json=grant).status_code == 403
        acl = alice.get(f"/objects/{bucket_id}", params={"permissions": ""}).json()
        assert {"granteeType": "USER", "grantee": "bob", "permission": "READ"} in acl
        assert {"granteeType": "USER", "grantee": "alice", "permission": "FULL_CONTROL"} in acl

        public = {"granteeType": "GROUP", "grantee": "AllUsers", "permission": "READ"}
        assert alice.put(f"/objects/{bucket_id}", params={"permissions": ""}, json=public).status_code == 200
        anonymous = anyone.get(f"/objects/{bucket_id}/camera_picture1.jpg")
        assert anonymous.status_code == 200 and anonymous.content == picture
        not_writable = alice.put(f"/objects/{bucket_id}", params={"permissions": ""},
                                 json={**public, "permission": "WRITE"})
        assert not_writable.status_code == 400 and "READ only" in not_writable.json()["error"]

        revoked = alice.delete(f"/objects/{bucket_id}", params={"permissions": "", "grantee": "GROUP:AllUsers"})
        assert revoked.status_code == 200
        assert anyone.get(f"/objects/{bucket_id}/camera_picture1.jpg").status_code == 401
        alice.delete(f"/objects/{bucket_id}", params={"permissions": "", "grantee": "USER:bob:READ"})
        assert bob.get(f"/objects/{bucket_id}/camera_picture1.jpg").status_code == 403

        assert alice.delete(f"/objects/{bucket_id}/camera_picture1.jpg").status_code == 200
        assert alice.get(f"/objects/{bucket_id}/camera_picture1.jpg").status_code == 404
        assert bob.delete(f"/objects/{bucket_id}").status_code == 403
        assert alice.delete(f"/objects/{bucket_id}").json() == {"deleted": [bucket_id]}
        assert alice.get(f"/objects/{bucket_id}").status_code == 404
    facts = await storage_facts(nats_server.url)
    assert facts[0] == "storage.bucket.created" and facts[-1] == "storage.bucket.deleted"
    assert {"storage.object.put", "storage.acl.changed", "storage.object.deleted", "storage.command.rejected"} <= set(facts)


def test_folders_prefixes_and_a_large_streamed_file(web: WebProcess, tokens: dict[str, str]) -> None:
    big = os.urandom(20 * 1024 * 1024 + 17)
    with client(web, tokens["alice"]) as alice:
        bucket_id = alice.post("/objects", params={"type": "model", "name": "yolo"}).json()["id"]
        for key in ("weights/v1/model.pt", "weights/v2/model.pt", "README.md"):
            assert alice.put(f"/objects/{bucket_id}/{key}", content=key.encode()).status_code == 200
        mib = 1 << 20
        pieces = iter([big[i:i + mib] for i in range(0, len(big), mib)])  # sent chunked, never whole
        assert alice.put(f"/objects/{bucket_id}/big.bin", content=pieces).status_code == 200
        assert alice.get(f"/objects/{bucket_id}/").json() == ["README.md", "big.bin", "weights/"]
        assert alice.get(f"/objects/{bucket_id}/weights/").json() == ["v1/", "v2/"]
        assert alice.get(f"/objects/{bucket_id}/weights/", params={"recursive": ""}).json() == [
            "weights/v1/model.pt", "weights/v2/model.pt"]
        assert alice.get(f"/objects/{bucket_id}/weights/v2/model.pt").content == b"weights/v2/model.pt"
        sha = hashlib.sha256()
        with alice.stream("GET", f"/objects/{bucket_id}/big.bin") as response:
            assert response.status_code == 200 and int(response.headers["content-length"]) == len(big)
            for chunk in response.iter_bytes():
                sha.update(chunk)
        assert sha.hexdigest() == hashlib.sha256(big).hexdigest()


def test_bad_requests_are_refused_with_reasons(web: WebProcess, tokens: dict[str, str]) -> None:
    with client(web, tokens["alice"]) as alice, client(web) as anyone, client(web, "hbt_not-a-token") as stranger:
        assert anyone.post("/objects", params={"type": "model"}).status_code == 401
        unknown = stranger.get("/objects")
        assert unknown.status_code == 401 and "hbt_not-a-token" not in unknown.text
        assert alice.post("/objects", params={"type": "nonsense"}).status_code == 422
        assert alice.post("/objects").status_code == 400
        bucket_id = alice.post("/objects", params={"type": "training-data", "name": "b"}).json()["id"]
        traversal = alice.put(f"/objects/{bucket_id}/a/%2e%2e/etc/passwd", content=b"x")
        assert traversal.status_code == 400 and "'..'" in traversal.json()["error"]
        too_big = alice.put(f"/objects/{bucket_id}/huge.bin", content=iter([b"x" * (1 << 20)] * 65))
        assert too_big.status_code == 413
        assert alice.get(f"/objects/{bucket_id}/").json() == []  # nothing of it kept
        assert alice.get("/objects/no-such-bucket/").status_code == 404
        assert alice.put(f"/objects/{bucket_id}", params={"permissions": ""}, json={"grantee": "bob"}).status_code == 422
        assert alice.delete(f"/objects/{bucket_id}", params={"permissions": "", "grantee": "bob"}).status_code == 400


async def test_a_refused_overwrite_keeps_the_older_object(nats_server: NatsServer, web: WebProcess,
                                                           tokens: dict[str, str]) -> None:
    """Bob's WRITE is revoked while his overwrite streams in: refused, and Alice's file is intact."""
    original = os.urandom(200_000)
    streaming, revoked = threading.Event(), threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b"y" * 150_000
        streaming.set()
        assert revoked.wait(30)
        yield b"y" * 150_000

    with client(web, tokens["alice"]) as alice, client(web, tokens["bob"]) as bob:
        bucket_id = alice.post("/objects", params={"type": "training-data", "name": "shared"}).json()["id"]
        assert alice.put(f"/objects/{bucket_id}/model.bin", content=original).status_code == 200
        write = {"granteeType": "USER", "grantee": "bob", "permission": "WRITE"}
        assert alice.put(f"/objects/{bucket_id}", params={"permissions": ""}, json=write).status_code == 200
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            overwrite = pool.submit(bob.put, f"/objects/{bucket_id}/model.bin", content=slow_body())
            assert streaming.wait(30)
            gone = alice.delete(f"/objects/{bucket_id}", params={"permissions": "", "grantee": "USER:bob:WRITE"})
            assert gone.status_code == 200
            revoked.set()
            refused = overwrite.result(60)
        assert refused.status_code == 403 and "WRITE" in refused.json()["error"]
        kept = alice.get(f"/objects/{bucket_id}/model.bin")
        assert kept.status_code == 200 and kept.content == original
        assert kept.headers["etag"] == f'"sha256:{hashlib.sha256(original).hexdigest()}"'

        before = (await storage_facts(nats_server.url)).count("storage.command.rejected")
        no_write = bob.put(f"/objects/{bucket_id}/other.bin", content=b"x")  # refused before a byte is read
        assert no_write.status_code == 403 and no_write.json()["hint"]
    facts = await storage_facts(nats_server.url)
    assert facts.count("storage.command.rejected") == before + 1
    async with await Bus.connect(nats_server.url) as bus:
        store = await bus.js.object_store(f"sage-{bucket_id}")
        info = await store.get_info("model.bin")
        assert info.size == len(original)
        stream = await bus.js.stream_info(f"OBJ_sage-{bucket_id}")
        assert stream.state.messages == 2 + 1 + 0  # the original's two chunks and its info; the refused chunks purged
