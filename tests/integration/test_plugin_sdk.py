"""The plugin SDK against a real nats-server acting as the node-local bus.

Plugins run as real subprocesses through the process executor, written as pywaggle plugins
with only the import changed (examples/plugins and inline probes). ``NodeIntake`` is a test
harness standing in for the agent's intake, doing what docs/node-local-bus.md says the agent
does: ``local.publish.>`` -> ``readings.<name>`` for scope node/all, and to the hub for
scope beehive/all (here: published as node events on a real JetStream hub).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from hivebus.bus.client import Bus
from hivebus.bus.streams import DATA
from hivebus.edge.executors import Executor, Limits, RunResult, RunSpec, make_executor
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event
from hivebus.schemas.ids import new_ulid

pytestmark = pytest.mark.integration

NODE = "W012"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"


class NodeIntake:
    """Test harness: the agent's reading intake on the local bus, nothing more."""

    def __init__(self, url: str, hub: Bus | None = None) -> None:
        self.url, self.hub = url, hub
        self.readings: list[Reading] = []
        self.nc: Any = None
        self._changed = asyncio.Event()

    async def start(self) -> NodeIntake:
        self.nc = await nats.connect(self.url, name="test-intake")
        await self.nc.subscribe("local.publish.>", cb=self._on_publish)
        await self.nc.flush()
        return self

    async def close(self) -> None:
        await self.nc.drain()

    async def _on_publish(self, msg: Any) -> None:
        reading = Reading.model_validate_json(msg.data)  # the SDK must send valid readings
        assert msg.subject == f"local.publish.{reading.name}"
        reading = reading.model_copy(
            update={"meta": {**reading.meta, "node": NODE, "vsn": NODE, "host": "w012-host"}}
        )
        self.readings.append(reading)
        if reading.scope != "beehive":
            await self.nc.publish(f"readings.{reading.name}", reading.model_dump_json().encode())
        if reading.scope != "node" and self.hub is not None:
            await self.hub.publish(Event.new(reading, source=f"node/{NODE}", subject=NODE))
        if msg.reply:
            await msg.respond(b'{"ok":true}')
        self._changed.set()

    async def publish_reading(self, name: str, value: Any, **meta: str) -> None:
        """A reading as the agent re-publishes it for node-local subscribers."""
        body = Reading(
            name=name, value=value, timestamp=1_800_000_000_000_000_000, meta={"node": NODE, **meta}
        )
        await self.nc.publish(f"readings.{name}", body.model_dump_json().encode())

    async def wait_for(
        self, predicate: Callable[[list[Reading]], bool], timeout: float = 30.0
    ) -> list[Reading]:
        async with asyncio.timeout(timeout):
            while not predicate(self.readings):
                self._changed.clear()
                await self._changed.wait()
        return self.readings

    def named(self, name: str) -> list[Reading]:
        return [r for r in self.readings if r.name == name]


@pytest.fixture
async def intake(nats_server) -> AsyncIterator[NodeIntake]:
    harness = await NodeIntake(nats_server.url).start()
    yield harness
    await harness.close()


@pytest.fixture
def executor() -> Executor:
    return make_executor("process", plugin_path=[EXAMPLES], kill_grace=2.0)


def spec_for(
    bundle: str,
    task: str,
    local_bus: str,
    *,
    args: tuple[str, ...] = (),
    code: str | None = None,
    env: dict[str, str] | None = None,
) -> RunSpec:
    return RunSpec(
        run_id=new_ulid(),
        node=NODE,
        job_id="job-heat",
        plugin=task,
        bundle_id=bundle,
        image=f"registry.sagecontinuum.org/{bundle}",
        command=("python3", "-c", textwrap.dedent(code)) if code else (),
        args=args,
        env={
            "HIVEBUS_LOCAL_BUS": local_bus,
            "HIVEBUS_VSN": NODE,
            "HIVEBUS_HOST": "w012-host",
            **(env or {}),
        },
        limits=Limits(memory_bytes=256 * 2**20, wall_seconds=60),
    )


