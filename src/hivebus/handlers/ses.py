"""The scheduler (SES): place jobs on nodes, send each node its goal, run the job lifecycle.

Commands (``decide_command``, pure ``(state, command) -> facts``): ``ses.submit`` ->
``ses.job.scheduled`` (carrying the submission) + one ``ses.goal.assigned`` per chosen node
(to-edge); ``ses.suspend`` / ``ses.remove`` -> a ``ses.goal.removed`` per node holding a goal
and ``ses.job.suspended`` / ``ses.job.removed``; ``ses.resume`` -> the goals again and
``ses.job.resumed``; any of them refused -> one ``ses.command.rejected`` with every reason.
``plan_job`` is the submission's decision itself, also served as a dry run. How it decides:

1. the submission: the job id is new, the policy known, every science rule parses (with the
   position of an error) and names plugins of the job, success criteria are known, selectors
   and resource requests make sense;
2. each plugin's bundle is registered and the submitter may READ it;
3. target nodes: ``nodes`` (each must be registered) and nodes carrying every ``nodeTags``
   tag; the submitter must be allowed on them (``node.config.updated`` settings
   ``allow_users``/``allow_groups``);
4. per node and plugin: the selector matches (else the plugin just does not go there), the
   bundle is built for the node's arch, and approved unless the node is tagged ``virtual``;
5. devices (see ``devices``): each device the plugin claims (its app's sage.yaml
   ``resources``, its ``pluginSpec.resource`` ``device.<name>`` keys) is served by a distinct
   device of the node, and an exclusive device another goal's plugin holds on that node is
   not available (goals count as running at once, as for fit; the plugins of one job on one
   node take devices in the job's order);
6. fit (see ``fit``): the node's offer minus what its current goals need holds the plugins'
   demand, and no plugin's profiled wall time exceeds its cron period;
7. the policy ranks the nodes that fit (``placement``); a job with explicit ``nodes`` (and no
   ``max_nodes``) needs every one of them, one with tags takes every node that fits (or the
   ``max_nodes`` best); each plugin must land on at least one node.

Suspend and remove send ``ses.goal.removed`` to every node holding a goal (which frees their
devices); resume re-sends the goals if they still fit and their devices are still free (else it
is refused, with the reason, as a dead letter). A node that
goes offline keeps its goals. A user's request event of a command's type (logs written before
commands existed, a raw ``hivebus publish``) is decided as that command. ``WallClock(d)`` completes a job ``d`` after it was scheduled,
by the hub's clock: ``ses.job.completed`` and the goal removals, with ids derived from the
``ses.job.scheduled`` event so the timer and a replay agree.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from pydantic import ValidationError

from hivebus.errors import DecodeError, RuleSyntaxError
from hivebus.handlers import offload
from hivebus.handlers.base import (
    NOTHING,
    Decision,
    Outputs,
    broken_input,
    timed_event,
    validation_reasons,
)
from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.criteria import criterion_problem, wall_clock
from hivebus.handlers.devices import Claim, Holder, app_claims, assign, held_devices, job_claims
from hivebus.handlers.directory import INPUTS as DIRECTORY_INPUTS
from hivebus.handlers.fit import Demand, Demands, demand, over, parse_request
from hivebus.handlers.nodes import NodeView, Usage
from hivebus.handlers.placement import POLICIES, Candidate
from hivebus.handlers.selectors import selector_mismatch, selector_problem
from hivebus.handlers.ses_state import JobView, SesState, evolve, lifecycle_problem
from hivebus.rules import Rule, Schedule, cron_period_seconds, parse_rule
from hivebus.schemas.commands import command_of
from hivebus.schemas.envelope import Event
from hivebus.schemas.fields import WASM_PLATFORM
from hivebus.schemas.node import DeviceSpec
from hivebus.schemas.offload import OffloadRequested
from hivebus.schemas.ses import (
    GoalAssigned,
    GoalDevice,
    GoalPlugin,
    GoalRemoved,
    JobCompleted,
    JobPlugin,
    JobRejected,
    JobRemoved,
    JobResumed,
    JobScheduled,
    JobState,
    JobSubmitted,
    JobSuspended,
    Placement,
    ResourceRequest,
    SesCommandRejected,
    plugin_name_problem,
)

SOURCE: Final = "handler/ses"
COMPLETION: Final = "handler/ses/completion"
MAX_DETAILS: Final = 6


@dataclass(slots=True)
class Plan:
    """The scheduler's answer to a submission, before it becomes events."""

    job_id: str
    user: str
    policy: str
    placements: list[Placement] = field(default_factory=list)
    goals: list[GoalAssigned] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Why nodes that matched were left out, when the job was placed anyway."""

    @property
    def accepted(self) -> bool:
        return not self.reasons

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "user": self.user,
            "policy": self.policy,
            "decision": "scheduled" if self.accepted else "rejected",
            "placements": [p.model_dump(mode="json") for p in self.placements],
            "goals": [g.model_dump(mode="json") for g in self.goals],
            "reasons": list(self.reasons),
            "notes": list(self.notes),
        }


@dataclass(slots=True)
class _Plugin:
    spec: JobPlugin
    bundle_id: str
    request: ResourceRequest
    architectures: list[str]
    approved: bool
    claims: list[Claim] = field(default_factory=list)


def _rule_reason(index: int, text: str, exc: RuleSyntaxError) -> str:
    headline = str(exc).split("\n", 1)[0].removeprefix("bad science rule ")
    return f"scienceRules[{index}] {text!r}: {headline}"


def check_rules(texts: list[str], plugins: set[str]) -> tuple[list[Rule], list[str]]:
    rules: list[Rule] = []
    reasons: list[str] = []
    for i, text in enumerate(texts):
        try:
            rule = parse_rule(text)
        except RuleSyntaxError as exc:
            reasons.append(_rule_reason(i, text, exc))
            continue
        named = [rule.plugin] if rule.plugin else []
        named += [plugin for plugin, _ in rule.cronjobs if plugin]  # '': the cron alone
        for plugin in named:
            if plugin not in plugins:
                reasons.append(
                    f"scienceRules[{i}] {text!r}: {plugin!r} is not a plugin of this job "
                    f"(plugins: {', '.join(sorted(plugins))})"
                )
        rules.append(rule)
    return rules, reasons


def cron_periods(rules: list[Rule]) -> dict[str, float]:
    """The shortest cron period each plugin is scheduled at, in seconds."""
    periods: dict[str, float] = {}
    for rule in rules:
        if not isinstance(rule.action, Schedule):
            continue
        for plugin, expr in rule.cronjobs:
            if plugin == rule.action.plugin:
                periods[plugin] = min(periods.get(plugin, float("inf")), cron_period_seconds(expr))
    return periods


def committed(
    state: SesState,
    node: NodeView,
    *,
    except_job: str | None = None,
    demands: Demands | None = None,
) -> Usage:
    """What the goals ``node`` holds now need."""
    need = demands or Demands(state.catalog)
    total = Usage()
    for job_id, goal in state.node_goals.get(node.id, {}).items():
        if job_id == except_job:
            continue
        for plugin in goal.plugins:
            total = total + need(plugin.bundle_id, plugin.resources, node).usage
    return total


def _fit(
    state: SesState,
    node: NodeView,
    demands: dict[str, Demand],
    periods: dict[str, float],
    *,
    except_job: str | None = None,
    memo: Demands | None = None,
) -> tuple[Usage, Usage, list[str]]:
    problems = []
    for name, one in sorted(demands.items()):
        period = periods.get(name)
        if one.wall is not None and period is not None and one.wall > period:
            problems.append(
                f"plugin {name} runs {one.wall:g} s ({one.basis}) but is scheduled every {period:g} s"
            )
    load = committed(state, node, except_job=except_job, demands=memo)
    need = Usage()
    for item in demands.values():
        need = need + item.usage
    over_by = over(node.capacity, load, need)
    if over_by:
        bases = ", ".join(f"{name} {d.basis}" for name, d in sorted(demands.items()))
        problems.append(f"does not fit: {'; '.join(over_by)} ({bases})")
    return load, need, problems


def _details(items: list[str]) -> str:
    shown = items[:MAX_DETAILS]
    more = f"; and {len(items) - MAX_DETAILS} more" if len(items) > MAX_DETAILS else ""
    return "; ".join(shown) + more


def plan_job(state: SesState, submitted: JobSubmitted) -> Plan:
    """Decide a submission against ``state`` (which it does not change)."""
    config = state.config
    catalog = state.catalog
    spec = submitted.spec
    user = submitted.user
    plan = Plan(
        job_id=submitted.job_id, user=user, policy=submitted.policy or config.default_policy
    )
    reasons = plan.reasons
    if submitted.job_id in state.jobs:
        reasons.append(f"job id {submitted.job_id!r} is already used")
    policy = POLICIES.get(plan.policy)
    if policy is None:
        reasons.append(f"unknown placement policy {plan.policy!r} (one of {', '.join(POLICIES)})")
    names = {p.name for p in spec.plugins}
    reasons += [f"plugins: {why}" for n in sorted(names) if (why := plugin_name_problem(n))]
    rules, rule_reasons = check_rules(spec.science_rules, names)
    reasons += rule_reasons
    for i, criterion in enumerate(spec.success_criteria):
        if (problem := criterion_problem(criterion)) is not None:
            reasons.append(f"successcriteria[{i}]: {problem}")

    plugins: dict[str, _Plugin] = {}
    for p in spec.plugins:
        bid = p.plugin_spec.bundle_id
        request, problems = parse_request(p.plugin_spec.resource)
        reasons += [f"plugin {p.name}: resource {problem}" for problem in problems]
        reasons += [
            f"plugin {p.name}: {problem}"
            for key, value in sorted(p.plugin_spec.selector.items())
            if (problem := selector_problem(key, value)) is not None
        ]
        claims, problems = job_claims(p.plugin_spec.resource)
        reasons += [f"plugin {p.name}: {problem}" for problem in problems]
        bundle = catalog.live(bid)
        if bundle is None:
            reasons.append(f"plugin {p.name}: bundle {bid} is not registered in the ECR")
        elif not catalog.can(user, "READ", bid):
            reasons.append(f"plugin {p.name}: {user} has no READ on bundle {bid} (it is private)")
        else:
            declared, problems = app_claims(bundle.app.resource_list)
            reasons += [f"plugin {p.name}: bundle {bid}'s sage.yaml {pr}" for pr in problems]
            plugins[p.name] = _Plugin(
                p,
                bid,
                request,
                list(bundle.app.source.architectures),
                bundle.approved,
                declared + claims,
            )

    required = set(spec.nodes) if submitted.max_nodes is None else set()
    targets: list[NodeView] = []
    for node_id in spec.nodes:
        node = state.nodes.get(node_id)
        if node is None or not node.registered:
            reasons.append(f"node {node_id} is not registered")
        else:
            targets.append(node)
    if spec.node_tags:
        wanted = set(spec.node_tags)
        targets += [
            n
            for _, n in sorted(state.nodes.items())
            if n.registered and wanted <= n.tags and n.id not in spec.nodes
        ]
    if not targets and not any(r.startswith("node ") for r in reasons):
        asked = [f"nodes {', '.join(spec.nodes)}"] if spec.nodes else []
        asked += [f"nodeTags {', '.join(spec.node_tags)}"] if spec.node_tags else []
        reasons.append(f"no registered node matches {' and '.join(asked)}")

    groups = catalog.groups_of(user)
    why_not: dict[str, list[str]] = defaultdict(list)  # plugin -> why each node did not take it
    node_problems: dict[str, list[str]] = defaultdict(list)
    candidates: list[Candidate] = []
    periods = cron_periods(rules)
    memo = Demands(catalog)
    executors_at: dict[tuple[str, str], str | None] = {}  # (node, plugin) -> executor there
    devices_at: dict[tuple[str, str], list[GoalDevice]] = {}  # (node, plugin) -> its devices
    for node in targets:
        if not node.allows(user, groups):
            node_problems[node.id].append(
                f"node {node.id}: {user} is not allowed to run jobs there"
            )
            for name in plugins:
                why_not[name].append(f"{node.id}: {user} is not allowed there")
            continue
        placed: dict[str, Demand] = {}
        held: dict[str, Holder] | None = None  # read once a plugin claims a device
        for name, plugin in plugins.items():
            mismatch = selector_mismatch(plugin.spec.plugin_spec.selector, node)
            if mismatch is not None:
                why_not[name].append(f"{node.id}: {mismatch}")
                continue
            problems = []
            executor, problem = build_for(plugin, node)
            if problem is not None:
                problems.append(problem)
            if plugin.spec.plugin_spec.privileged and not node.allows_privileged:
                problems.append(
                    "it asks for privileged: true and the node's policy does not allow it "
                    "(node setting allow_privileged: true)"
                )
            if not plugin.approved and not node.virtual:
                problems.append(
                    f"bundle {plugin.bundle_id} is not approved (unapproved bundles run only on nodes tagged 'virtual')"
                )
            if not problems and plugin.claims:
                if held is None:  # this job's plugins add theirs as they take them
                    held = node_held_devices(state, node)
                got = assign(node.id, plugin.claims, node_devices(node), held)
                problems += [f"claim {p}" for p in got.problems]
                devices_at[(node.id, name)] = [_goal_device(d) for d in got.devices]
                held |= {d.name: Holder(submitted.job_id, name) for d in got.devices if d.exclusive}
            if problems:
                node_problems[node.id] += [f"node {node.id}: plugin {name}: {p}" for p in problems]
                why_not[name] += [f"{node.id}: {p}" for p in problems]
                continue
            placed[name] = memo(plugin.bundle_id, plugin.request, node)
            executors_at[(node.id, name)] = executor
        if not placed:
            continue
        load, need, problems = _fit(state, node, placed, periods, memo=memo)
        if problems:
            node_problems[node.id] += [f"node {node.id}: {p}" for p in problems]
            for name in placed:
                why_not[name] += [f"{node.id}: {p}" for p in problems]
            continue
        candidates.append(Candidate(node, tuple(sorted(placed)), need, load))

    for node_id in spec.nodes:
        if node_id in required:
            reasons += node_problems.get(node_id, [])
    if reasons or policy is None:
        return plan
    ranked = policy.rank(candidates, state)
    chosen = ranked if submitted.max_nodes is None else ranked[: submitted.max_nodes]
    for candidate, _ in ranked[len(chosen) :]:
        plan.notes.append(
            f"node {candidate.node.id}: fits, but {plan.policy} preferred others (max_nodes {submitted.max_nodes})"
        )
    placed_plugins = {name for candidate, _ in chosen for name in candidate.plugins}
    for name in sorted(plugins):
        if name not in placed_plugins:
            details = _details(why_not.get(name, [])) or "no candidate node"
            reasons.append(f"plugin {name}: no node can run it ({details})")
    if reasons:
        return plan
    for _, problems in sorted(node_problems.items()):
        plan.notes += problems
    for candidate, score in chosen:
        node_plugins = [plugins[name] for name in candidate.plugins]
        plan.placements += [
            Placement(
                node=candidate.node.id,
                plugin=p.spec.name,
                bundle_id=p.bundle_id,
                score=score,
                devices=[d.name for d in devices_at.get((candidate.node.id, p.spec.name), [])],
            )
            for p in node_plugins
        ]
        plan.goals.append(
            GoalAssigned(
                node=candidate.node.id,
                job_id=submitted.job_id,
                plugins=[
                    _goal_plugin(
                        p,
                        executors_at.get((candidate.node.id, p.spec.name)),
                        devices_at.get((candidate.node.id, p.spec.name)),
                    )
                    for p in node_plugins
                ],
                science_rules=[
                    r.text
                    for r in rules
                    if not isinstance(r.action, Schedule) or r.action.plugin in candidate.plugins
                ],
                success_criteria=list(spec.success_criteria),
            )
        )
    return plan


def build_for(plugin: _Plugin, node: NodeView) -> tuple[str | None, str | None]:
    """(the executor the node runs ``plugin`` with, None for its default; why it cannot).

    A build for the node's architecture runs with the selector's ``executor`` or the node's
    default; otherwise a ``wasi/wasm`` build runs on a node whose executors include ``wasm``.
    """
    chosen = plugin.spec.plugin_spec.selector.get("executor")
    if node.arch in plugin.architectures:
        return chosen, None
    executors = node.manifest.executors if node.manifest is not None else []
    if WASM_PLATFORM in plugin.architectures:
        if "wasm" in executors:
            return "wasm", None
        return None, (
            f"bundle {plugin.bundle_id} is built for {', '.join(plugin.architectures)}; the node is"
            f" {node.arch} and its executors ({', '.join(executors) or 'none'}) do not include wasm"
        )
    return (
        None,
        f"bundle {plugin.bundle_id} is built for {', '.join(plugin.architectures)}, the node is {node.arch}",
    )


def node_devices(node: NodeView) -> list[DeviceSpec]:
    return list(node.manifest.devices) if node.manifest is not None else []


def node_held_devices(
    state: SesState, node: NodeView, *, except_job: str | None = None
) -> dict[str, Holder]:
    """The exclusive devices of ``node`` the goals it holds now claimed, and who holds each."""
    goals = [
        (job_id, [(p.name, [d.name for d in p.devices or []]) for p in goal.plugins])
        for job_id, goal in sorted(state.node_goals.get(node.id, {}).items())
        if job_id != except_job
    ]
    return held_devices(goals, node_devices(node))


def _goal_device(device: DeviceSpec) -> GoalDevice:
    return GoalDevice(
        name=device.name, type=device.type, path=device.path, exclusive=device.exclusive
    )


def _goal_plugin(
    plugin: _Plugin, executor: str | None = None, devices: list[GoalDevice] | None = None
) -> GoalPlugin:
    spec = plugin.spec.plugin_spec
    return GoalPlugin(
        devices=devices or None,
        executor=executor,
        name=plugin.spec.name,
        bundle_id=plugin.bundle_id,
        image=spec.image,
        args=list(spec.args),
        entrypoint=spec.entrypoint,
        env=dict(spec.env),
        resources=plugin.request,
    )


def rejected(command: Event, job_id: str, reasons: list[str]) -> Decision:
    """The one fact a refused command leaves: who, what, every reason."""
    spec = command_of(command)
    assert spec is not None
    out = Outputs(command, SOURCE)
    out.emit(
        SesCommandRejected(
            command=spec.name,
            by=getattr(command.data, spec.actor),
            job_id=job_id,
            reasons=reasons,
            data=command.data.model_dump(mode="json"),
        ),
        job_id,
    )
    return out.decision()


def decide_submit(state: SesState, event: Event) -> Decision:
    submitted: JobSubmitted = event.data
    plan = plan_job(state, submitted)
    out = Outputs(event, SOURCE)
    if not plan.accepted:
        return rejected(event, submitted.job_id, plan.reasons)
    out.emit(
        JobScheduled(
            job_id=submitted.job_id,
            placements=plan.placements,
            policy=plan.policy,
            user=submitted.user,
            spec=submitted.spec,
            max_nodes=submitted.max_nodes,
        ),
        submitted.job_id,
    )
    for goal in plan.goals:
        out.emit(goal, submitted.job_id)
    return out.decision()


def resume_problems(state: SesState, job: JobView) -> list[str]:
    problems = []
    catalog = state.catalog
    for node_id, goal in sorted(job.planned.items()):
        node = state.nodes.get(node_id)
        if node is None:
            continue
        demands: dict[str, Demand] = {}
        for plugin in goal.plugins:
            if catalog.live(plugin.bundle_id) is None:
                problems.append(f"bundle {plugin.bundle_id} is no longer registered")
            elif not catalog.can(job.user, "READ", plugin.bundle_id):
                problems.append(f"{job.user} no longer has READ on {plugin.bundle_id}")
            demands[plugin.name] = demand(catalog, plugin.bundle_id, plugin.resources, node)
        rules = [r for text in goal.science_rules if (r := _parsed(text)) is not None]
        _, _, fit_problems = _fit(state, node, demands, cron_periods(rules), except_job=job.id)
        problems += [f"node {node_id}: {p}" for p in fit_problems]
        problems += [f"node {node_id}: {p}" for p in device_problems(state, node, goal, job.id)]
    return problems


def device_problems(state: SesState, node: NodeView, goal: GoalAssigned, job_id: str) -> list[str]:
    """Why the devices ``goal`` names are not the job's to take again on ``node``: a device
    the manifest no longer lists, an exclusive one another goal holds now."""
    listed = {d.name: d for d in node_devices(node)}
    held = node_held_devices(state, node, except_job=job_id)
    problems = []
    for plugin in goal.plugins:
        for device in plugin.devices or []:
            if device.name not in listed:
                problems.append(
                    f"plugin {plugin.name}: device {device.name} is no longer listed by {node.id}"
                )
            elif device.name in held:
                problems.append(
                    f"plugin {plugin.name}: {node.id}'s {listed[device.name].describe()} is "
                    f"claimed by {held[device.name]}"
                )
    return problems


def _parsed(text: str) -> Rule | None:
    try:
        return parse_rule(text)
    except RuleSyntaxError:
        return None


def decide_lifecycle(state: SesState, event: Event) -> Decision:
    data: JobSuspended | JobResumed | JobRemoved = event.data
    problem = lifecycle_problem(state, data)
    if problem is not None:
        return rejected(event, data.job_id, [problem])
    job = state.jobs[data.job_id]
    out = Outputs(event, SOURCE)
    if isinstance(data, JobResumed):
        problems = resume_problems(state, job)
        if problems:
            return rejected(event, job.id, [f"cannot resume job {job.id}: {p}" for p in problems])
        for _, goal in sorted(job.planned.items()):
            out.emit(goal, job.id)
    else:
        reason = "suspended" if isinstance(data, JobSuspended) else "removed"
        for node_id in sorted(job.goals):
            out.emit(GoalRemoved(node=node_id, job_id=job.id, reason=reason), job.id)
    # The fact comes last: the goal changes keep the ids an older release gave them.
    out.emit(data, job.id)
    return out.decision()


def due_completions(state: SesState, now: datetime) -> list[Event]:
    """``ses.job.completed`` and goal removals for every running job past its ``WallClock``."""
    events: list[Event] = []
    for job_id in sorted(state.jobs):
        job = state.jobs[job_id]
        if job.state != JobState.RUNNING or job.deadline is None or job.scheduled is None:
            continue
        if job.deadline > now:
            continue
        seconds = wall_clock(job.spec.success_criteria)
        criterion = next(
            (c for c in job.spec.success_criteria if c.strip().startswith("WallClock")), ""
        )
        payloads: list[Any] = [JobCompleted(job_id=job.id, criterion=criterion.strip())]
        payloads += [
            GoalRemoved(node=n, job_id=job.id, reason="completed") for n in sorted(job.goals)
        ]
        when = job.scheduled.time + timedelta(seconds=seconds or 0)
        events += [
            timed_event(
                job.scheduled,
                payload,
                source=SOURCE,
                producer=COMPLETION,
                subject=job.id,
                when=when,
                index=i,
            )
            for i, payload in enumerate(payloads)
        ]
    return events


def decide_command(state: SesState, command: Event) -> Decision:
    """The facts a scheduler command leads to on ``state`` (which it does not change)."""
    if isinstance(command.data, JobSubmitted):
        return decide_submit(state, command)
    return decide_lifecycle(state, command)


def decide(state: SesState, event: Event) -> Decision:
    if event.source == SOURCE:
        return NOTHING
    if isinstance(event.data, OffloadRequested):
        return offload.decide_request(state, event, SOURCE)
    spec = command_of(event)
    if spec is not None and spec.decider == "ses":
        return decide_command(state, event)
    return NOTHING


def salvage_submit(raw: bytes) -> Decision | None:
    """Reject a submission that does not decode (no plugins, a bad image...) with every
    problem, when it names a job id to answer; otherwise None (dead letter)."""
    broken = broken_input(raw, JobSubmitted.event_type)
    if broken is None:
        return None
    cause, data = broken
    try:
        rejected = JobRejected(
            job_id=data["job_id"], reasons=validation_reasons(JobSubmitted, data)
        )
    except (KeyError, TypeError, ValidationError):
        return None
    out = Outputs(cause, SOURCE)
    out.emit(rejected, rejected.job_id)
    return out.decision()


class SesHandler:
    """The scheduler as the runtime drives it."""

    name = "ses"
    source = SOURCE
    inputs = (
        "evt.ecr.>",
        "evt.ses.job.submitted.>",
        "evt.ses.job.suspended.>",
        "evt.ses.job.resumed.>",
        "evt.ses.job.removed.>",
        "evt.ses.job.scheduled.>",
        "evt.node.>",
        "fromedge.*.node.registered",
        "fromedge.*.node.heartbeat",
        "fromedge.*.ses.offload.requested",
        "toedge.*.node.config.updated",
        "toedge.*.ses.goal.>",
        *DIRECTORY_INPUTS,
    )
    outputs = (
        "evt.ses.job.rejected.>",
        "evt.ses.command.rejected.>",
        "evt.ses.job.completed.>",
        "toedge.*.ses.offload.decided",
    )
    redelivered = frozenset(
        {
            "ses.job.scheduled",
            "ses.job.suspended",
            "ses.job.resumed",
            "ses.job.removed",
            "ses.goal.assigned",
            "ses.goal.removed",
        }
    )
    """Own facts the inputs deliver again (how replicas see each other's decisions)."""

    def __init__(self, config: HandlerConfig | None = None) -> None:
        self.config = config or HandlerConfig()

    def initial(self) -> SesState:
        return SesState.empty(self.config)

    def evolve(self, state: SesState, event: Event) -> None:
        evolve(state, event)

    def decide(self, state: SesState, event: Event) -> Decision:
        return decide(state, event)

    def decide_command(self, state: SesState, command: Event) -> Decision:
        return decide_command(state, command)

    def aggregate(self, command: Event) -> tuple[str, str | None]:
        """The facts one decision is checked against (optimistic concurrency), as an event
        type glob and an aggregate key: the job's own facts."""
        return "ses.*.*", command.data.job_id

    def clock(self, event: Event) -> datetime | None:
        """Hub events tell the time (node clocks do not)."""
        return None if event.source.startswith("node/") else event.time

    def tick(self, state: SesState, now: datetime) -> list[Event]:
        return due_completions(state, now)

    def salvage(self, raw: bytes, error: DecodeError) -> Decision | None:
        return salvage_submit(raw) if error.event_type == JobSubmitted.event_type else None

    def plan(self, state: SesState, submitted: JobSubmitted) -> Plan:
        return plan_job(state, submitted)
