"""Uploads: a plugin's file accepted on the node, kept while offline, shipped to the node's
``upload-<node>`` bucket on the hub when online, recorded there as ``storage.object.put`` (by the
hub's upload service) and reported as an ``upload`` reading.

Real servers: one nats-server as the node-local bus, one JetStream hub; plugins run through
the process executor. The outbox is a list here (the agent's outbox is tested with the agent).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from hivebus.bus.client import Bus
from hivebus.edge.executors import Limits, RunSpec, make_executor
from hivebus.edge.uploads import UploadService
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event
from hivebus.schemas.ids import new_ulid
from hivebus.schemas.storage import ObjectPut
from hivebus.services.uploads import UploadDecider
from hivebus.web.objects import store_name

pytestmark = pytest.mark.integration

NODE = "W012"
BUCKET = f"upload-{NODE}"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"
TS = 1_800_000_000_000_000_000


class Node:
    """The pieces of an agent an UploadService needs, with the hub switchable on and off."""

    def __init__(self, local_url: str, hub: Bus | None, data_dir: Path, **options: Any) -> None:
        self.local_url, self.hub, self.data_dir, self.options = local_url, hub, data_dir, options
        self.online = True
        self.outbox: list[Event] = []
        self.service: UploadService | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.nc: Any = None

    async def append(self, event: Event) -> None:
        self.outbox.append(event)

    async def start(self) -> UploadService:
        self.nc = await nats.connect(self.local_url, name="test-agent")
        self.service = UploadService(
            self.nc,
            self.data_dir,
            NODE,
            self.append,
            lambda: self.hub if self.online else None,
            retry_seconds=0.1,
            max_retry_seconds=0.5,
            **self.options,
        )
        self._stop.clear()
        self._task = asyncio.create_task(self.service.run(self._stop))
        await asyncio.wait_for(self.service.ready.wait(), 10)
        return self.service

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)
        await self.nc.close()

    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = await self.nc.request("local.upload", json.dumps(body).encode(), timeout=10)
        return json.loads(reply.data)

    async def transferred(self, n: int, timeout: float = 30) -> None:
        assert self.service is not None
        async with asyncio.timeout(timeout):
            while self.service.counters["transferred"] < n:
                await asyncio.sleep(0.05)

    async def reports(self) -> tuple[list[ObjectPut], list[Reading]]:
        """The hub's ``storage.object.put`` facts and the node's ``upload`` readings."""
        assert self.hub is not None
        puts = [e.data for _, e in [x async for x in self.hub.events("EVENTS", stop_at_end=True,
                                                                     filter_subjects=["evt.storage.object.put.>"])]]
        readings = [e.data for e in self.outbox if isinstance(e.data, Reading)]
        return puts, readings


@pytest.fixture
async def hub(nats_server_factory) -> AsyncIterator[Bus]:
    server = nats_server_factory("hub")
    bus = await Bus.connect(server.url)
    await bus.ensure_streams()
    decider = await UploadDecider(bus).serve()
    bus.server = server  # type: ignore[attr-defined]
    yield bus
    await decider.close()
    await bus.close()


@pytest.fixture
async def node(nats_server_factory, hub: Bus, tmp_path: Path) -> AsyncIterator[Node]:
    local = nats_server_factory("local")
    n = Node(local.url, hub, tmp_path / "agent")
    await n.start()
    yield n
    await n.stop()


async def object_bytes(hub: Bus, key: str) -> bytes:
    store = await hub.js.object_store(store_name(BUCKET))
    return (await store.get(key)).data


def plugin_spec(
    local_url: str,
    *,
    bundle: str = "waggle/plugin-snapshot:0.1.0",
    task: str = "snapshot",
    code: str | None = None,
    env: dict[str, str] | None = None,
) -> RunSpec:
    return RunSpec(
        run_id=new_ulid(),
        node=NODE,
        job_id="job-cam",
        plugin=task,
        bundle_id=bundle,
        image=f"registry.sagecontinuum.org/{bundle}",
        command=("python3", "-c", textwrap.dedent(code)) if code else (),
        env={"HIVEBUS_LOCAL_BUS": local_url, "HIVEBUS_VSN": NODE, **(env or {})},
        limits=Limits(memory_bytes=256 * 2**20, wall_seconds=60),
    )


# --- the path of a plugin's file -------------------------------------------------------------


async def test_a_plugins_upload_reaches_the_hub_object_store_and_is_reported(
    node: Node, hub: Bus
) -> None:
    executor = make_executor("process", plugin_path=[EXAMPLES])
    handle = await executor.start(plugin_spec(node.local_url))
    result = await asyncio.wait_for(executor.wait(handle), 60)
    assert result.state == "completed", result.log_tail
    await node.transferred(1)
    (put,), (reading,) = await node.reports()
    assert reading.name == "upload" and reading.value == f"{BUCKET}/{put.key}"
    assert put.bucket_id == BUCKET
    assert put.key.startswith("job-cam/snapshot/") and put.key.endswith(".pgm")
    assert (
        reading.meta["filename"].startswith("snapshot-") and reading.meta["camera"] == "simulated"
    )
    for key in ("node", "vsn", "job", "task", "plugin"):
        assert reading.meta[key], key
    assert (
        reading.meta["task"] == "snapshot"
        and reading.meta["plugin"] == "waggle/plugin-snapshot:0.1.0"
    )
    data = await object_bytes(hub, put.key)
    assert data.startswith(b"P5\n64 48\n255\n") and len(data) == put.size
    assert put.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert put.content_type == "image/x-portable-graymap" and put.by == f"node-{NODE}"
    assert node.service is not None and node.service.pending() == []  # the node's copy is gone


async def test_files_wait_on_the_node_while_offline_and_go_when_online(
    node: Node, hub: Bus, tmp_path: Path
) -> None:
    node.online = False
    code = """
        from pathlib import Path
        from hivebus.plugin import Plugin

        with Plugin() as plugin:
            path = Path("sample.txt")
            path.write_bytes(b"recorded while the uplink was down")
            print(plugin.upload_file(path, meta={"kind": "sample"}, timestamp=1800000000000000000))
            print("source still there:", path.exists())
    """
    executor = make_executor("process")
    handle = await executor.start(
        plugin_spec(node.local_url, bundle="acme/sampler:1.0.0", task="sampler", code=code)
    )
    result = await asyncio.wait_for(executor.wait(handle), 60)
    assert result.state == "completed", result.log_tail
    assert result.log_tail[-2] == "None"  # pywaggle's upload_file returns nothing; the key is below
    assert result.log_tail[-1] == "source still there: False"  # keep=False: the node has it now
    assert node.service is not None
    (staged,) = node.service.pending()
    assert staged.data.read_bytes() == b"recorded while the uplink was down"
    await asyncio.sleep(0.3)  # several retry periods pass offline: nothing is sent or lost
    assert node.outbox == [] and len(node.service.pending()) == 1
    node.online = True
    await node.transferred(1)
    assert (
        await object_bytes(hub, f"job-cam/sampler/{TS}-sample.txt")
        == b"recorded while the uplink was down"
    )
    (put,), (reading,) = await node.reports()
    assert reading.timestamp == TS and reading.meta["kind"] == "sample"
    assert put.size == len(b"recorded while the uplink was down")


async def test_accepted_files_survive_an_agent_restart(
    nats_server_factory, hub: Bus, tmp_path: Path
) -> None:
    local = nats_server_factory("local")
    source = tmp_path / "clip.wav"
    source.write_bytes(b"RIFF" + bytes(1000))
    first = Node(local.url, hub, tmp_path / "agent")
    first.online = False
    await first.start()
    reply = await first.request(
        {"path": str(source), "meta": {"task": "audio"}, "timestamp": TS, "keep": True}
    )
    assert reply == {"ref": f"{BUCKET}/nojob/audio/{TS}-clip.wav"}
    await first.stop()  # the agent goes away before the hub was reachable
    second = Node(local.url, hub, tmp_path / "agent")
    await second.start()
    try:
        await second.transferred(1)
    finally:
        await second.stop()
    assert await object_bytes(hub, f"nojob/audio/{TS}-clip.wav") == source.read_bytes()
    assert source.exists()  # keep=True


async def test_a_hub_outage_holds_files_until_the_hub_returns(
    node: Node, hub: Bus, tmp_path: Path
) -> None:
    server = hub.server  # type: ignore[attr-defined]
    server.stop()
    source = tmp_path / "frame.jpg"
    source.write_bytes(b"\xff\xd8" + bytes(5000))
    reply = await node.request(
        {"path": str(source), "meta": {"task": "cam"}, "timestamp": TS, "keep": False}
    )
    assert "ref" in reply and not source.exists()
    assert node.service is not None
    await asyncio.sleep(0.5)  # retry periods pass with the hub down: nothing sent, nothing lost
    assert len(node.service.pending()) == 1 and node.outbox == []
    server.start()
    await node.transferred(1, timeout=60)
    assert await object_bytes(hub, f"nojob/cam/{TS}-frame.jpg") == b"\xff\xd8" + bytes(5000)


async def test_a_container_plugin_stages_its_file_in_the_shared_upload_dir(
    node: Node, hub: Bus, tmp_path: Path
) -> None:
    """With HIVEBUS_UPLOAD_DIR (the docker executor mounts it), the SDK copies the file there."""
    shared = tmp_path / "shared-uploads"
    shared.mkdir()
    code = """
        from pathlib import Path
        from hivebus.plugin import Plugin

        with Plugin() as plugin:
            Path("result.csv").write_text("a,b\\n1,2\\n")
            print(plugin.upload_file("result.csv", timestamp=1800000000000000000))
            print("left behind:", Path("result.csv").exists())
    """
    executor = make_executor("process")
    spec = plugin_spec(
        node.local_url,
        bundle="acme/table:1.0.0",
        task="table",
        code=code,
        env={"HIVEBUS_UPLOAD_DIR": str(shared)},
    )
    result = await asyncio.wait_for(executor.wait(await executor.start(spec)), 60)
    assert result.state == "completed", result.log_tail
    assert result.log_tail[-1] == "left behind: False"
    await node.transferred(1)
    assert await object_bytes(hub, f"job-cam/table/{TS}-result.csv") == b"a,b\n1,2\n"
    assert list(shared.iterdir()) == []  # the staged copy was taken by the node


# --- refusals ----------------------------------------------------------------------------------


async def test_bad_requests_are_refused_with_the_reason(node: Node, tmp_path: Path) -> None:
    good = tmp_path / "ok.bin"
    good.write_bytes(b"x")
    cases = [
        ({"path": "relative.bin", "meta": {}, "timestamp": TS}, "must be absolute"),
        ({"path": str(tmp_path / "missing.bin"), "meta": {}, "timestamp": TS}, "no such file"),
        ({"path": str(tmp_path), "meta": {}, "timestamp": TS}, "not a regular file"),
        (
            {"path": str(good), "meta": {"n": 1}, "timestamp": TS},
            "meta must map strings to strings",
        ),
        ({"path": str(good), "meta": {}, "timestamp": 1_700_000_000}, "nanoseconds"),
        (
            {"path": str(good), "meta": {}, "timestamp": TS, "keep": "yes"},
            "keep must be true or false",
        ),
    ]
    for body, reason in cases:
        reply = await node.request(body)
        assert reason in reply.get("error", ""), (body, reply)
    garbage = await node.nc.request("local.upload", b"{not json", timeout=10)
    assert "error" in json.loads(garbage.data)
    assert node.service is not None and node.service.counters["refused"] == len(cases) + 1
    assert good.exists() and node.service.pending() == []


async def test_uploads_are_confined_to_allowed_roots_and_bounded(
    nats_server_factory, tmp_path: Path
) -> None:
    local = nats_server_factory("local")
    allowed = tmp_path / "plugins"
    allowed.mkdir()
    n = Node(local.url, None, tmp_path / "agent", allowed_roots=[allowed], max_bytes=1000)
    n.online = False
    await n.start()
    try:
        secret = tmp_path / "secret.txt"
        secret.write_text("agent credentials")
        reply = await n.request({"path": str(secret), "meta": {}, "timestamp": TS})
        assert "outside the directories" in reply["error"]
        inside = allowed / "a.bin"
        inside.write_bytes(bytes(800))
        assert "ref" in await n.request({"path": str(inside), "meta": {}, "timestamp": TS})
        second = allowed / "b.bin"
        second.write_bytes(bytes(800))
        reply = await n.request({"path": str(second), "meta": {}, "timestamp": TS + 1})
        assert "upload store is full (800 of 1000 bytes" in reply["error"]
        assert second.exists()  # a refused file is left where it was
    finally:
        await n.stop()


async def test_the_sdk_raises_when_the_node_refuses(nats_server_factory, tmp_path: Path) -> None:
    local = nats_server_factory("local")
    n = Node(local.url, None, tmp_path / "agent", max_file_bytes=10)
    n.online = False
    await n.start()
    code = """
        from pathlib import Path
        from hivebus.errors import UploadError
        from hivebus.plugin import Plugin

        with Plugin() as plugin:
            Path("big.bin").write_bytes(bytes(100))
            try:
                plugin.upload_file("big.bin")
            except UploadError as exc:
                print("refused:", exc)
            print("still here:", Path("big.bin").exists())
    """
    try:
        executor = make_executor("process")
        result = await asyncio.wait_for(
            executor.wait(
                await executor.start(plugin_spec(n.local_url, bundle="a/b:1.0.0", code=code))
            ),
            60,
        )
    finally:
        await n.stop()
    assert result.state == "completed", result.log_tail
    assert "refused: the node refused big.bin for upload" in result.log_tail[-2]
    assert "the node takes at most 10" in result.log_tail[-2]
    assert result.log_tail[-1] == "still here: True"


# --- reporting ---------------------------------------------------------------------------------


async def test_reporting_an_upload_twice_gives_the_same_event_ids(
    node: Node, tmp_path: Path
) -> None:
    """After a crash between the outbox append and the cleanup, the events are re-sent with
    the same ids, so JetStream and the projections see them once."""
    node.online = False
    source = tmp_path / "x.txt"
    source.write_text("x")
    await node.request({"path": str(source), "meta": {"task": "t"}, "timestamp": TS, "keep": True})
    assert node.service is not None
    (staged,) = node.service.pending()
    first, again = node.service.report_events(staged), node.service.report_events(staged)
    assert [e.id for e in first] == [e.id for e in again]
    assert [e.type for e in first] == ["data.reading"]  # the hub decides storage.object.put
    assert all(e.source == f"node/{NODE}" for e in first)