async def finished(executor: Executor, spec: RunSpec, timeout: float = 60) -> RunResult:
    handle = await executor.start(spec)
    result = await asyncio.wait_for(executor.wait(handle), timeout)
    assert result.state == "completed", (result.message, result.log_tail)
    return result


# --- acceptance: a pywaggle plugin, one import changed, readings at the hub ------------------


async def test_a_pywaggle_plugin_publishes_readings_that_reach_the_hub_with_node_meta(
    nats_server_factory, executor: Executor
) -> None:
    local = nats_server_factory("local")
    hub_server = nats_server_factory("hub")
    async with await Bus.connect(hub_server.url) as hub:
        await hub.ensure_streams()
        intake = await NodeIntake(local.url, hub).start()
        try:
            spec = spec_for(
                "waggle/plugin-bme680:0.2.1",
                "bme680",
                local.url,
                args=("--simulate", "--count", "2", "--interval", "0"),
            )
            await finished(executor, spec)
        finally:
            await intake.close()
        stored = [e async for _, e in hub.events(DATA, stop_at_end=True)]
    names = sorted(e.data.name for e in stored)
    assert names.count("env.temperature") == 2 and names.count("env.relative_humidity") == 2
    assert names.count("env.pressure") == 2 and names.count("plugin.duration.read") == 2
    temperature = next(e for e in stored if e.data.name == "env.temperature")
    assert temperature.node == NODE
    assert temperature.data.meta == {
        "node": NODE,
        "vsn": NODE,
        "host": "w012-host",
        "job": "job-heat",
        "task": "bme680",
        "plugin": "waggle/plugin-bme680:0.2.1",
        "sensor": "bme680",
        "simulated": "true",
        "units": "degrees Celsius",
    }
    assert isinstance(temperature.data.value, float)


async def test_a_consumer_subscribes_and_publishes_a_derived_value(
    intake: NodeIntake, executor: Executor, nats_server
) -> None:
    consumer = await executor.start(
        spec_for(
            "waggle/plugin-heat-index:0.1.0",
            "heat-index",
            nats_server.url,
            args=("--count", "1", "--idle", "30"),
        )
    )
    producer = await executor.start(
        spec_for(
            "waggle/plugin-bme680:0.2.1",
            "bme680",
            nats_server.url,
            args=("--simulate", "--continuous", "--interval", "0.2"),
        )
    )
    try:  # the producer keeps publishing until the consumer (subscribed at some point) derives one value
        await intake.wait_for(lambda rs: any(r.name == "env.heat_index" for r in rs))
        result = await asyncio.wait_for(executor.wait(consumer), 30)
    finally:
        await executor.stop(producer)
    assert result.state == "completed", result.log_tail
    (derived,) = intake.named("env.heat_index")
    assert derived.meta["task"] == "heat-index" and derived.meta["units"] == "degrees Celsius"
    assert derived.meta["sensor"] == "bme680"
    t = next(r for r in intake.named("env.temperature") if r.timestamp == derived.timestamp)
    rh = next(r for r in intake.named("env.relative_humidity") if r.timestamp == derived.timestamp)
    expected = round(heat_index_example()(float(t.value), float(rh.value)), 2)
    assert derived.value == expected


