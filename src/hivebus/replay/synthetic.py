"""A synthetic but realistic history: the events a small network produces, in log order.

Nodes register and heartbeat, lose and regain sensors; the ECR registers, approves and makes
public the bundles users push (only its facts: commands are never stored); the scheduler places
and assigns the jobs users submit; nodes run the plugins (``plugin.status`` from queued to
completed or failed, with measured cost), the ECR records profiles, rules fire triggers, and sensors stream readings. Node events carry a
per-node ``nodeseq`` shared by readings and lifecycle events, as an edge outbox numbers them.

Deterministic for a seed (ids excepted), so tests, benchmarks and demos can compare views
built from it. ``history(...)`` returns the events; ``stream(...)`` yields them lazily.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from hivebus.schemas.data import Reading
from hivebus.schemas.ecr import (
    AppResources,
    AppSource,
    AppSpec,
    BundleApproved,
    BundlePushed,
    BundleRegistered,
    HardwareProfile,
    PermissionGranted,
    ProfileRecorded,
)
from hivebus.schemas.envelope import Event, Payload
from hivebus.schemas.node import (
    Hardware,
    NodeHeartbeat,
    NodeManifest,
    NodeOffline,
    NodeOnline,
    NodeRegistered,
    NodeResources,
    Perf,
    PluginStatus,
    SensorLost,
    SensorRestored,
    SensorSpec,
    TriggerFired,
)
from hivebus.schemas.ses import (
    GoalAssigned,
    GoalPlugin,
    JobPlugin,
    JobScheduled,
    JobSpec,
    JobSubmitted,
    Placement,
    PluginSpec,
)

READING_NAMES = ("env.temperature", "env.relative_humidity", "env.pressure", "sys.load1")
RUN_STATES = ("queued", "scheduled", "initializing", "running")


class _Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def tick(self, ms: int = 5) -> datetime:
        self.now += timedelta(milliseconds=ms)
        return self.now


class _Node:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.nodeseq = 0
        self.source = f"node/{node_id}"

    def emit(self, payload: Payload, when: datetime) -> Event:
        self.nodeseq += 1
        return Event.new(payload, source=self.source, subject=self.node_id, time=when, nodeseq=self.nodeseq)


def stream(
    *, nodes: int = 3, readings: int = 1000, jobs: int = 2, seed: int = 0, start: datetime | None = None,
    first_node: int = 1,
) -> Iterator[Event]:
    """Events of a network of ``nodes`` nodes (``W001``... from ``first_node``) producing
    about ``readings`` readings."""
    rng = random.Random(seed)
    clock = _Clock(start or datetime(2025, 1, 1, tzinfo=UTC))
    fleet = [_Node(f"W{first_node + i:03d}") for i in range(nodes)]
    bundles = ["waggle/plugin-bme680:0.2.1", "waggle/plugin-raingauge:1.0.0"]

    for node in fleet:
        yield node.emit(NodeRegistered(manifest=_manifest(node.node_id), agent_version="0.1.0"), clock.tick())
    for bundle_id in bundles:
        yield from _bundle(bundle_id, clock)
    for j in range(jobs):
        yield from _job(f"job-{j + 1}", bundles[j % len(bundles)], fleet, clock)

    runs = 0
    for i in range(readings):
        node = fleet[i % len(fleet)]
        name = READING_NAMES[i % len(READING_NAMES)]
        when = clock.tick(1)
        value: int | float | str = round(rng.uniform(-10, 40), 3)
        if name == "sys.load1" and i % 7 == 0:
            value = rng.randint(0, 8)
        reading = Reading(
            name=name,
            value=value,
            timestamp=int(when.timestamp() * 1e9) + i % 1000,
            meta={"sensor": "bme680", "vsn": node.node_id, "plugin": bundles[0]},
        )
        yield node.emit(reading, when)
        if i % 97 == 0:
            yield node.emit(_heartbeat(node.node_id, rng, i), clock.tick())
        if i % 211 == 0:
            runs += 1
            job = runs % max(jobs, 1)  # a run of job-N runs that job's bundle
            yield from _run(node, f"run-{runs:06d}", f"job-{job + 1}", bundles[job % len(bundles)], rng, clock)
        if i % 509 == 0:
            yield node.emit(SensorLost(node=node.node_id, sensor="raingauge", reason="silent for 300s"), clock.tick())
        if i % 509 == 250:
            yield node.emit(SensorRestored(node=node.node_id, sensor="raingauge"), clock.tick())
        if i % 613 == 0:
            fired = TriggerFired(node=node.node_id, job_id="job-1", rule="publish(heat.alert): v('env.temperature') > 35",
                                 name="heat.alert", value=rng.uniform(35, 40), time=clock.tick())
            yield node.emit(fired, clock.tick())
        if i % 733 == 0 and i:
            yield Event.new(NodeOffline(node=node.node_id, last_seen=clock.now, reason="no heartbeat for 60s"),
                            source="handler/presence", subject=node.node_id, time=clock.tick())
            yield Event.new(NodeOnline(node=node.node_id), source="handler/presence", subject=node.node_id,
                            time=clock.tick())


def history(**kwargs: object) -> list[Event]:
    return list(stream(**kwargs))  # type: ignore[arg-type]


def _manifest(node_id: str) -> NodeManifest:
    return NodeManifest(
        node_id=node_id,
        vsn=node_id,
        tags=["urban", "raingauge"],
        hardware=Hardware(arch="linux/arm64", cpus=6, memory=8 * 2**30, disk=200 * 2**30, gpu="nvidia-jetson-xavier"),
        executors=["process", "docker"],
        sensors=[
            SensorSpec(name="bme680", kind="env", device="/dev/i2c-1", expects=["env.temperature"], max_silence=120),
            SensorSpec(name="raingauge", kind="env", device="/dev/ttyUSB0", expects=["env.raingauge.uint"]),
        ],
        node_class="wsn",
    )


def _bundle(bundle_id: str, clock: _Clock) -> Iterator[Event]:
    namespace, rest = bundle_id.split("/")
    name, version = rest.split(":")
    app = AppSpec(
        namespace=namespace,
        name=name,
        version=version,
        description=f"{name} reads a sensor",
        keywords=["sensor", name],
        authors=["Ada Example <ada@example.org>"],
        source=AppSource(url=f"https://github.com/example/{name}", branch="main",
                         architectures=["linux/amd64", "linux/arm64"]),
        resources=AppResources(cpu=0.25, memory=128 * 2**20),
    )
    # Commands are never stored: each fact is caused by one (its id is the causation id).
    push = Event.new(BundlePushed(app=app, pusher="ada"), source="user/ada", subject=bundle_id, time=clock.tick())
    yield push.caused(BundleRegistered(bundle_id=bundle_id, owner="ada", pusher="ada", app=app),
                      source="handler/ecr", subject=bundle_id, producer="ecr", index=0)
    approve = Event.new(BundleApproved(bundle_id=bundle_id, by="reviewer"), source="user/reviewer",
                        subject=bundle_id, time=clock.tick())
    yield approve.caused(approve.data, source="handler/ecr", subject=bundle_id, producer="ecr", index=0)
    grant = Event.new(
        PermissionGranted(resource=bundle_id, grantee_type="group", grantee="AllUsers", permission="READ", by="ada"),
        source="user/ada", subject=bundle_id, time=clock.tick(),
    )
    yield grant.caused(grant.data, source="handler/ecr", subject=bundle_id, producer="ecr", index=0)


def _job(job_id: str, bundle_id: str, fleet: list[_Node], clock: _Clock) -> Iterator[Event]:
    plugin = bundle_id.split("/")[1].split(":")[0]
    spec = JobSpec(
        name=job_id,
        plugins=[JobPlugin(name=plugin, plugin_spec=PluginSpec(image=f"registry.sagecontinuum.org/{bundle_id}"))],
        nodes=[n.node_id for n in fleet],
        science_rules=[f"schedule({plugin}): cronjob('{plugin}', '*/5 * * * *')"],
        success_criteria=["WallClock(1d)"],
    )
    submitted = Event.new(JobSubmitted(job_id=job_id, user="ada", spec=spec), source="user/ada",
                          subject=job_id, time=clock.tick())  # the ses.submit command, not stored
    placements = [Placement(node=n.node_id, plugin=plugin, bundle_id=bundle_id, score=1.0) for n in fleet]
    yield submitted.caused(JobScheduled(job_id=job_id, placements=placements, policy="fit", user="ada", spec=spec),
                           source="handler/ses", subject=job_id, producer="ses", index=0)
    for i, node in enumerate(fleet):
        goal = GoalAssigned(node=node.node_id, job_id=job_id, plugins=[
            GoalPlugin(name=plugin, bundle_id=bundle_id, image=f"registry.sagecontinuum.org/{bundle_id}")
        ], science_rules=list(spec.science_rules))
        yield submitted.caused(goal, source="handler/ses", subject=job_id, producer="ses", index=i + 1)


def _heartbeat(node_id: str, rng: random.Random, i: int) -> NodeHeartbeat:
    return NodeHeartbeat(
        node=node_id,
        resources=NodeResources(cpus=6, mem_total=8 * 2**30, mem_avail=rng.randint(2, 6) * 2**30,
                                disk_total=200 * 2**30, disk_avail=150 * 2**30, load1=round(rng.uniform(0, 4), 2)),
        uptime_seconds=float(i),
        dropped={"readings.outbox_full": i // 1000} if i >= 1000 else {},
    )


def _run(node: _Node, run_id: str, job_id: str, bundle_id: str, rng: random.Random, clock: _Clock) -> Iterator[Event]:
    plugin = bundle_id.split("/")[1].split(":")[0]
    common = {"node": node.node_id, "job_id": job_id, "plugin": plugin, "bundle_id": bundle_id, "run_id": run_id}
    for state in RUN_STATES:
        yield node.emit(PluginStatus(**common, state=state), clock.tick())  # type: ignore[arg-type]
    failed = rng.random() < 0.1
    perf = Perf(cpu_seconds=round(rng.uniform(0.1, 5), 3), max_rss_bytes=rng.randint(50, 200) * 2**20,
                wall_seconds=round(rng.uniform(1, 30), 3), gpu_percent=round(rng.uniform(0, 60), 1))
    hardware = HardwareProfile(arch="linux/arm64", gpu="nvidia-jetson-xavier", node_class="wsn")
    final = PluginStatus(**common, state="failed" if failed else "completed", exit_code=1 if failed else 0,  # type: ignore[arg-type]
                         reason="exit code 1" if failed else "", log_tail=["done"], perf=perf, hardware=hardware)
    status = node.emit(final, clock.tick())
    yield status
    yield status.caused(
        ProfileRecorded(bundle_id=bundle_id, hardware=hardware, node=node.node_id, run_id=run_id, job_id=job_id,
                        exit_state="failed" if failed else "completed", exit_code=final.exit_code,
                        cpu_seconds=perf.cpu_seconds, max_rss_bytes=perf.max_rss_bytes,
                        gpu_percent=perf.gpu_percent, wall_seconds=perf.wall_seconds),
        source="handler/ecr", subject=bundle_id, producer="ecr-profiles", index=0,
    )
