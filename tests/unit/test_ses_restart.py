"""Exactly-once effects across crashes, with no server: a simulated stream, a handler killed at
any point (even halfway through publishing one decision), restarted from its ack floor.

The stream keeps every message published, with no duplicate window at all: the property is
that a restarted scheduler never publishes an id twice, and, with no timer in between, ends
with exactly the outputs of a run that never crashed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.ecr import EcrHandler
from hivebus.handlers.health import HealthHandler
from hivebus.handlers.runtime import Driver
from hivebus.handlers.ses import SesHandler
from hivebus.handlers.testing import Log, app_spec, job_spec, manifest, resources
from hivebus.schemas import codec
from hivebus.schemas.ecr import BundleApproved, HardwareProfile, ProfileRecorded
from hivebus.schemas.envelope import Event
from hivebus.schemas.ses import JobRemoved, JobResumed, JobSuspended

BME = "waggle/plugin-bme680:0.2.1"
CONFIG = HandlerConfig(node_offline_after=timedelta(days=30))


def story() -> list[Event]:
    """What the scheduler's consumer sees: users, nodes, the ECR's and health's answers."""
    log = Log([EcrHandler(CONFIG), HealthHandler(CONFIG)])
    log.push(app_spec(BME), "alice")
    log.by("admin", BundleApproved(bundle_id=BME, by="admin"), BME)
    for node in ("A", "B", "C"):
        log.register_node(manifest(node, tags=["t"], cpus=2))
        log.heartbeat(node, resources(cpus=2))
    log.by(
        "handler/ecr",
        ProfileRecorded(
            bundle_id=BME,
            hardware=HardwareProfile(arch="linux/arm64"),
            node="A",
            run_id="r",
            exit_state="completed",
            cpu_seconds=9.0,
            max_rss_bytes=1,
            wall_seconds=10.0,
        ),
        BME,
    )  # 0.9 core: two jobs fill a 2-core node
    for i in range(5):
        log.submit(job_spec(tags=["t"], criteria=["WallClock(30m)"]), job_id=f"j{i}", max_nodes=2)
    log.by("alice", JobSuspended(job_id="j0", by="alice"), "j0")
    log.submit(job_spec(nodes=["A"]), job_id="j5")
    log.by("alice", JobResumed(job_id="j0", by="alice"), "j0")
    log.by("alice", JobRemoved(job_id="j1", by="alice"), "j1")
    log.submit(job_spec(tags=["t"]), job_id="j6", policy="roundrobin", max_nodes=1)
    return log.events


INPUTS = story()


@dataclass
class Stream:
    """Messages in publish order; ``seq`` is the 1-based position."""

    messages: list[Event] = field(default_factory=list)

    def publish(self, event: Event) -> int:
        self.messages.append(event)
        return len(self.messages)


@dataclass
class Process:
    """One incarnation of the scheduler: a Driver plus the consumer's position."""

    stream: Stream
    driver: Driver
    acked: int = 0  # stream seq of the last acknowledged input
    next_input: int = 0  # position in the stream to deliver next

    @classmethod
    def start(cls, stream: Stream, floor: int) -> Process:
        driver = Driver(SesHandler(CONFIG))
        pending, outputs = [], []
        for seq, event in enumerate(stream.messages, start=1):
            if seq <= floor:
                driver.history(event)
            elif event.source == "handler/ses":
                outputs.append(event)
            else:
                pending.append(event.id)
        driver.backlog(pending, outputs)
        return cls(stream, driver, acked=floor, next_input=floor)

    def pending(self) -> bool:
        return any(e.source != "handler/ses" for e in self.stream.messages[self.next_input :])

    def process_one(self, crash_after: int | None = None) -> bool:
        """Deliver the next input; False if the process crashed while publishing."""
        while self.next_input < len(self.stream.messages):
            seq = self.next_input + 1
            event = self.stream.messages[self.next_input]
            self.next_input += 1
            if event.source == "handler/ses":
                continue
            step = self.driver.deliver(event)
            for i, out in enumerate(step.publish):
                if crash_after is not None and i >= crash_after:
                    return False
                self.stream.publish(out)
            if crash_after is not None and crash_after > len(step.publish):
                return False  # killed after publishing all, before the ack
            self.acked = seq
            return True
        return True

    def tick(self, minutes: int) -> None:
        if not self.stream.messages:
            return
        clock = max(e.time for e in self.stream.messages) + timedelta(minutes=minutes)
        for out in self.driver.tick(clock):
            self.stream.publish(out)