def heat_index_example() -> Callable[[float, float], float]:
    spec = importlib.util.spec_from_file_location(
        "heat_index_example", EXAMPLES / "plugin-heat-index" / "main.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.heat_index  # type: ignore[no-any-return]


# --- subscribe / get semantics ----------------------------------------------------------------

PROBE = """
    import json
    from hivebus.plugin import Plugin

    with Plugin() as plugin:
        plugin.subscribe("env.#", "env.*", "sys.mem.avail")
        plugin.publish("probe.ready", 1)
        got = []
        while True:
            try:
                msg = plugin.get(timeout=1.5)
            except TimeoutError:
                break
            value = msg.value if not isinstance(msg.value, bytes) else "bytes:" + msg.value.hex()
            got.append([msg.name, value, msg.timestamp, msg.meta.get("sensor", "")])
        plugin.publish("probe.received", json.dumps(got))
"""


async def test_subscribe_wildcards_deliver_each_matching_reading_once_and_get_times_out(
    intake: NodeIntake, executor: Executor, nats_server
) -> None:
    handle = await executor.start(
        spec_for("hivebus-test/probe:1.0.0", "probe", nats_server.url, code=PROBE)
    )
    await intake.wait_for(lambda rs: any(r.name == "probe.ready" for r in rs))
    await intake.publish_reading(
        "env.temperature", 21.5, sensor="bme680"
    )  # matches env.# and env.*
    await intake.publish_reading("env.raingauge.uint", 3)  # env.# only
    await intake.publish_reading("env", 0)  # env.#: '#' matches zero parts too
    await intake.publish_reading("sys.load1", 0.5)  # nothing
    await intake.publish_reading("sys.mem.avail", 1024)
    raw = Reading.from_bytes("env.raw", b"\x00\xff", timestamp=1_800_000_000_000_000_000)
    await intake.nc.publish("readings.env.raw", raw.model_dump_json().encode())
    result = await asyncio.wait_for(executor.wait(handle), 30)
    assert result.state == "completed", result.log_tail
    (received,) = intake.named("probe.received")
    got = json.loads(str(received.value))
    assert got == [
        ["env.temperature", 21.5, 1_800_000_000_000_000_000, "bme680"],
        ["env.raingauge.uint", 3, 1_800_000_000_000_000_000, ""],
        ["env", 0, 1_800_000_000_000_000_000, ""],
        ["sys.mem.avail", 1024, 1_800_000_000_000_000_000, ""],
        ["env.raw", "bytes:00ff", 1_800_000_000_000_000_000, ""],
    ]


# --- delivery ---------------------------------------------------------------------------------

BURST = """
    from hivebus.plugin import Plugin

    with Plugin() as plugin:
        for i in range(20000):
            plugin.publish("test.burst", i, scope="beehive")
"""


async def test_everything_published_before_exit_is_delivered(
    intake: NodeIntake, executor: Executor, nats_server
) -> None:
    await finished(
        executor, spec_for("hivebus-test/burst:1.0.0", "burst", nats_server.url, code=BURST)
    )
    readings = await intake.wait_for(lambda rs: len(rs) >= 20000, timeout=10)
    assert [r.value for r in readings] == list(range(20000))  # all, in order
    assert all(r.scope == "beehive" for r in readings)


async def test_an_unreachable_bus_leaves_the_readings_in_the_offline_log(
    tmp_path: Path, executor: Executor
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = """
        from hivebus.plugin import Plugin

        with Plugin() as plugin:
            for i in range(5):
                plugin.publish("test.kept", i)
    """
    log = tmp_path / "fallback.ndjson"
    spec = spec_for(
        "hivebus-test/kept:1.0.0",
        "kept",
        f"nats://127.0.0.1:{port}",
        code=code,
        env={"HIVEBUS_FLUSH_TIMEOUT": "1", "HIVEBUS_OFFLINE_LOG": str(log)},
    )
    result = await finished(executor, spec)
    assert [json.loads(line)["value"] for line in log.read_text().splitlines()] == [0, 1, 2, 3, 4]
    assert any("did not take 5 message(s)" in line for line in result.log_tail)


async def test_scope_decides_where_a_reading_goes(
    intake: NodeIntake, executor: Executor, nats_server
) -> None:
    code = """
        from hivebus.plugin import Plugin

        with Plugin() as plugin:
            plugin.subscribe("scoped.*")
            plugin.publish("probe.ready", 1)
            plugin.publish("scoped.node", 1, scope="node")
            plugin.publish("scoped.beehive", 2, scope="beehive")
            plugin.publish("scoped.all", 3)
            seen = sorted(plugin.get(timeout=10).name for _ in range(2))
            plugin.publish("probe.seen", ",".join(seen), scope="beehive")
    """
    await finished(
        executor, spec_for("hivebus-test/scoped:1.0.0", "scoped", nats_server.url, code=code)
    )
    (seen,) = intake.named("probe.seen")
    assert (
        seen.value == "scoped.all,scoped.node"
    )  # beehive-only readings are not re-published locally
