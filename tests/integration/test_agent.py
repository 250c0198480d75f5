"""The node agent against a real hub nats-server, its own local bus and the process executor."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.errors import ObjectNotFoundError

from hivebus.bus.batch import bodies_of
from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.bus.streams import DATA, EVENTS, platform_streams
from hivebus.bus.subjects import data_filter, fromedge_filter
from hivebus.config import Settings
from hivebus.edge.agent import AgentConfig, NodeAgent
from hivebus.edge.forwarder import ForwarderOptions
from hivebus.edge.outbox import DROPPED_FULL, OutboxLimits
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import NodeConfigUpdated, SensorSpec
from hivebus.schemas.ses import GoalAssigned, GoalPlugin, GoalRemoved
from hivebus.services.uploads import UploadDecider

pytestmark = pytest.mark.integration

NODE = "W012"


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def hub(nats_server: NatsServer) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_server.url)
    await bus.ensure_streams(platform_streams(Settings(duplicate_window=timedelta(seconds=1))))
    yield bus
    await bus.close()


def agent_config(tmp_path: Path, url: str, **options: Any) -> AgentConfig:
    options.setdefault("heartbeat_seconds", 3600.0)
    options.setdefault("metrics_seconds", 3600.0)
    options.setdefault("forwarder", ForwarderOptions(ack_timeout=1.0, retry_max=0.5))
    return AgentConfig.build(NODE, url, data_dir=tmp_path / "node", **options)


@asynccontextmanager
async def running(config: AgentConfig) -> AsyncIterator[NodeAgent]:
    agent = NodeAgent(config)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.ready.wait(), 15)
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def node_events(bus: Bus, type_: str | None = None) -> list[Event]:
    out = [
        e
        async for _, e in bus.events(
            EVENTS, filter_subjects=[fromedge_filter(NODE)], stop_at_end=True
        )
    ]
    return [e for e in out if type_ is None or e.type == type_]


async def node_readings(bus: Bus) -> list[Event]:
    """The node's readings at the hub, each of a packed message too (issue 18)."""
    return [
        codec.decode(body)
        async for batch in bus.read(DATA, filter_subjects=[data_filter(NODE)], stop_at_end=True)
        for m in batch
        for body in bodies_of(m.data)
    ]


