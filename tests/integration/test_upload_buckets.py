"""Plugin uploads land in the node's ``upload-<node>`` bucket as storage facts (issue 16).

Real servers: a JetStream hub (with and without hub auth), a node-local nats-server, the
node's ``UploadService`` and the hub's upload service; the HTTP object store runs as a real
``hivebus web`` process and ``hivebus storage`` as a subprocess; the views come from a real
projector. Checked: the ``storage.bucket.created`` / ``storage.object.put`` /
``storage.acl.changed`` facts, the ``buckets`` / ``objects`` / ``bucket_permissions`` views,
the job submitter's READ and everyone else's 403, one fact for a put asked twice, and that a
node's credential reaches only its own bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from hivebus.auth.tokens import digest, new_token
from hivebus.bus.client import Bus
from hivebus.bus.publisher import Outgoing
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import EVENTS
from hivebus.edge.uploads import UploadService, _new_nuid
from hivebus.errors import PermissionDenied, UploadError
from hivebus.projections.client import query as sql_query
from hivebus.projections.runner import running as projecting
from hivebus.schemas.auth import UserAdded
from hivebus.schemas.envelope import Event
from hivebus.schemas.ses import JobScheduled, Placement
from hivebus.services.uploads import UploadDecider
from hivebus.web.objects import store_name
from tests.integration.test_auth import Hub
from tests.integration.test_auth import hub as auth_hub  # noqa: F401 - a fixture
from tests.integration.test_web import WebProcess, web_process

pytestmark = pytest.mark.integration

NODE = "W012"
BUCKET = f"upload-{NODE}"
TS = 1_800_000_000_000_000_000
JOB = "job-cam"


async def facts(bus: Bus, pattern: str = "evt.storage.>") -> list[Event]:
    return [e async for _, e in bus.events(EVENTS, filter_subjects=[pattern], stop_at_end=True)]


async def schedule(bus: Bus, job: str, user: str, node: str = NODE) -> None:
    """The scheduler's fact naming ``user`` as the job's submitter."""
    scheduled = JobScheduled(job_id=job, placements=[Placement(node=node, plugin="cam", bundle_id="acme/cam:1.0.0")],
                             policy="fit", user=user)
    await bus.publish(Event.new(scheduled, source="handler/ses", subject=job))


class Agent:
    """A node's upload service on its own local bus, shipping to ``hub``."""

    def __init__(self, local_url: str, hub: Bus, data_dir: Path, node: str = NODE) -> None:
        self.local_url, self.hub, self.data_dir, self.node = local_url, hub, data_dir, node
        self.outbox: list[Event] = []
        self._stop = asyncio.Event()

    async def __aenter__(self) -> Agent:
        self.nc = await nats.connect(self.local_url)
        self.service = UploadService(self.nc, self.data_dir, self.node, self.outbox.append, lambda: self.hub,
                                     retry_seconds=0.1, max_retry_seconds=0.5)
        self._task = asyncio.create_task(self.service.run(self._stop))
        await asyncio.wait_for(self.service.ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.wait_for(self._task, 10)
        await self.nc.close()

    async def upload(self, path: Path, **meta: str) -> dict[str, Any]:
        body = {"path": str(path), "meta": meta, "timestamp": TS, "keep": True}
        return json.loads((await self.nc.request("local.upload", json.dumps(body).encode(), timeout=10)).data)

    async def transferred(self, n: int, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while self.service.counters["transferred"] < n:
                await asyncio.sleep(0.05)


@pytest.fixture
async def hub(nats_server: NatsServer) -> AsyncIterator[Bus]:
    async with await Bus.connect(nats_server.url) as bus:
        await bus.ensure_streams()
        decider = await UploadDecider(bus).serve()
        try:
            yield bus
        finally:
            await decider.close()


@pytest.fixture
async def tokens(hub: Bus) -> dict[str, str]:
    made = {user: new_token() for user in ("alice", "bob")}
    for user, token in made.items():
        await hub.publish(Event.new(UserAdded(user=user, token_sha256=digest(token), by="admin"),
                                    source="user/admin", subject=user))
    return made


@pytest.fixture
def web(nats_server: NatsServer, tokens: dict[str, str], tmp_path: Path) -> Iterator[WebProcess]:
    with web_process(nats_server.url, tmp_path) as running:
        yield running


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HIVEBUS_LOG_LEVEL": "warning"}
    return subprocess.run([sys.executable, "-m", "hivebus", *args], capture_output=True, text=True, env=env, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)


async def test_a_nodes_uploads_are_objects_of_its_upload_bucket_readable_by_the_jobs_submitter(
    nats_server_factory, nats_server: NatsServer, hub: Bus, tokens: dict[str, str], web: WebProcess, tmp_path: Path,
) -> None:
    await schedule(hub, JOB, "alice")
    picture = os.urandom(300_000)  # three object-store chunks
    source = tmp_path / "frame.jpg"
    source.write_bytes(picture)
    async with Agent(nats_server_factory("local").url, hub, tmp_path / "agent") as agent:
        reply = await agent.upload(source, job=JOB, task="cam")
        key = f"{JOB}/cam/{TS}-frame.jpg"
        assert reply == {"ref": f"{BUCKET}/{key}"}
        await agent.transferred(1)
    [reading] = [e.data for e in agent.outbox]
    assert reading.name == "upload" and reading.value == f"{BUCKET}/{key}"  # the reading users see

    created, put, granted = await facts(hub)
    assert created.type == "storage.bucket.created" and created.source == "handler/storage"
    assert (created.data.bucket_id, created.data.name, created.data.type, created.data.owner) == (
        BUCKET, BUCKET, "upload", f"node-{NODE}")
    assert put.type == "storage.object.put" and put.data.key == key and put.data.size == len(picture)
    assert put.data.digest == f"sha256:{hashlib.sha256(picture).hexdigest()}" and put.data.by == f"node-{NODE}"
    assert put.data.content_type == "image/jpeg"
    assert granted.type == "storage.acl.changed"
    assert [(g.grantee, g.permission) for g in granted.data.acl] == [("alice", "READ")]
    store = await hub.js.object_store(store_name(BUCKET))
    assert (await store.get(key)).data == picture  # nats-py reads what the node and the hub wrote

    headers = {"alice": {"Authorization": f"sage {tokens['alice']}"}, "bob": {"Authorization": f"sage {tokens['bob']}"}}
    async with httpx.AsyncClient(base_url=f"{web.url}/api/v1", timeout=60) as http:
        got = await http.get(f"/objects/{BUCKET}/{key}", headers=headers["alice"])
        assert got.status_code == 200 and got.content == picture
        assert (await http.get(f"/objects/{BUCKET}/{JOB}/cam/", headers=headers["alice"])).json() == [f"{TS}-frame.jpg"]
        refused = await http.get(f"/objects/{BUCKET}/{key}", headers=headers["bob"])
        assert refused.status_code == 403 and f"no READ on bucket {BUCKET}" in refused.json()["error"]
        assert (await http.get(f"/objects/{BUCKET}/{key}")).status_code == 401
        overwrite = await http.put(f"/objects/{BUCKET}/{key}", content=b"x", headers=headers["alice"])
        assert overwrite.status_code == 403  # READ only: the node alone writes its bucket

    listed = await asyncio.to_thread(cli, "storage", "ls", BUCKET, "-r", "--api", web.url, "--token", tokens["alice"])
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == [key]
    denied = await asyncio.to_thread(cli, "storage", "ls", BUCKET, "--api", web.url, "--token", tokens["bob"])
    assert denied.returncode != 0 and "no READ on bucket" in denied.stdout + denied.stderr
    assert "Traceback" not in denied.stdout + denied.stderr

    async with projecting(hub, tmp_path / "views.duckdb") as projector:
        assert await projector.wait_for({EVENTS: await hub.last_seq(EVENTS)}, 30)
        buckets = (await sql_query(hub, "SELECT bucket_id, type, owner, public FROM buckets")).rows
        objects = (await sql_query(hub, "SELECT bucket_id, key, size, digest, put_by FROM objects")).rows
        grants = (await sql_query(hub, "SELECT grantee, permission, owner FROM bucket_permissions ORDER BY grantee")).rows
    assert buckets == [[BUCKET, "upload", f"node-{NODE}", False]]
    assert objects == [[BUCKET, key, len(picture), put.data.digest, f"node-{NODE}"]]
    assert grants == [["alice", "READ", False], [f"node-{NODE}", "FULL_CONTROL", True]]


async def test_a_put_asked_again_after_a_crash_is_one_object_and_one_fact(
    nats_server_factory, hub: Bus, tmp_path: Path
) -> None:
    """The node died after the hub recorded the file and before it marked it reported: it
    sends the chunks again and asks again; the hub answers as before and appends nothing."""
    source = tmp_path / "clip.wav"
    source.write_bytes(b"RIFF" + os.urandom(5000))
    async with Agent(nats_server_factory("local").url, hub, tmp_path / "agent") as agent:
        agent.hub = None  # type: ignore[assignment]  # offline while this test ships it by hand
        await agent.upload(source, job=JOB, task="audio")
        [staged] = agent.service.pending()
        store = await agent.service._open(hub)
        for _ in range(2):
            nuid = _new_nuid(hub)
            chunks = await agent.service._send_chunks(hub, store, staged, nuid)
            answer = await agent.service._ask(hub, {"op": "put", "key": staged.key, "nuid": nuid, "size": staged.size,
                                                    "chunks": chunks, "sha256": staged.sha256, "job": JOB})
            assert answer["digest"] == f"sha256:{staged.sha256}"
        agent.hub = hub
        await agent.transferred(1)  # its own pass asks a third time
    puts = await facts(hub, "evt.storage.object.put.>")
    assert len(puts) == 1
    info = await (await hub.js.object_store(store_name(BUCKET))).get_info(staged.key)
    stream = await hub.js.stream_info(f"OBJ_{store_name(BUCKET)}")
    assert info.size == staged.size and stream.state.messages == info.chunks + 1  # no orphaned chunks


async def test_an_attempt_cut_off_after_its_chunks_leaves_no_orphans(
    nats_server_factory, hub: Bus, tmp_path: Path
) -> None:
    """The chunks went out, then the hub's answer never came (here: its upload service is
    stopped): the next attempt names them, and the hub drops them."""
    source = tmp_path / "clip.wav"
    source.write_bytes(os.urandom(400_000))  # four chunks
    async with Agent(nats_server_factory("local").url, hub, tmp_path / "agent") as agent:
        agent.hub = None  # type: ignore[assignment]
        await agent.upload(source, task="audio")
        await agent.service._open(hub)
        # The hub's answer never comes: each attempt has sent its chunks by then.
        stopped = agent.service._ask

        async def no_answer(bus: Any, body: dict[str, Any]) -> dict[str, Any]:
            if body.get("op") == "put":
                raise UploadError("no answer")
            return await stopped(bus, body)

        agent.service._ask = no_answer  # type: ignore[method-assign]
        agent.hub = hub
        async with asyncio.timeout(30):  # a few attempts, each with its chunks and no answer
            while agent.service.counters["transfer_failures"] < 3:
                await asyncio.sleep(0.05)
        stream = await hub.js.stream_info(f"OBJ_{store_name(BUCKET)}")
        assert stream.state.messages >= 12  # sent, never an object
        agent.service._ask = stopped  # type: ignore[method-assign]
        await agent.transferred(1)
    [staged_key] = [e.data.key for e in await facts(hub, "evt.storage.object.put.>")]
    info = await (await hub.js.object_store(store_name(BUCKET))).get_info(staged_key)
    stream = await hub.js.stream_info(f"OBJ_{store_name(BUCKET)}")
    assert info.chunks == 4 and stream.state.messages == info.chunks + 1  # every earlier attempt's are gone


async def test_chunks_that_do_not_hash_to_the_digest_are_refused_and_dropped(
    nats_server_factory, hub: Bus, tmp_path: Path
) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(b"the bytes the node has")
    async with Agent(nats_server_factory("local").url, hub, tmp_path / "agent") as agent:
        agent.hub = None  # type: ignore[assignment]  # offline: it keeps the file
        await agent.upload(source, task="t")
        [staged] = agent.service.pending()
        store = await agent.service._open(hub)
        nuid = _new_nuid(hub)
        chunks = await agent.service._send_chunks(hub, store, staged, nuid)
        with pytest.raises(Exception, match="the node sent 22 bytes sha256:0000"):
            await agent.service._ask(hub, {"op": "put", "key": staged.key, "nuid": nuid, "size": staged.size,
                                           "chunks": chunks, "sha256": "0" * 64})
    assert await facts(hub, "evt.storage.object.put.>") == []
    stream = await hub.js.stream_info(f"OBJ_{store_name(BUCKET)}")
    assert stream.state.messages == 0


async def test_under_hub_auth_a_node_ships_into_its_own_bucket_and_no_other(
    auth_hub: Hub, nats_server_factory, tmp_path: Path  # noqa: F811
) -> None:
    async with await Bus.connect(auth_hub.url, settings=auth_hub.service) as service:
        decider = await UploadDecider(service).serve()
        try:
            async with await auth_hub.connect(auth_hub.nodes["W001"]) as w1:
                source = tmp_path / "frame.jpg"
                source.write_bytes(b"\xff\xd8" + os.urandom(200_000))
                async with Agent(nats_server_factory("local").url, w1, tmp_path / "agent", node="W001") as agent:
                    assert (await agent.upload(source, task="cam"))["ref"].startswith("upload-W001/")
                    await agent.transferred(1)
                [put] = [e.data for e in await facts(service, "evt.storage.object.put.>")]
                assert put.bucket_id == "upload-W001" and put.size == source.stat().st_size
                # W002's bucket exists; W001 can neither write its chunks nor ask for it.
                await decider.open("W002")
                other = f"$O.{store_name('upload-W002')}.C.abc"
                with pytest.raises(PermissionDenied):
                    await w1.publish_raw_many([Outgoing(other, b"x", "x1")], timeout=2.0, retries=0)
                with pytest.raises(Exception):  # noqa: B017 - the server drops it: no reply
                    await w1.nc.request("hivebus.storage.upload.W002", b'{"op": "open"}', timeout=2.0)
                # Nor publish an object's info into its own store: only the hub makes objects.
                with pytest.raises(PermissionDenied):
                    await w1.publish_raw_many([Outgoing(f"$O.{store_name('upload-W001')}.M.eA", b"{}", "m1")],
                                              timeout=2.0, retries=0)
        finally:
            await decider.close()


async def test_the_hubs_handlers_serve_the_upload_service(nats_server: NatsServer) -> None:
    """``hivebus up`` and ``hivebus handlers`` run ``run_handlers``: the nodes' upload service is in it."""
    from hivebus.config import Settings
    from hivebus.services import run_handlers

    settings = Settings(nats_url=nats_server.url)
    async with await Bus.connect(nats_server.url, settings=settings) as bus:
        await bus.ensure_streams()
        stop = asyncio.Event()
        task = asyncio.create_task(run_handlers(settings, bus, stop))
        try:
            reply: dict[str, Any] = {}
            async with asyncio.timeout(30):
                while "store" not in reply:
                    with contextlib.suppress(Exception):
                        reply = json.loads(await bus.request("hivebus.storage.upload.W099", {"op": "open"}, timeout=2))
                    await asyncio.sleep(0.1)
            assert reply == {"bucket_id": "upload-W099", "store": "sage-upload-W099"}
            bad = json.loads(await bus.request("hivebus.storage.upload.W099", {"op": "put", "key": "a/../b", "nuid": "x",
                                                                               "size": 1, "chunks": 1, "sha256": "0"}))
            assert bad["kind"] == "invalid" and "'.' or '..' part" in bad["error"]
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
        [created] = await facts(bus)
        assert created.data.owner == "node-W099" and created.data.type == "upload"


async def test_a_full_upload_bucket_refuses_new_files_and_the_node_keeps_them(
    nats_server_factory, nats_server: NatsServer, tmp_path: Path
) -> None:
    """HIVEBUS_UPLOAD_BUCKET_MAX_BYTES: past it JetStream refuses the chunks (discard new); the
    stored object stays whole, the new file waits on the node and goes once there is room."""
    async with await Bus.connect(nats_server.url) as hub:
        await hub.ensure_streams()
        decider = await UploadDecider(hub, max_bytes=300_000).serve()
        first, second = tmp_path / "a.bin", tmp_path / "b.bin"
        first.write_bytes(os.urandom(200_000))
        second.write_bytes(os.urandom(200_000))
        try:
            async with Agent(nats_server_factory("local").url, hub, tmp_path / "agent") as agent:
                await agent.upload(first, task="t")
                await agent.transferred(1)
                reply = await agent.upload(second, task="u")
                assert "ref" in reply
                async with asyncio.timeout(30):
                    while agent.service.counters["transfer_failures"] < 2:
                        await asyncio.sleep(0.05)
                assert len(agent.service.pending()) == 1  # kept on the node
                assert [p.key for p in [e.data for e in await facts(hub, "evt.storage.object.put.>")]] == [
                    f"nojob/t/{TS}-a.bin"]
                store = await hub.js.object_store(store_name(BUCKET))
                assert (await store.get(f"nojob/t/{TS}-a.bin")).data == first.read_bytes()
                await decider.close()
                decider = await UploadDecider(hub, max_bytes=0).serve()  # the operator lifts the limit
                await decider.open(NODE)
                await agent.transferred(2, timeout=90)
        finally:
            await decider.close()
        assert len(await facts(hub, "evt.storage.object.put.>")) == 2
