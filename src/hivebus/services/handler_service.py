"""One handler, run on a durable JetStream pull consumer: decide, publish, then acknowledge.

Start-up (``resume``): read the consumer's ack floor, fold the handler's subjects from
sequence 1 up to it, note what lies beyond it (inputs not acknowledged yet, outputs already
published) and re-create the durable consumer to start right after the floor: messages a
killed process had fetched but not acknowledged come back at once instead of after
``ack_wait``. Deleting and re-creating the consumer is safe because a handler runs as one
instance and the ``Driver`` never answers an input twice, even one it sees again.

Then messages are fetched in batches, decided one at a time in stream order (each on the
state the previous ones left), their outputs published in one pipelined round (waiting for
JetStream's acks), and only then acknowledged. If publishing fails the handler stops
acknowledging, rebuilds its state from the log and starts again.

Why not a FastStream subscriber (as first planned): FastStream 0.7's JetStream pull
subscriber runs the messages of a fetched batch concurrently (an ``anyio`` task group), so a
fold would see them out of order; its batch mode (``PullSub(batch=True)``), which does hand a
batch over in order, keeps re-fetching to fill the batch until its timeout, and on this
machine it left single messages stranded for a full ``ack_wait`` (300 sends 0-120 ms apart:
p50 37 ms, max 60 s); such a message comes back after later ones were processed, that is out
of order, and a handler must never decide out of order. nats-py's ``fetch`` in a loop (as in
``Bus.consume``; here with the batch boundary visible) on the same test: p50 1.2 ms, max
2.8 ms, in order.

Commands (``decide_command``, served on ``hivebus.decide.<handler>``; the gateway forwards
users' commands there): the handler catches up with the stream as it was when the command
arrived, decides on its state (pure), and appends the facts with
``Nats-Expected-Last-Subject-Sequence`` set to the last sequence on the aggregate's subjects it
had folded (``...-Subject``: the wildcard over them). If another decider appended there in
between, JetStream refuses the write; the handler catches up and decides again. So two
deciders (replicas, or a restarted one) never both act on the same state, without a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic_core
import structlog
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from hivebus.bus.client import Bus
from hivebus.bus.consumer import Delivery, dead_letter, reply_position
from hivebus.bus.streams import EVENTS, ConsumerSpec, ensure_consumer
from hivebus.bus.subjects import evt_filter
from hivebus.config import Settings
from hivebus.errors import ConcurrencyConflict, DecodeError, HivebusError, NoAnswer
from hivebus.handlers.runtime import Driver, Step
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event
from hivebus.services.failpoints import crash, failpoint
from hivebus.services.snapshots import Snapshot, SnapshotStore, code_version

log = structlog.get_logger()


def hub_timed(event: Event, stored_ns: int) -> Event:
    """A node's event with the time the hub's stream stored it instead of the node's clock.

    Presence must not trust node clocks: a node whose clock runs behind, or one catching up a
    long outbox of old heartbeats, would be offline again the moment it is seen. The stored
    time is in the stream, so a replay reads the same time as the live handler did."""
    if stored_ns <= 0 or not event.source.startswith("node/"):
        return event
    return event.model_copy(update={"time": EPOCH + timedelta(microseconds=stored_ns // 1000)})


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Broken(Exception):
    """Publishing failed: stop acknowledging, rebuild from the log."""


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What a command came to: the facts appended (a rejection is one of them), their stream
    sequences, and how many times it was decided (more than once after a conflict)."""

    facts: list[Event]
    seqs: list[int]
    attempts: int


