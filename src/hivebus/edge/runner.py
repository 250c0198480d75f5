"""The goal runner: the node's own scheduler, which needs nobody but itself.

Once a second (aligned to the clock) it evaluates every rule of every goal against the
node's recent readings (``TickContext``) and acts (see ``goals.py`` for what each action
does); continuous plugins are restarted when they exit. It keeps working with the hub
unreachable: goals are on disk, readings are local, and statuses go to the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

import structlog

from hivebus.edge.executors import Executor, ResourceGate, Unavailable
from hivebus.edge.goals import Goal
from hivebus.edge.recent import RecentReadings, TickContext
from hivebus.edge.runs import EmitStatus, PluginRun, RunEnvironment
from hivebus.rules import Publish, Rule, Schedule, Set, cron_period_seconds
from hivebus.schemas.ses import GoalPlugin

log = structlog.get_logger()

Trigger = Callable[[Goal, Rule, str, float | int | str, datetime], Awaitable[None]]
"""Called when a ``publish(<name>)`` rule fires: (goal, rule, name, value, time)."""

_FAST_EXIT_S = 10.0


class GoalRunner:
    def __init__(
        self,
        *,
        executor: Executor,
        gate: ResourceGate,
        executors: Mapping[str, Executor] | None = None,
        environment: RunEnvironment,
        recent: RecentReadings,
        emit_status: EmitStatus,
        trigger: Trigger,
        tick_seconds: float = 1.0,
        backoff: tuple[float, float] = (1.0, 300.0),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.executor = executor
        """The node's default executor (``hivebus node run --executor``)."""
        self.executors: dict[str, Executor] = {executor.name: executor, **(executors or {})}
        """Every executor this node runs, by name (see ``executor_for``)."""
        self.gate = gate
        self.environment = environment
        self.recent = recent
        self.emit_status = emit_status
        self.trigger = trigger
        self.tick_seconds = tick_seconds
        self.backoff = backoff
        self.clock = clock
        self.goals: dict[str, Goal] = {}
        self.runs: dict[tuple[str, str], PluginRun] = {}
        self.variables: dict[str, dict[str, str]] = {}
        self._fired: dict[tuple[str, str], bool] = {}
        self._restart_at: dict[tuple[str, str], float] = {}
        self._fast_failures: dict[tuple[str, str], int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._previous: datetime | None = None
        self.last_runs: dict[str, dict[str, datetime]] = {}
        """job -> plugin -> when its last run completed (``after``/``cronjob`` read it)."""
        self.finished = 0  # runs that reached a terminal state

    # --- goals ---------------------------------------------------------------------------

    def set_goals(self, goals: Mapping[str, Goal]) -> None:
        """Hold exactly ``goals`` from now on; runs of removed jobs or plugins are stopped."""
        old = self.goals
        self.goals = dict(goals)
        for key, run in list(self.runs.items()):
            goal = self.goals.get(key[0])
            if goal is None or goal.plugin(key[1]) is None:
                self._spawn(run.stop())
        for job in set(old) - set(self.goals):
            self.variables.pop(job, None)
            self.last_runs.pop(job, None)
        for job in set(self.goals) - set(old):
            for rule in self.goals[job].rules:
                for warning in rule.warnings:
                    log.warning("runner.rule_warning", job=job, rule=rule.text, warning=warning)
        self._fired = {k: v for k, v in self._fired.items() if k[0] in self.goals}
        window = max((g.windows_seconds() for g in self.goals.values()), default=0.0)
        names = (
            set().union(*(g.watched_names() for g in self.goals.values())) if self.goals else set()
        )
        self.recent.watch(names, window + 60)
        log.info("runner.goals", jobs=sorted(self.goals))

    # --- the loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.tick(self.clock())
            delay = self.tick_seconds - (time.time() % self.tick_seconds)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, delay)):
                    await stop.wait()

    def tick(self, now: datetime) -> None:
        """One evaluation round at ``now``."""
        self._previous = now
        for goal in list(self.goals.values()):
            ctx = TickContext(self.recent, now, self.last_runs.get(goal.job_id))
            for rule in goal.rules:
                try:
                    fired = rule.evaluate(ctx)
                except Exception:  # a context failure is ours: log it, keep the others going
                    log.exception("runner.rule_failed", job=goal.job_id, rule=rule.text)
                    continue
                self._act(goal, rule, fired, now)
            for plugin in goal.continuous:
                key = (goal.job_id, plugin.name)
                if key not in self.runs and time.monotonic() >= self._restart_at.get(key, 0.0):
                    self._start(goal, plugin.name)

    def _act(self, goal: Goal, rule: Rule, fired: bool, now: datetime) -> None:
        action = rule.action
        if isinstance(action, Schedule):
            if fired:
                self._start(goal, action.plugin, wall_seconds=scheduled_wall_limit(rule, action.plugin))
            return
        key = (goal.job_id, rule.text)
        rising = fired and not self._fired.get(key, False)
        self._fired[key] = fired
        if not rising:
            return
        if isinstance(action, Publish):
            value = self._trigger_value(rule)
            log.info("runner.trigger", job=goal.job_id, name=action.name, value=value)
            self._spawn(self.trigger(goal, rule, action.name, value, now))
        elif isinstance(action, Set):
            self.variables.setdefault(goal.job_id, {})[action.key] = str(action.value)
            log.info("runner.set", job=goal.job_id, key=action.key, value=action.value)

    def _trigger_value(self, rule: Rule) -> float | int | str:
        """The latest value of the first reading the rule reads (1 if it reads none)."""
        for name in rule.reading_names:
            value = self.recent.value(name)
            if value is not None:
                return value
        return 1

    def _start(self, goal: Goal, plugin_name: str, wall_seconds: float | None = None) -> None:
        key = (goal.job_id, plugin_name)
        if key in self.runs:
            return  # still running: a schedule never stacks runs of one plugin
        if self._fast_failures.get(key) and time.monotonic() < self._restart_at.get(key, 0.0):
            return  # it keeps failing at once: back off before the next try
        plugin = goal.plugin(plugin_name)
        if plugin is None:
            return
        run = PluginRun(
            goal,
            plugin,
            executor=self.executor_for(plugin),
            gate=self.gate,
            emit=self.emit_status,
            environment=self.environment,
            variables=self.variables.get(goal.job_id),
            wall_seconds=wall_seconds,
        )
        self.runs[key] = run
        task = run.start()
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._finished, run))

    def executor_for(self, plugin: GoalPlugin) -> Executor:
        """The executor that runs ``plugin`` here (the rule of docs/executors.md): the one the
        goal names (the scheduler's choice), else ``wasm`` for an entrypoint naming a
        ``.wasm``/``.wat`` file or a bundle that is a WASM module on the plugin path (no
        ``main.py``), else the node's default. One this node does not run fails the run."""
        name = plugin.executor or self._implied_executor(plugin)
        executor = self.executors.get(name)
        if executor is None:
            runs = ", ".join(sorted(self.executors))
            return Unavailable(name, f"this node does not run {name} plugins (its executors: {runs})")
        return executor

    def _implied_executor(self, plugin: GoalPlugin) -> str:
        if "wasm" not in self.executors:
            return self.executor.name
        from hivebus.edge.executors.wasm import wants_wasm

        return "wasm" if wants_wasm(plugin.bundle_id, plugin.entrypoint) else self.executor.name

    def _finished(self, run: PluginRun, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self.runs.get(run.key) is run:
            del self.runs[run.key]
        self.finished += 1
        if run.result is not None and run.result.state == "completed":
            # on the rounds' clock, which the rules read time by
            completed = self._previous or self.clock()
            self.last_runs.setdefault(run.key[0], {})[run.key[1]] = completed
        if not task.cancelled() and task.exception() is not None:
            log.error("runner.run_crashed", run_id=run.run_id, error=str(task.exception()))
        failed_fast = (
            run.result is None or run.result.state == "failed"
        ) and time.monotonic() - run.started < _FAST_EXIT_S
        failures = self._fast_failures.get(run.key, 0) + 1 if failed_fast else 0
        self._fast_failures[run.key] = failures
        first, cap = self.backoff
        self._restart_at[run.key] = time.monotonic() + min(cap, first * 2**failures)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def shutdown(self) -> None:
        """Stop every run (each reports ``stopped``) and wait for what is in progress."""
        self.goals = {}
        await asyncio.gather(
            *(run.stop() for run in list(self.runs.values())), return_exceptions=True
        )
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


SCHEDULED_RUN_WALL_SECONDS = 3600.0


def scheduled_wall_limit(rule: Rule, plugin: str) -> float:
    """How long one scheduled run may take: until the plugin's next cron fire (a run that
    outlives its period would pile up on the node), or an hour when a condition schedules it.
    Continuous plugins (named by no schedule rule) get no wall limit."""
    periods = [cron_period_seconds(expr) for name, expr in rule.cronjobs if name == plugin]
    return min(periods) if periods else SCHEDULED_RUN_WALL_SECONDS
