"""The goal runner's decisions, with an in-memory executor (the integration tests use the
real process executor): what runs when, statuses in order, triggers on rising edges."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hivebus.edge.executors import Capacity, ResourceGate, RunHandle, RunResult, RunSpec
from hivebus.edge.goals import Goal
from hivebus.edge.recent import RecentReadings
from hivebus.edge.runner import GoalRunner
from hivebus.edge.runs import RunEnvironment
from hivebus.errors import RuleSyntaxError
from hivebus.rules import Rule
from hivebus.schemas.ecr import HardwareProfile
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import PluginStatus
from hivebus.schemas.ses import GoalAssigned, GoalPlugin, ResourceRequest

NODE = "W012"


class MemoryExecutor:
    """Runs nothing: a run ends when the test says so (``finish``)."""

    name = "memory"

    def __init__(self) -> None:
        self.specs: list[RunSpec] = []
        self.ends: dict[str, asyncio.Future[RunResult]] = {}

    async def start(self, spec: RunSpec) -> RunHandle:
        self.specs.append(spec)
        self.ends[spec.run_id] = asyncio.get_running_loop().create_future()
        return RunHandle(spec=spec, ref=self.ends[spec.run_id])

    async def wait(self, handle: RunHandle) -> RunResult:
        return await handle.ref  # type: ignore[no-any-return]

    async def stop(self, handle: RunHandle) -> None:
        if not handle.ref.done():  # type: ignore[union-attr]
            handle.ref.set_result(
                RunResult(state="failed", reason="stopped", message="stopped on request")
            )  # type: ignore[union-attr]

    async def logs(self, handle: RunHandle, lines: int = 50) -> list[str]:
        return []

    def available(self) -> str | None:
        return None

    def finish(self, ok: bool = True) -> None:
        for future in self.ends.values():
            if not future.done():
                future.set_result(
                    RunResult(state="completed", exit_code=0)
                    if ok
                    else RunResult(state="failed", reason="exit", exit_code=1)
                )


class Harness:
    def __init__(self) -> None:
        self.executor = MemoryExecutor()
        self.statuses: list[PluginStatus] = []
        self.triggers: list[tuple[str, Any]] = []
        self.recent = RecentReadings()
        self.runner = GoalRunner(
            executor=self.executor,
            gate=ResourceGate(Capacity(cpus=2, memory_bytes=2**30)),
            environment=RunEnvironment(
                node=NODE,
                env={"HIVEBUS_LOCAL_BUS": "nats://x"},
                hardware=HardwareProfile(arch="linux/amd64"),
            ),
            recent=self.recent,
            emit_status=self._status,
            trigger=self._trigger,
            backoff=(0.05, 1.0),
        )

    async def _status(self, status: PluginStatus, goal: Goal) -> None:
        self.statuses.append(status)

    async def _trigger(self, goal: Goal, rule: Rule, name: str, value: Any, when: datetime) -> None:
        self.triggers.append((name, value))

    def states(self) -> list[str]:
        return [str(s.state) for s in self.statuses]

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)


def plugin(name: str = "p", **resources: Any) -> GoalPlugin:
    return GoalPlugin(
        name=name,
        bundle_id=f"test/{name}:1.0",
        image=f"test/{name}:1.0",
        resources=ResourceRequest(**resources),
    )


def goal(rules: list[str], plugins: list[GoalPlugin] | None = None, job: str = "job-1") -> Goal:
    event = Event.new(
        GoalAssigned(node=NODE, job_id=job, plugins=plugins or [plugin()], science_rules=rules),
        source="handler/ses",
        subject=job,
    )
    return Goal.of(event)


T0 = datetime(2024, 6, 1, 12, 4, 59, tzinfo=UTC)


def ns(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000_000)


async def test_a_schedule_rule_runs_its_plugin_with_every_status_and_never_stacks_runs() -> None:
    h = Harness()
    h.runner.set_goals({"job-1": goal(["schedule(p): true"])})
    h.runner.tick(T0)
    await h.settle()
    h.runner.tick(T0 + timedelta(seconds=1))  # still running: no second run
    await h.settle()
    assert len(h.executor.specs) == 1 and h.states() == [
        "queued",
        "scheduled",
        "initializing",
        "running",
    ]
    h.executor.finish()
    await h.settle()
    assert h.states()[-1] == "completed" and h.statuses[-1].perf is not None
    h.runner.tick(T0 + timedelta(seconds=2))
    await h.settle()
    assert len(h.executor.specs) == 2
    spec = h.executor.specs[0]
    assert (spec.job_id, spec.plugin, spec.bundle_id, spec.env["HIVEBUS_LOCAL_BUS"]) == (
        "job-1",
        "p",
        "test/p:1.0",
        "nats://x",
    )
    await h.runner.shutdown()
    assert h.statuses[-1].state == "failed" and h.statuses[-1].reason.startswith("stopped")


async def test_a_cron_rule_fires_once_at_its_slot() -> None:
    h = Harness()
    h.runner.set_goals({"job-1": goal(["schedule(p): cronjob('p', '*/5 * * * *')"])})
    for seconds in (0, 0.5, 1.5, 2.5):  # 12:04:59 .. 12:05:01.5
        h.runner.tick(T0 + timedelta(seconds=seconds))
        await h.settle()
        h.executor.finish()
        await h.settle()
    assert len(h.executor.specs) == 1


async def test_a_cron_slot_stays_open_for_a_minute_as_on_sage() -> None:
    h = Harness()
    h.runner.set_goals(
        {"job-1": goal(["schedule(p): any(v('env.rain', last=True) > 3) and cronjob('p', '*/5 * * * *')"])}
    )
    h.recent.add("env.rain", 1, ns(T0))
    h.runner.tick(T0 + timedelta(seconds=1))  # the 12:05 fire, but it is dry
    await h.settle()
    assert h.executor.specs == []
    h.recent.add("env.rain", 9, ns(T0 + timedelta(seconds=2)))
    h.runner.tick(T0 + timedelta(seconds=2))  # wet within the minute after the fire: runs
    await h.settle()
    assert len(h.executor.specs) == 1
    h.executor.finish()
    await h.settle()
    h.runner.tick(T0 + timedelta(seconds=3))  # it ran in this minute: not again
    h.runner.tick(T0 + timedelta(seconds=62))  # the minute is over
    await h.settle()
    assert len(h.executor.specs) == 1
    assert h.runner.last_runs["job-1"]["p"] == T0 + timedelta(seconds=2)


async def test_publish_fires_on_the_rising_edge_with_the_reading_value() -> None:
    h = Harness()
    h.runner.set_goals(
        {"job-1": goal(["publish(heat.alert): any(v('env.temperature', last=True) > 35)"], [plugin()])}
    )
    now = T0
    for value, expected in ((20, 0), (36.5, 1), (37, 1), (30, 1), (38, 2)):
        now += timedelta(seconds=1)
        h.recent.add("env.temperature", value, ns(now))
        h.runner.tick(now)
        await h.settle()
        assert len(h.triggers) == expected
    assert h.triggers == [("heat.alert", 36.5), ("heat.alert", 38.0)]
    await h.runner.shutdown()


async def test_set_gives_later_runs_a_variable() -> None:
    h = Harness()
    h.runner.set_goals(
        {
            "job-1": goal(
                ["set(mode, value='storm'): any(v('env.rain') > 3)", "schedule(p): avg(v('env.rain')) > 3"]
            )
        }
    )
    h.recent.add("env.rain", 5, ns(T0))
    h.runner.tick(T0)
    await h.settle()
    assert h.executor.specs[0].env["HIVEBUS_VAR_MODE"] == "storm"
    await h.runner.shutdown()


async def test_a_plugin_no_rule_schedules_runs_continuously_and_backs_off_when_it_fails_fast() -> (
    None
):
    h = Harness()
    h.runner.set_goals({"job-1": goal([])})
    h.runner.tick(T0)
    await h.settle()
    assert len(h.executor.specs) == 1
    h.executor.finish(ok=False)
    await h.settle()
    h.runner.tick(T0)  # failed at once: not again immediately
    await h.settle()
    assert len(h.executor.specs) == 1
    await asyncio.sleep(0.15)
    h.runner.tick(T0)
    await h.settle()
    assert len(h.executor.specs) == 2
    await h.runner.shutdown()


async def test_removing_a_goal_stops_its_runs() -> None:
    h = Harness()
    h.runner.set_goals({"job-1": goal([]), "job-2": goal([], job="job-2")})
    h.runner.tick(T0)
    await h.settle()
    h.runner.set_goals({"job-2": h.runner.goals["job-2"]})
    await h.settle()
    stopped = [s for s in h.statuses if s.state == "failed"]
    assert [(s.job_id, s.reason.split(":")[0]) for s in stopped] == [("job-1", "stopped")]
    await h.runner.shutdown()


async def test_a_run_bigger_than_the_node_fails_at_once_instead_of_waiting() -> None:
    h = Harness()
    h.runner.set_goals({"job-1": goal(["schedule(big): true"], [plugin("big", cpu=64.0)])})
    h.runner.tick(T0)
    await h.settle()
    assert h.states() == ["queued", "failed"] and h.statuses[-1].reason.startswith(
        "error: run can never start"
    )
    assert h.executor.specs == []


def test_a_goal_whose_rule_schedules_an_unknown_plugin_is_refused() -> None:
    with pytest.raises(RuleSyntaxError, match="'other'"):
        goal(["schedule(other): true"])
    g = goal(
        [
            "schedule(p): avg(v('env.temperature', since='-10m')) > 3",
            "publish(x): any(rate('env.pressure', since='-1h') > 0)",
        ],
        [plugin("p"), plugin("q")],
    )
    assert [p.name for p in g.continuous] == ["q"]
    assert g.windows_seconds() == 3600 and g.watched_names() == {"env.temperature", "env.pressure"}


def test_a_scheduled_run_may_last_until_its_next_fire() -> None:
    from hivebus.edge.runner import SCHEDULED_RUN_WALL_SECONDS, scheduled_wall_limit
    from hivebus.rules import parse_rule

    assert scheduled_wall_limit(parse_rule("schedule(p): cronjob('p', '*/5 * * * *')"), "p") == 300
    assert scheduled_wall_limit(parse_rule("schedule(p): any(v('env.x') > 3)"), "p") == SCHEDULED_RUN_WALL_SECONDS


# --- which executor runs a plugin (docs/executors.md) ---------------------------------------


def test_the_executor_is_the_goals_choice_else_wasm_for_modules_else_the_default() -> None:
    h = Harness()
    wasm = MemoryExecutor()
    wasm.name = "wasm"
    h.runner.executors["wasm"] = wasm
    pick = h.runner.executor_for
    assert pick(plugin()) is h.executor
    assert pick(GoalPlugin(**{**plugin().model_dump(), "executor": "wasm"})) is wasm
    assert pick(GoalPlugin(**{**plugin().model_dump(), "entrypoint": "plugin.wat"})) is wasm
    assert pick(GoalPlugin(**{**plugin().model_dump(), "entrypoint": "python3"})) is h.executor
    counter = GoalPlugin(
        name="counter",
        bundle_id="hivebus-examples/plugin-wasm-counter:0.1.0",  # examples/wasm: a main.wat
        image="registry.sagecontinuum.org/hivebus-examples/plugin-wasm-counter:0.1.0",
    )
    assert pick(counter) is wasm
    bme = GoalPlugin(  # examples/plugins: a main.py
        name="bme", bundle_id="waggle/plugin-bme680:0.2.1", image="waggle/plugin-bme680:0.2.1"
    )
    assert pick(bme) is h.executor
    del h.runner.executors["wasm"]
    assert pick(counter) is h.executor  # a node without wasm runs everything its own way


async def test_a_plugin_for_an_executor_the_node_lacks_fails_with_the_reason() -> None:
    h = Harness()
    wasm_only = GoalPlugin(**{**plugin().model_dump(), "executor": "wasm"})
    h.runner.set_goals({"job-1": goal([], [wasm_only])})
    h.runner.tick(datetime.now(UTC))
    for _ in range(50):
        if h.states()[-1:] == ["failed"]:
            break
        await asyncio.sleep(0.01)
    assert h.states()[-1] == "failed"
    assert h.statuses[-1].reason == "error: this node does not run wasm plugins (its executors: memory)"
    assert h.executor.specs == []
    await h.runner.shutdown()