class HandlerService:
    def __init__(
        self,
        handler: Any,
        settings: Settings,
        bus: Bus,
        *,
        batch: int = 256,
        idle: float = 1.0,
        tick_seconds: float = 1.0,
        ack_wait: float = 30.0,
        on_ready: Callable[[HandlerService], Awaitable[None]] | None = None,
        durable_suffix: str = "",
        snapshots: bool = True,
        snapshot_every: int = 20_000,
    ) -> None:
        self.handler = handler
        self.settings = settings
        self.bus = bus
        self.batch = batch
        self.idle = idle
        self.tick_seconds = tick_seconds
        self.ack_wait = ack_wait
        self.on_ready = on_ready
        self.durable = f"handler-{handler.name}{durable_suffix}"
        self.lock = asyncio.Lock()
        self.driver: Driver[Any] = Driver(handler)
        self.last_seq = 0
        self.ready = asyncio.Event()
        self._broken: Exception | None = None
        self._stopping = False
        self.conflicts = 0
        """Command decisions JetStream refused because another decider acted first."""
        self.on_hub_clock = bool(getattr(handler, "on_hub_clock", False))
        """The handler reads a node's events at the time the hub stored them (see ``hub_timed``)."""
        self.use_snapshots = snapshots
        self.snapshots = SnapshotStore(bus)
        self.version = code_version(handler)
        self.snapshot_every = snapshot_every
        """Refresh the snapshot in the background once the floor moved this many on."""
        self.snapshot_seq = 0
        self.history_read = 0
        """Events of the log folded by the last resume (the tail after its snapshot)."""
        self._refresh: asyncio.Task[int | None] | None = None
        self.decide_hold = float(os.environ.get("HIVEBUS_DECIDE_HOLD", "0") or 0)
        """Seconds between deciding a command and appending it (tests widen the race with it)."""

    def _timed(self, event: Event, stored_ns: int) -> Event:
        return hub_timed(event, stored_ns) if self.on_hub_clock else event

    # --- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._run_once(stop)
            except _Broken as exc:
                log.warning("handler.restarting", handler=self.handler.name, error=str(exc))
                self.ready.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await stop.wait()

    async def _run_once(self, stop: asyncio.Event) -> None:
        self._stopping = False
        spec = await self.resume()
        consumer = asyncio.create_task(self._consume(spec), name=f"{self.durable}-consume")
        self.ready.set()
        log.info("handler.live", handler=self.handler.name, from_seq=self.last_seq + 1)
        if self.on_ready is not None:
            await self.on_ready(self)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.tick_seconds):
                        await stop.wait()
                if (
                    consumer.done()
                    and not consumer.cancelled()
                    and consumer.exception() is not None
                ):
                    raise consumer.exception()  # type: ignore[misc]
                if self._broken is not None:
                    raise _Broken(str(self._broken))
                await self.tick()
                self._maybe_refresh()
        finally:
            await self._stop_consumer(consumer)
            if self._refresh is not None and not self._refresh.done():
                self._refresh.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._refresh

    async def _stop_consumer(self, consumer: asyncio.Task[None]) -> None:
        """Let the consumer finish its batch and leave between two fetches; cancel it only if
        it does not. (Cancelling a nats-py ``fetch`` can leave the task hanging forever: seen
        here with Python 3.11's ``wait_for``.)"""
        self._stopping = True
        done, _ = await asyncio.wait({consumer}, timeout=self.idle * 3 + 2)
        if not done:
            consumer.cancel()
            done, _ = await asyncio.wait({consumer}, timeout=2)
            if not done:
                log.warning("handler.consumer_stuck", handler=self.handler.name)
                return
        with contextlib.suppress(asyncio.CancelledError, Exception):
            consumer.result()

    async def _consume(self, spec: ConsumerSpec) -> None:
        """Fetch, decide each message of the batch in order, then publish and acknowledge.

        The messages of one fetched batch are decided one after the other (each on the state
        the previous ones left), their outputs go out in one pipelined publish, and they are
        acknowledged in order: one round of JetStream acks (and fsyncs) per batch instead of
        per input. A crash in between is the case ``Driver`` already handles. (This is
        ``Bus.consume``'s loop, kept here to see where a fetched batch ends.)
        """
        await ensure_consumer(self.bus.js, spec)
        sub = await self.bus.js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
        try:
            while self._broken is None and not self._stopping:
                try:
                    messages = await sub.fetch(self.batch, timeout=self.idle)
                except (NatsTimeout, TimeoutError):
                    continue
                pending = []
                for msg in messages:
                    delivery = Delivery.of(msg, self.bus, spec.stream, spec.durable)
                    pending.append((delivery, await self._decide(delivery)))
                await self._flush(pending)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # --- commands --------------------------------------------------------------------------

    async def decide_command(self, command: Event, *, timeout: float = 15.0, attempts: int = 8) -> CommandOutcome:
        """Decide a user's command on the current state and append its facts (see above)."""
        glob, key = self.handler.aggregate(command)
        aggregate = evt_filter(glob, key)
        deadline = time.monotonic() + timeout
        for attempt in range(1, attempts + 1):
            expected = await self._last_on(aggregate)
            await self._caught_up(deadline)
            async with self.lock:
                decision = self.driver.decide_command(command)
                facts = list(decision.events)
                if self.decide_hold:
                    await asyncio.sleep(self.decide_hold)
                try:
                    seqs = await self._append(facts, expected, aggregate)
                except ConcurrencyConflict:
                    self.conflicts += 1
                    log.info("decider.conflict", handler=self.handler.name, command=command.id, attempt=attempt, expected=expected)
                    continue
                self.driver.accept(facts)
            log.info("decider.decided", handler=self.handler.name, command=command.id, facts=[f.type for f in facts], attempt=attempt)
            return CommandOutcome(facts, seqs, attempt)
        raise NoAnswer(f"{command.type} {command.id}: still conflicting after {attempts} decisions", hint="try again")

    async def _append(self, facts: list[Event], expected: int, aggregate: str) -> list[int]:
        """The first fact carries the concurrency check; the others follow it, pipelined."""
        if not facts:
            return []
        first = await self.bus.publish(facts[0], expected_last_subject_seq=expected, expected_subject=aggregate)
        rest = await self.bus.publish_many(facts[1:]) if len(facts) > 1 else []
        return [first, *rest]

    async def _last_on(self, subject: str) -> int:
        try:
            return int((await self.bus.js.get_last_msg(EVENTS, subject)).seq or 0)
        except NotFoundError:
            return 0

    async def _caught_up(self, deadline: float) -> None:
        """Wait until the state has folded every input stored before now."""
        target = await self.bus.last_seq(EVENTS)
        delay = 0.01
        while True:
            if self.ready.is_set() and self.last_seq >= target:
                return
            try:
                info = await self.bus.js.consumer_info(EVENTS, self.durable)
                if self.ready.is_set() and info.num_pending == 0 and info.num_ack_pending == 0:
                    return
            except NotFoundError:
                pass
            if time.monotonic() > deadline:
                raise NoAnswer(f"{self.handler.name} did not catch up with the log in time", hint="is the handler overloaded?")
            await asyncio.sleep(delay)
            delay = min(0.2, delay * 1.5)

    # --- resuming ---------------------------------------------------------------------------

    async def resume(self) -> ConsumerSpec:
        """Fold the log up to the ack floor (from a snapshot when one is valid), note the
        backlog; the consumer to start from."""
        self._broken = None
        floor = await self._ack_floor()
        driver, start = await self._restored(floor)
        self.history_read = 0
        pending: list[str] = []
        outputs: list[Event] = []
        # a snapshot when this start folds anything new, taken where the fold reaches the floor
        to_capture = self.use_snapshots and 0 < start <= floor
        snapshot: Snapshot | None = None
        async for batch in self.bus.read(EVENTS, start_seq=start, filter_subjects=self._subjects, stop_at_end=True):
            for message in batch:
                if message.seq > floor:
                    if to_capture:
                        snapshot, to_capture = Snapshot.of(driver, floor, self.version), False
                    # Beyond the floor only the handler's own outputs are needed whole; of
                    # the inputs, their ids (they will be delivered again and decoded then).
                    head = _envelope_head(message.data)
                    if head is None:
                        continue
                    if head[1] != self.handler.source:
                        pending.append(head[0])
                        continue
                try:
                    event = codec.decode(message.data)
                except DecodeError:
                    continue  # it was dead-lettered when it was delivered
                if message.seq <= floor:
                    driver.history(self._timed(event, message.time_ns))
                    self.history_read += 1
                else:
                    outputs.append(event)
        if to_capture:  # the log ended at the floor
            snapshot = Snapshot.of(driver, floor, self.version)
        if snapshot is not None:
            await self.snapshots.save(self.durable, snapshot)
            self.snapshot_seq = floor
        driver.backlog(pending, outputs)
        adjudicated = driver.take_adjudicated()
        if adjudicated:  # old requests under the floor that the stream holds no decision for
            await self.bus.publish_many(adjudicated)
            log.info("handler.adjudicated", handler=self.handler.name, n=len(adjudicated))
        async with self.lock:
            self.driver = driver
            self.last_seq = floor
        with contextlib.suppress(NotFoundError):
            await self.bus.js.delete_consumer(EVENTS, self.durable)
        log.info(
            "handler.resumed",
            handler=self.handler.name,
            ack_floor=floor,
            from_snapshot=start - 1,
            history=self.history_read,
            folded=driver.folded,
            pending=len(pending),
            recorded=sum(len(v) for v in driver.recorded.values()),
        )
        return ConsumerSpec(
            stream=EVENTS,
            durable=self.durable,
            filter_subjects=tuple(self.handler.inputs),
            ack_wait=timedelta(seconds=self.ack_wait),
            max_ack_pending=self.batch * 4,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if floor else DeliverPolicy.ALL,
            opt_start_seq=floor + 1 if floor else None,
        )

    @property
    def _subjects(self) -> list[str]:
        return [*self.handler.inputs, *self.handler.outputs]

    async def _restored(self, floor: int) -> tuple[Driver[Any], int]:
        """A driver folded from the newest valid snapshot at or below ``floor``, and the
        sequence to read on from; a fresh one and 1 without."""
        if self.use_snapshots and floor > 0:
            snapshot = await self.snapshots.load(self.durable, self.version)
            if snapshot is not None and snapshot.seq <= floor:
                self.snapshot_seq = snapshot.seq
                return snapshot.driver(self.handler), snapshot.seq + 1
        return Driver(self.handler), 1

    async def refresh_snapshot(self) -> int | None:
        """Fold from the last snapshot up to the current ack floor on a driver of its own and
        save it; the live state is not touched. The snapshot's sequence, or None."""
        if not self.use_snapshots:
            return None
        floor = await self._ack_floor()
        driver, start = await self._restored(floor)
        if floor < start:
            return start - 1 if start > 1 else None  # the snapshot is at the floor already
        async for batch in self.bus.read(EVENTS, start_seq=start, filter_subjects=self._subjects, stop_at_end=True):
            for message in batch:
                if message.seq <= floor:
                    with contextlib.suppress(DecodeError):  # dead-lettered when it was delivered
                        driver.history(self._timed(codec.decode(message.data), message.time_ns))
            if batch and batch[-1].seq >= floor:
                break
        await self.snapshots.save(self.durable, Snapshot.of(driver, floor, self.version))
        self.snapshot_seq = floor
        return floor

    def _maybe_refresh(self) -> None:
        running = self._refresh is not None and not self._refresh.done()
        if not self.use_snapshots or running or self.last_seq - self.snapshot_seq < self.snapshot_every:
            return
        self._refresh = asyncio.create_task(self.refresh_snapshot(), name=f"{self.durable}-snapshot")

    async def _ack_floor(self) -> int:
        try:
            info = await self.bus.js.consumer_info(EVENTS, self.durable)
        except NotFoundError:
            return 0
        return int(info.ack_floor.stream_seq) if info.ack_floor else 0

    # --- live -------------------------------------------------------------------------------

    async def _decide(self, delivery: Delivery) -> Step | None:
        """Fold and decide one delivery; None for one already processed (acknowledge only)."""
        async with self.lock:
            if delivery.seq <= self.last_seq:
                log.warning(
                    "handler.redelivered",
                    handler=self.handler.name,
                    seq=delivery.seq,
                    last=self.last_seq,
                )
                return None
            self.last_seq = delivery.seq
            if delivery.event is not None:
                return self.driver.deliver(self._timed(delivery.event, reply_position(delivery.msg.reply or "")[1]))
            error = delivery.error
            assert error is not None
            salvaged = self.driver.salvage(delivery.msg.data, error)
            if salvaged is not None:
                return salvaged
            return Step(refused=error.reason)

    async def _flush(self, pending: list[tuple[Delivery, Step | None]]) -> None:
        """Publish the group's outputs, record its refusals, then acknowledge it, in order."""
        try:
            outputs = [event for _, step in pending if step is not None for event in step.publish]
            if outputs:
                name = self.handler.name
                if failpoint(f"{name}.mid_publish"):
                    await self.bus.publish_many(outputs[: max(1, len(outputs) // 2)])
                    crash()
                await self.bus.publish_many(outputs)
                if failpoint(f"{name}.after_publish"):
                    crash()
            for delivery, step in pending:
                if step is not None and step.refused is not None:
                    field = delivery.error.field if delivery.error is not None else None
                    log.info(
                        "handler.refused",
                        handler=self.handler.name,
                        seq=delivery.seq,
                        reason=step.refused,
                    )
                    await self._dead_letter(delivery, step.refused, field)
            for delivery, _ in pending:
                await delivery.ack()
        except Exception as exc:  # publish or dead-letter failed: rebuild, never skip
            log.error(
                "handler.step_failed",
                handler=self.handler.name,
                seq=pending[0][0].seq,
                error=str(exc),
            )
            self._broken = exc

    async def _dead_letter(self, delivery: Delivery, reason: str, field: str | None) -> None:
        """Record the input with the reason; it is acknowledged with the others, after."""
        await dead_letter(
            self.bus,
            stream=EVENTS,
            consumer=self.durable,
            seq=delivery.seq,
            subject=delivery.msg.subject,
            data=delivery.msg.data,
            reason=reason,
            field=field,
        )

    async def tick(self, now: datetime | None = None) -> list[Event]:
        async with self.lock:
            if self._broken is not None:
                return []
            events = self.driver.tick(now or datetime.now(UTC))
            if events:
                try:
                    await self.bus.publish_many(events)
                except HivebusError as exc:
                    self._broken = exc
                    return []
                log.info("handler.timer", handler=self.handler.name, n=len(events))
            return events


def _envelope_head(data: bytes) -> tuple[str, str] | None:
    """``(id, source)`` of an encoded event without validating it, or None if unreadable."""
    try:
        doc = pydantic_core.from_json(data)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
        return None
    return doc["id"], str(doc.get("source", ""))