def has(
    bus: Bus, type_: str, n: int = 1, where: Callable[[Event], bool] = lambda e: True
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len([e for e in await node_events(bus, type_) if where(e)]) >= n

    return check


def python_plugin(name: str, code: str) -> GoalPlugin:
    return GoalPlugin(
        name=name,
        bundle_id=f"test/{name}:1.0",
        image=f"registry.example.org/test/{name}:1.0",
        entrypoint=sys.executable,
        args=["-c", code],
    )


def goal(job_id: str, plugins: list[GoalPlugin], rules: list[str]) -> Event:
    return Event.new(
        GoalAssigned(node=NODE, job_id=job_id, plugins=plugins, science_rules=rules),
        source="handler/ses",
        subject=job_id,
    )


# --- start-up, registration, local bus ------------------------------------------------------


async def test_starts_with_the_hub_down_and_delivers_everything_when_it_comes_up(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    bus = await Bus.connect(nats_server.url)
    await bus.ensure_streams()
    await bus.close()
    await asyncio.to_thread(nats_server.stop)
    config = agent_config(
        tmp_path, nats_server.url, virtual=True, virtual_interval_seconds=0.2, heartbeat_seconds=0.5
    )
    async with running(config) as agent:
        await until(lambda: _holds(agent, 10), 10, "virtual readings and heartbeats to be buffered")
        assert not agent.uplink.online
        await asyncio.to_thread(nats_server.start)
        async with await Bus.connect(nats_server.url) as hub:
            await until(lambda: _drained(agent), 20, "the outbox to drain")
            registered = await node_events(hub, "node.registered")
            assert len(registered) == 1
            manifest = registered[0].data.manifest
            assert "virtual" in manifest.tags and manifest.sensors[0].name == "bme680"
            readings = await node_readings(hub)
            names = {r.data.name for r in readings}
            assert {"env.temperature", "env.relative_humidity", "env.pressure"} <= names
            assert all(r.data.meta["node"] == NODE and r.data.meta["vsn"] == NODE for r in readings)
            temps = [r.data.value for r in readings if r.data.name == "env.temperature"]
            assert all(-30 < t < 50 for t in temps) and len(set(temps)) > 1  # noisy, plausible
            beats = await node_events(hub, "node.heartbeat")
            assert beats and beats[-1].data.resources.cpus >= 1


async def _holds(agent: NodeAgent, n: int) -> bool:
    return agent.outbox.backlog_now()[0] >= n


async def _drained(agent: NodeAgent) -> bool:
    return agent.outbox.backlog_now()[0] == 0


async def test_local_bus_routes_readings_by_scope_and_enriches_meta(
    tmp_path: Path, nats_server: NatsServer, hub: Bus
) -> None:
    async with running(agent_config(tmp_path, nats_server.url)) as agent:
        plugin = await nats.connect(agent.local.url)
        local: list[dict[str, Any]] = []
        sub = await plugin.subscribe("readings.>", cb=_collector(local))
        await plugin.flush()
        t = time.time_ns()
        for scope in ("node", "beehive", "all"):
            body = {
                "name": f"test.{scope}",
                "value": 1.5,
                "timestamp": t,
                "meta": {"node": "W999", "job": "j1"},
                "scope": scope,
            }
            await plugin.publish(f"local.publish.test.{scope}", json.dumps(body).encode())
        reply = await plugin.request(
            "local.publish.test.asked",
            json.dumps({"name": "test.asked", "value": 2, "timestamp": t}).encode(),
            timeout=5,
        )
        assert json.loads(reply.data)["ok"] is True and json.loads(reply.data)["nodeseq"] > 0
        bad = await plugin.request(
            "local.publish.test.bad",
            json.dumps({"name": "test.bad", "value": True, "timestamp": t}).encode(),
            timeout=5,
        )
        assert "value" in json.loads(bad.data)["error"]
        await until(lambda: _holds_none(hub, agent), 10, "readings to reach the hub")
        await sub.unsubscribe()
        await plugin.close()
        beat = await agent.heartbeat()

    local = [m for m in local if m["name"].startswith("test.")]
    assert sorted(m["name"] for m in local) == ["test.all", "test.asked", "test.node"]
    assert all(
        m["meta"]["node"] == NODE and m["meta"]["job"] == "j1"
        for m in local
        if m["name"] != "test.asked"
    )
    hub_names = sorted(
        r.data.name for r in await node_readings(hub) if r.data.name.startswith("test.")
    )
    assert hub_names == ["test.all", "test.asked", "test.beehive"]
    assert beat.data.dropped["readings.invalid"] == 1


def _collector(into: list[dict[str, Any]]) -> Callable[[Any], Awaitable[None]]:
    async def collect(msg: Any) -> None:
        into.append(json.loads(msg.data))

    return collect


async def _holds_none(hub: Bus, agent: NodeAgent) -> bool:
    tests = [r for r in await node_readings(hub) if r.data.name.startswith("test.")]
    return agent.outbox.backlog_now()[0] == 0 and len(tests) >= 3


# --- to-edge --------------------------------------------------------------------------------


async def test_a_goal_is_stored_reported_and_kept_across_a_restart_with_the_hub_down(
    tmp_path: Path, nats_server: NatsServer, hub: Bus
) -> None:
    sleeper = python_plugin("sleeper", "import time; time.sleep(30)")
    assigned = goal("job-1", [sleeper], [])
    config = agent_config(tmp_path, nats_server.url)
    async with running(config) as agent:
        await hub.publish(assigned)
        await until(has(hub, "node.toedge.applied"), 15, "the goal to be applied")
        await until(lambda: _run_state(agent, "running"), 15, "the continuous plugin to run")
    [applied] = await node_events(hub, "node.toedge.applied")
    assert applied.data.applied_id == assigned.id and applied.data.outcome == "applied"
    assert applied.data.goals == ["job-1"] and applied.causationid == assigned.id
    info = await hub.js.consumer_info(EVENTS, f"toedge-{NODE}")
    assert info.num_ack_pending == 0 and info.num_pending == 0

    await asyncio.to_thread(nats_server.stop)
    async with running(config) as agent:  # offline restart: the goal comes from disk
        assert set(agent.runner.goals) == {"job-1"}
        await until(lambda: _run_state(agent, "running"), 15, "the plugin to run again offline")
    await asyncio.to_thread(nats_server.start)
    removal = Event.new(
        GoalRemoved(node=NODE, job_id="job-1"), source="handler/ses", subject="job-1"
    )
    async with await Bus.connect(nats_server.url) as bus:
        await bus.publish(removal)  # while the agent is down: delivered when it is back
        async with running(config) as agent:
            await until(has(bus, "node.toedge.applied", 2), 15, "the removal to be applied")
            await until(lambda: _no_runs(agent), 15, "the goal and its run to be gone")
        reports = await node_events(bus, "node.toedge.applied")
    assert reports[-1].data.applied_id == removal.id and reports[-1].data.goals == []


async def _run_state(agent: NodeAgent, state: str) -> bool:
    return any(run.state == state for run in agent.runner.runs.values())


async def _no_runs(agent: NodeAgent) -> bool:
    return not agent.runner.runs and not agent.runner.goals


async def test_a_goal_with_a_bad_rule_is_refused_with_the_reason(
    tmp_path: Path, nats_server: NatsServer, hub: Bus
) -> None:
    async with running(agent_config(tmp_path, nats_server.url)) as agent:
        await hub.publish(goal("job-bad", [python_plugin("p", "pass")], ["schedule(other): true"]))
        await until(has(hub, "node.toedge.applied"), 15, "the refusal")
        assert agent.runner.goals == {}
    [report] = await node_events(hub, "node.toedge.applied")
    assert (
        report.data.outcome == "refused"
        and "'other'" in report.data.reason
        and report.data.goals == []
    )


# --- autonomy -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_one_second_schedule_keeps_running_offline_and_reports_after_reconnect(
    tmp_path: Path, nats_server: NatsServer, hub: Bus
) -> None:
    async with running(agent_config(tmp_path, nats_server.url)) as agent:
        await hub.publish(
            goal("job-tick", [python_plugin("tick", "print('tick')")], ["schedule(tick): true"])
        )
        await until(
            has(hub, "plugin.status", where=lambda e: e.data.state == "completed"),
            20,
            "a first run online",
        )
        await asyncio.to_thread(nats_server.kill)
        down = datetime.now(UTC)
        finished = agent.runner.finished
        await until(lambda: _finished(agent, finished + 3), 20, "three runs while the hub is down")
        up = datetime.now(UTC)
        await asyncio.to_thread(nats_server.start)
        async with await Bus.connect(nats_server.url) as bus:
            await until(lambda: _drained(agent), 20, "the statuses to be forwarded")
            statuses = await node_events(bus, "plugin.status")

    offline = [s for s in statuses if s.data.state == "completed" and down < s.time < up]
    assert len(offline) >= 3, "runs while the hub was down did not report"
    by_run: dict[str, list[str]] = {}
    for s in statuses:
        by_run.setdefault(s.data.run_id, []).append(s.data.state)
    done = [states for states in by_run.values() if states[-1] == "completed"]
    assert all(
        states == ["queued", "scheduled", "initializing", "running", "completed"] for states in done
    )
    tail = next(s for s in offline)
    assert (
        tail.data.exit_code == 0
        and tail.data.log_tail == ["tick"]
        and tail.data.perf.wall_seconds > 0
    )


async def _finished(agent: NodeAgent, n: int) -> bool:
    return agent.runner.finished >= n


async def test_a_publish_rule_fires_a_trigger_to_the_hub_and_on_the_local_bus(
    tmp_path: Path, nats_server: NatsServer, hub: Bus
) -> None:
    sleeper = python_plugin("sleeper", "import time; time.sleep(30)")
    rule = "publish(heat.alert): any(v('env.temperature', last=True) > 35)"
    async with running(agent_config(tmp_path, nats_server.url)) as agent:
        await hub.publish(goal("job-heat", [sleeper], [rule]))
        await until(has(hub, "node.toedge.applied"), 15, "the goal")
        plugin = await nats.connect(agent.local.url)
        alerts: list[dict[str, Any]] = []
        await plugin.subscribe("readings.heat.alert", cb=_collector(alerts))
        for value in (20.0, 36.5):
            body = {"name": "env.temperature", "value": value, "timestamp": time.time_ns()}
            await plugin.publish("local.publish.env.temperature", json.dumps(body).encode())
            await plugin.flush()
            await asyncio.sleep(1.2)  # one evaluation round per value
        await until(has(hub, "trigger.fired"), 15, "the trigger at the hub")
        await until(lambda: _nonempty(alerts), 5, "the trigger on the local bus")
        await plugin.close()
    [fired] = await node_events(hub, "trigger.fired")
    assert fired.data.name == "heat.alert" and fired.data.value == 36.5 and fired.data.rule == rule
    assert alerts[0]["value"] == 36.5 and alerts[0]["meta"]["job"] == "job-heat"


async def _nonempty(items: list[Any]) -> bool:
    return bool(items)


# --- housekeeping ---------------------------------------------------------------------------


async def test_config_update_re_registers_and_a_silent_sensor_is_lost_then_restored(
    tmp_path: Path, nats_server: NatsServer, hub: Bus
) -> None:
    config = agent_config(tmp_path, nats_server.url, sensor_check_seconds=0.1)
    sensor = SensorSpec(
        name="raingauge", kind="env", expects=["env.raingauge.uint"], max_silence=1.0
    )
    async with running(config) as agent:
        await until(has(hub, "node.registered"), 10, "the first registration")
        update = NodeConfigUpdated(
            node=NODE, tags=["urban"], sensors=[sensor], heartbeat_seconds=5.0
        )
        await hub.publish(Event.new(update, source="user/operator", subject=NODE))
        await until(has(hub, "node.registered", 2), 10, "the registration after the config change")
        await until(has(hub, "node.sensor.lost"), 10, "the silent sensor to be lost")
        plugin = await nats.connect(agent.local.url)
        body = {"name": "env.raingauge.uint", "value": 3, "timestamp": time.time_ns()}
        await plugin.publish("local.publish.env.raingauge.uint", json.dumps(body).encode())
        await plugin.close()
        await until(has(hub, "node.sensor.restored"), 10, "the sensor to be restored")
        assert agent._heartbeat_seconds == 5.0
    registered = await node_events(hub, "node.registered")
    assert registered[1].data.manifest.tags == ["urban"]
    assert registered[1].data.manifest.sensors[0].name == "raingauge"
    [lost] = await node_events(hub, "node.sensor.lost")
    assert lost.data.sensor == "raingauge" and "env.raingauge.uint" in lost.data.reason

    async with running(config):  # the overlay is kept: no new registration, no new loss
        pass
    assert len(await node_events(hub, "node.registered")) == 2


async def test_a_full_outbox_drops_oldest_readings_and_the_heartbeat_counts_them(
    tmp_path: Path, nats_server: NatsServer, hub: Bus
) -> None:
    await asyncio.to_thread(nats_server.stop)
    config = agent_config(tmp_path, nats_server.url, outbox=OutboxLimits(max_bytes=64 * 1024))
    async with running(config) as agent:
        plugin = await nats.connect(agent.local.url)
        t = time.time_ns()
        for i in range(2000):
            body = {"name": "test.counter", "value": i, "timestamp": t + i, "scope": "beehive"}
            await plugin.publish("local.publish.test.counter", json.dumps(body).encode())
        await plugin.flush()
        await until(lambda: _accepted(agent, 2000), 15, "the intake to take every reading")
        await agent.intake.drain()
        beat = await agent.heartbeat()
        produced = agent.intake.accepted  # the test's readings and the agent's own sys.* ones
        await plugin.close()
        await asyncio.to_thread(nats_server.start)
        async with await Bus.connect(nats_server.url) as bus:
            await until(lambda: _drained(agent), 20, "the outbox to drain")
            await agent.heartbeat()  # counts also what the first heartbeat itself evicted
            await until(has(bus, "node.heartbeat", 3), 20, "the last heartbeat")
            delivered = await node_readings(bus)
            lifecycle = await node_events(bus)
    values = [r.data.value for r in delivered if r.data.name == "test.counter"]
    assert values == list(range(2000 - len(values), 2000)), "not the newest readings kept, in order"
    # every lifecycle event is kept: registration, the heartbeat at start, ours, the last one
    assert [e.type for e in lifecycle] == ["node.registered"] + ["node.heartbeat"] * 3
    assert lifecycle[2].data == beat.data
    missing = produced - len(delivered)
    assert lifecycle[3].data.dropped[DROPPED_FULL] == missing > 0
    assert missing - 2 <= beat.data.dropped[DROPPED_FULL] <= missing


async def _accepted(agent: NodeAgent, n: int) -> bool:
    return agent.intake.accepted >= n


# --- uploads --------------------------------------------------------------------------------


async def test_a_plugin_upload_is_kept_offline_and_shipped_to_the_hub_store(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    bus = await Bus.connect(nats_server.url)
    await bus.ensure_streams()
    await bus.close()
    await asyncio.to_thread(nats_server.stop)
    async with running(agent_config(tmp_path, nats_server.url)) as agent:
        run = agent.uploads.open_run("run-1")  # what the runner does for each run it starts
        snapshot = Path(run["HIVEBUS_UPLOAD_DIR"]) / "snapshot.jpg"
        snapshot.write_bytes(b"\xff\xd8 not really a jpeg " * 1000)
        plugin = await nats.connect(agent.local.url)
        request = {
            "path": str(snapshot),
            "meta": {"camera": "top"},
            "timestamp": time.time_ns(),
            "keep": False,
        }
        ask = plugin.request  # without its run the agent refuses the file; with it, takes it
        refused = json.loads((await ask("local.upload", json.dumps(request).encode(), timeout=10)).data)
        assert "names no running plugin of this node" in refused["error"] and snapshot.exists()
        request |= {"run_id": "run-1", "token": run["HIVEBUS_UPLOAD_TOKEN"]}
        reply = json.loads((await ask("local.upload", json.dumps(request).encode(), timeout=10)).data)
        await plugin.close()
        assert reply["ref"].startswith(f"upload-{agent.node}/") and not snapshot.exists()
        await asyncio.to_thread(nats_server.start)
        async with await Bus.connect(nats_server.url) as hub:
            decider = await UploadDecider(hub).serve()  # the hub's upload service (run_handlers)

            async def recorded() -> bool:
                facts = [e async for _, e in hub.events(EVENTS, filter_subjects=["evt.storage.object.put.>"],
                                                         stop_at_end=True)]
                return len(facts) == 1

            await until(recorded, 30, "the upload to be recorded in the node's bucket")
            store = await hub.js.object_store(f"sage-upload-{agent.node}")
            key = reply["ref"].split("/", 1)[1]

            async def readable() -> bool:
                # the put is decided (its fact) before the object's metadata is written, so a
                # crash between the two is completed by the node asking again: wait for both
                try:
                    await store.get_info(key)
                    return True
                except ObjectNotFoundError:
                    return False

            await until(readable, 30, "the uploaded object to be readable")
            await decider.close()
            stored = await store.get(key)
            assert stored.data == b"\xff\xd8 not really a jpeg " * 1000

            async def upload_readings() -> list[Any]:
                return [r.data.value for r in await node_readings(hub) if r.data.name == "upload"]

            # the reading naming the upload is appended once the object is stored: an empty
            # outbox before that says nothing (it failed so once under load)
            await until(upload_readings, 20, "the upload reading")
            await until(lambda: _drained(agent), 20, "the outbox drained")
            assert await upload_readings() == [reply["ref"]]


# --- hivebus node list ----------------------------------------------------------------------


async def test_node_list_shows_a_registered_node_through_the_query_service(
    tmp_path: Path, nats_server: NatsServer, hub: Bus
) -> None:
    from hivebus.projections.runner import running as projecting

    config = agent_config(tmp_path, nats_server.url, virtual=True, heartbeat_seconds=0.5)
    async with running(config) as agent, projecting(hub, tmp_path / "views.duckdb") as projector:
        await until(has(hub, "node.heartbeat"), 10, "a heartbeat")
        await until(lambda: _drained(agent), 10, "the outbox to drain")
        ends = {DATA: await hub.last_seq(DATA), EVENTS: await hub.last_seq(EVENTS)}
        assert await projector.wait_for(ends, 30)
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from hivebus.cli import main; main()",
            "node", "list", "--hub", nats_server.url, "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(cli.communicate(), 60)
        tagged = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from hivebus.cli import main; main()",
            "node", "list", "--hub", nats_server.url, "--tag", "no-such-tag",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        table, _ = await asyncio.wait_for(tagged.communicate(), 60)
    assert cli.returncode == 0, err.decode()
    [node] = json.loads(out)
    assert node["node_id"] == NODE and node["status"] == "online" and "virtual" in node["tags"]
    assert node["cpus"] >= 1 and node["backlog_messages"] is not None
    assert tagged.returncode == 0 and b"0 node(s)" in table


# --- a real plugin, end to end --------------------------------------------------------------


async def test_a_scheduled_sdk_plugin_publishes_through_the_node_to_the_hub(
    tmp_path: Path, nats_server: NatsServer, hub: Bus
) -> None:
    """examples/plugins/plugin-bme680 (pywaggle-style, the hivebus SDK) run by the process
    executor on a schedule: its readings reach the hub with the node's and the run's meta."""
    bme680 = GoalPlugin(
        name="bme680",
        bundle_id="waggle/plugin-bme680:0.2.1",
        image="registry.sagecontinuum.org/waggle/plugin-bme680:0.2.1",
        args=["--simulate"],
    )
    assigned = goal("job-bme", [bme680], ["schedule(bme680): true"])
    async with running(agent_config(tmp_path, nats_server.url)) as agent:
        await hub.publish(assigned)
        done = has(hub, "plugin.status", where=lambda e: e.data.state in ("completed", "failed"))
        await until(done, 60, "a run of the plugin to end")
        await until(lambda: _drained(agent), 20, "its readings to be forwarded")
    [status, *_] = [
        e
        for e in await node_events(hub, "plugin.status")
        if e.data.state in ("completed", "failed")
    ]
    assert status.data.state == "completed", (status.data.reason, status.data.log_tail)
    assert status.causationid == assigned.id and status.correlationid == assigned.correlationid
    temps = [r for r in await node_readings(hub) if r.data.name == "env.temperature"]
    assert temps, "the plugin's readings did not reach the hub"
    meta = temps[0].data.meta
    assert (meta["node"], meta["vsn"], meta["job"], meta["task"]) == (
        NODE,
        NODE,
        "job-bme",
        "bme680",
    )
    assert (
        meta["plugin"] == "waggle/plugin-bme680:0.2.1"
        and meta["sensor"] == "bme680"
        and meta["host"]
    )