def run(actions: list[tuple[str, int]], *, crash: tuple[int, int] | None) -> Stream:
    """Producers append inputs, the scheduler processes them; ``crash`` = (action index, outputs published)."""
    stream = Stream()
    feed = iter(INPUTS)
    process = Process.start(stream, 0)
    for index, (kind, amount) in enumerate(actions):
        if kind == "append":
            for _ in range(amount):
                event = next(feed, None)
                if event is not None:
                    stream.publish(event)
        elif kind == "tick":
            process.tick(amount)
        elif crash is not None and index == crash[0]:
            process.process_one(crash_after=crash[1])
            process = Process.start(stream, process.acked)
        else:
            process.process_one()
    for event in feed:
        stream.publish(event)
    while process.pending():
        process.process_one()
    return stream


def outputs(stream: Stream) -> list[bytes]:
    return sorted(codec.encode(e) for e in stream.messages if e.source == "handler/ses")


actions = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 6)),
        st.tuples(st.just("process"), st.just(0)),
    ),
    min_size=5,
    max_size=60,
)


@settings(max_examples=120, deadline=None)
@given(actions, st.integers(0, 59), st.integers(0, 4))
def test_a_crash_anywhere_changes_nothing_in_the_outputs(
    plan: list[tuple[str, int]], at: int, published: int
) -> None:
    reference = run(plan, crash=None)
    crashed = run(plan, crash=(at, published))
    ids = [e.id for e in crashed.messages]
    assert len(ids) == len(set(ids)), "an id was published twice"
    assert outputs(crashed) == outputs(reference)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(1, 6)),
            st.tuples(st.just("process"), st.just(0)),
            st.tuples(st.just("tick"), st.integers(1, 60)),
        ),
        min_size=5,
        max_size=60,
    ),
    st.lists(st.tuples(st.integers(0, 59), st.integers(0, 4)), max_size=3),
)
def test_crashes_between_timer_runs_never_publish_an_id_twice(
    plan: list[tuple[str, int]], crashes: list[tuple[int, int]]
) -> None:
    stream = Stream()
    feed = iter(INPUTS)
    process = Process.start(stream, 0)
    crash_at = dict(crashes)
    for index, (kind, amount) in enumerate(plan):
        if kind == "append":
            for _ in range(amount):
                if (event := next(feed, None)) is not None:
                    stream.publish(event)
        elif kind == "tick":
            process.tick(amount)
        elif index in crash_at:
            process.process_one(crash_after=crash_at[index])
            process = Process.start(stream, process.acked)
        else:
            process.process_one()
    for event in feed:
        stream.publish(event)
    while process.pending():
        process.process_one()
    ids = [e.id for e in stream.messages]
    assert len(ids) == len(set(ids))
    answered: dict[str, set[str]] = {}
    for event in stream.messages:
        if event.source == "handler/ses" and event.type in (
            "ses.job.scheduled",
            "ses.job.rejected",
        ):
            answered.setdefault(event.data.job_id, set()).add(event.type)
    assert all(len(kinds) == 1 for kinds in answered.values()), answered


def test_the_story_exercises_the_scheduler() -> None:
    stream = run([("append", 100), *[("process", 0)] * 100], crash=None)
    types = [e.type for e in stream.messages if e.source == "handler/ses"]
    assert types.count("ses.job.scheduled") >= 4 and "ses.command.rejected" in types
    assert "ses.goal.removed" in types
