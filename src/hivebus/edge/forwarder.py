"""The forwarder: sends the outbox to the hub in order and deletes only what the hub acked.

One batch at a time (the oldest ``batch`` events, nodeseq order) is published pipelined; it is
deleted from the outbox only once every message in it is acknowledged. If any message fails,
nothing of the batch is deleted.

Readings travel packed (issue 18, ``bus.batch``): consecutive readings of the batch go in one
DATA message of up to ``pack`` readings and ``pack_bytes`` bytes on ``data.<node>.BATCH``,
``Nats-Msg-Id`` a hash of their event ids; a lifecycle event is one message of its own, on its
own subject with its id, and closes the readings before it, so the hub stores everything in
nodeseq order. A reading alone (nothing else was waiting) goes as before: one message, its own
subject and id. Nothing waits to fill a message: what arrived during the previous batch's
round trip is the next batch, so packing adds no latency. ``pack=1`` sends every reading alone.

Bounded by count, bytes and age
    A message holds at most ``pack`` readings and ``pack_bytes`` bytes; a batch at most
    ``batch`` events (20,000: under a backlog one round trip carries 20 full messages, so a
    forwarder slowed by a busy CPU or disk still sends faster than 2 x 5,000 readings/s
    arrive). Age: a reading is read for sending as soon as its group commit is done if the
    forwarder is idle (``wait_appended`` wakes it), else when the round trip in flight ends;
    there is no timer to wait for, so the age bound is the round trip itself (tens of ms on
    an idle node: the issue's 100 ms). ``ForwarderStats.max_wait_s`` keeps the longest an
    event waited before it was read; a round trip over a second is logged
    (``forwarder.slow_batch``, with the time spent reading, publishing and deleting).
After a failure the messages are formed again with the same bounds (same first nodeseq, same
readings, so the same id: JetStream drops the copy if the first attempt was stored after all).
The bounds are stored in the outbox before the batch is published (``Outbox.hold_bounds``, one
small transaction per round trip), so this holds after a crash too: a forwarder started again
re-forms the batch that was in flight exactly, and a first attempt that reaches the hub only
after the new run's reconciliation looked (still on its way when the agent died) is dropped as
a duplicate within the window instead of storing its readings a second time.

Exactly once, beyond the duplicate window
    After a failure (or at start-up, after a crash that may have struck between a publish and
    the delete) it is unknown which events of the batch the hub stored. Resending them relies
    on JetStream's duplicate window, which a long outage outlasts. So before sending again the
    forwarder *reconciles*: it reads this node's subjects in DATA and EVENTS from the last
    position known to be complete and deletes from the outbox every event found there (by
    nodeseq and id; a batch is unpacked and each reading in it counts). What is left was never
    stored and is sent again. A failed message can
    never make later ones look like duplicates: nothing is inferred from order, only from the
    events actually found. The projections still de-duplicate on exact ``(node, nodeseq)``
    membership as the last line, and alone if the check keeps failing (a hub whose
    permissions forbid a node to read streams): after three failed checks it resends anyway.

    Within the duplicate window the check is a courtesy, not the guarantee: a batch whose first
    attempt is younger than half the streams' window (learnt from the hub's stream info) is
    re-formed with the same ids and JetStream drops any copy it already holds. So when the
    check cannot be made quickly (a cluster hub that lost a member refuses new readers for a
    minute or more while it accepts publishes again in seconds) the forwarder resends at once
    instead of waiting for it. After a crash the age of what was in flight is unknown, and the
    check is always made.

A message the hub refuses for what it is
    After a failed batch (and the reconciliation), the oldest message is sent alone first. If
    JetStream refuses that very message (larger than the stream's ``max_msg_size``, or than
    the server's ``max_payload``) it would block the node's uplink forever: for a packed message
    the forwarder halves the bytes it packs and tries again (down to one reading a message); a
    single event is parked instead (kept on the node, counted as ``refused_by_hub``, logged with
    the reason) and forwarding goes on. Timeouts, a missing stream or a full store are not its fault: those
    are retried, with back-off, for as long as it takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import structlog
from nats.errors import MaxPayloadError
from nats.js.errors import APIError

from hivebus.auth.permissions import reconcile_consumer
from hivebus.bus import batch as wire
from hivebus.bus.client import Bus
from hivebus.bus.publisher import MSG_ID, Outgoing
from hivebus.bus.streams import DATA, EVENTS
from hivebus.bus.subjects import data_filter, fromedge_filter
from hivebus.edge import refusal
from hivebus.edge.outbox import Entry, Outbox
from hivebus.edge.uplink import Uplink
from hivebus.errors import DecodeError, PermissionDenied, SetupError

log = structlog.get_logger()

_NODESEQ: Final = re.compile(rb'"nodeseq":(\d+)')
_ID: Final = re.compile(rb'"id":"([0-9A-Za-z]+)"')
_CHECKS_BEFORE_RESENDING: Final = 3
# a check made while the failed batch is within the duplicate window gives up after this long
_QUICK_CHECK_S: Final = 5.0
_SLOW_S: Final = 1.0  # a batch whose round trip takes longer is logged (forwarder.slow_batch)
# JetStream errors about the message itself (JSStreamMessageExceedsMaximumErr).
_REFUSED_FOR_WHAT_IT_IS: Final = frozenset({10054})


@dataclass(frozen=True, kw_only=True)
class ForwarderOptions:
    batch: int = 20_000  # events read from the outbox and sent per round trip at most
    pack: int = wire.MAX_BATCH_READINGS  # readings per DATA message at most (1: one each)
    pack_bytes: int = wire.MAX_BATCH_BYTES  # bytes per packed DATA message at most
    ack_timeout: float = 5.0  # seconds without any ack before a batch counts as failed
    retry_min: float = 0.2
    retry_max: float = 5.0
    idle_poll: float = 1.0

    def __post_init__(self) -> None:
        if self.batch < 1 or self.pack < 1:
            raise SetupError(f"forwarder batch ({self.batch}) and pack ({self.pack}) must be at least 1")
        if self.pack_bytes < 1024:
            raise SetupError(f"forwarder pack_bytes {self.pack_bytes} is below 1024")


@dataclass(frozen=True, slots=True)
class Packed:
    """One message of a batch and the outbox entries it carries (consecutive nodeseqs)."""

    outgoing: Outgoing
    entries: Sequence[Entry]


def pack_entries(
    node: str, entries: Sequence[Entry], *, pack: int, pack_bytes: int, bounds: dict[int, int] | None = None
) -> list[Packed]:
    """``entries`` (nodeseq order) as messages: consecutive readings packed, up to ``pack``
    readings and ``pack_bytes`` bytes each; lifecycle events alone. ``bounds`` (first nodeseq
    -> last) ends a message where an earlier attempt ended it, so a retry is the same message."""
    out: list[Packed] = []
    run: list[Entry] = []
    size = wire.OVERHEAD
    last = 0  # the nodeseq the current run must not pass (0: none)

    def flush() -> None:
        nonlocal size
        if len(run) == 1:
            e = run[0]
            out.append(Packed(Outgoing(e.subject, e.body, e.msg_id), [e]))
        elif run:
            message = Outgoing(wire.batch_subject(node), wire.pack([e.body for e in run]),
                               wire.batch_id(node, [e.msg_id for e in run]))
            out.append(Packed(message, list(run)))
        run.clear()
        size = wire.OVERHEAD

    for entry in entries:
        if entry.stream != DATA or pack == 1:
            flush()
            out.append(Packed(Outgoing(entry.subject, entry.body, entry.msg_id), [entry]))
            continue
        grows = wire.PER_BODY + len(entry.body)
        if run and (len(run) >= pack or size + grows > pack_bytes or (last and entry.nodeseq > last)):
            flush()
        if not run:
            last = bounds.get(entry.nodeseq, 0) if bounds else 0
        run.append(entry)
        size += grows
    flush()
    return out


@dataclass
class ForwarderStats:
    sent: int = 0
    batches: int = 0
    messages: int = 0  # DATA and EVENTS messages published (a packed one carries many readings)
    failures: int = 0
    reconciled: int = 0  # events found already stored by the hub and deleted without resending
    parked: int = 0  # events the hub refused for what they are, set aside on the node
    max_wait_s: float = 0.0  # longest an event waited in the outbox before its batch was read


class Forwarder:
    """Drains an ``Outbox`` through an ``Uplink`` (see the module docstring)."""

    def __init__(
        self, outbox: Outbox, uplink: Uplink, options: ForwarderOptions | None = None
    ) -> None:
        self.outbox = outbox
        self.uplink = uplink
        self.options = options or ForwarderOptions()
        self.stats = ForwarderStats()
        self._node = outbox.node
        # After a crash the last batch's fate is unknown: check before sending anything.
        self._uncertain = True
        # When the oldest send that may be unacked began (monotonic); None: unknown or nothing
        self._uncertain_since: float | None = None
        self._batch_began = time.monotonic()  # when the last batch began to be sent
        self._window: float | None = None  # the hub streams' duplicate window (s), once learnt
        self._probe = False  # after a failure: send the oldest message alone first
        self._pack_bytes = self.options.pack_bytes  # halved when the hub refuses a packed message's size
        # the packed messages in flight (first -> last nodeseq), stored before they are sent
        self._bounds: dict[int, int] = outbox.inflight_bounds
        self._check_failures = 0
        self.idle = asyncio.Event()
        # why the hub refuses this node's events (no or a withdrawn credential), or None
        self.unauthorized: str | None = None
        self._accepted = False  # the hub has stored something this node sent, in this run

    async def run(self, stop: asyncio.Event) -> None:
        delay = self.options.retry_min
        while not stop.is_set():
            bus = await self.uplink.wait_online(stop)
            if bus is None:
                return
            try:
                sent = await self._step(bus)
            except Exception as exc:  # the hub went away, refused, or timed out: try again
                self.outbox.release()
                if not self._uncertain and self._uncertain_since is None:
                    self._uncertain_since = self._batch_began  # certain before it: nothing older is unacked
                self._uncertain = True
                self._probe = True
                self.stats.failures += 1
                error = str(exc) or type(exc).__name__
                if isinstance(exc, PermissionDenied) or self._denied(bus):
                    self._refused_by_hub(error)
                elif self.unauthorized is None:
                    log.warning("forwarder.batch_failed", error=error, retry_in=delay)
                else:  # still refused: said once, loudly, in _refused_by_hub
                    log.debug("forwarder.batch_failed", error=error, retry_in=delay)
                await _sleep(stop, delay)
                delay = min(delay * 2, self.options.retry_max)
                continue
            delay = self.options.retry_min
            if self._uncertain_since is not None and self.outbox.backlog_now()[0] == 0:
                self._uncertain_since = None  # everything sent is acked
            if sent and (self.unauthorized is not None or not self._accepted):
                if self.unauthorized is not None:
                    log.info("forwarder.authorized", node=self._node)
                self.unauthorized = None
                self._accepted = True
                if self.uplink.data_dir is not None:  # a refusal recorded before (this run or an earlier one) is over
                    refusal.end(self.uplink.data_dir)  # (kept until a heartbeat reporting it is stored)
            if not sent:
                self.idle.set()
                await self.outbox.wait_appended(self.options.idle_poll)
            else:
                self.idle.clear()

    def _denied(self, bus: Bus) -> bool:
        """The hub refused this connection this node's own events or the stream API (a node
        with its credential is refused neither)."""
        own = (f"data.{self._node}.".lower(), f"fromedge.{self._node}.".lower(), "$js.api.")
        return any(subject.startswith(own) for subject in bus.denied)

    def _refused_by_hub(self, error: str) -> None:
        if self.unauthorized is not None:
            log.debug("forwarder.still_unauthorized", error=error)
            return
        self.unauthorized = error
        hint = ("the hub does not accept this node's events without its credential: "
                + refusal.what_to_do(self._node) + " (`hivebus node outbox` shows this)")
        log.error("forwarder.unauthorized", node=self._node, error=error, hint=hint)
        if self.uplink.data_dir is not None:
            refusal.record(self.uplink.data_dir, "events", error, hint)

    async def _step(self, bus: Bus) -> int:
        """Send one batch; how many events it held (0 = the outbox is empty)."""
        if self._uncertain:
            recent = self._within_window()
            try:
                if recent:
                    async with asyncio.timeout(_QUICK_CHECK_S):
                        await self.reconcile(bus)
                else:
                    await self.reconcile(bus)
                self._uncertain_since = None  # what is left was never stored: its sends start anew
            except Exception as exc:
                error = str(exc) or type(exc).__name__
                self._check_failures += 1
                if recent:  # the same ids again, inside the window: a stored copy is dropped
                    log.info("forwarder.resend_within_window", error=error, window_s=self._window)
                elif self._check_failures < _CHECKS_BEFORE_RESENDING:
                    raise
                else:
                    # e.g. a hub that does not let nodes read streams: resend unchecked; the
                    # duplicate window and the projections' (node, nodeseq) check still hold.
                    log.warning("forwarder.unchecked_resend", error=error)
            self._check_failures = 0
            self._uncertain = False
        await self.ensure_positions(bus)
        if self._window is None:
            await self._learn_window(bus)
        began = time.monotonic()
        entries = await self.outbox.next_batch(self.options.batch)
        read, read_ns = time.monotonic(), self.outbox.clock_ns()
        if not entries:
            self._probe = False
            return 0
        self.idle.clear()
        messages = self._messages(entries)
        if self._probe:
            first = messages[0]
            refusal = await self._refusal(bus, first.outgoing)
            if refusal is not None and len(first.entries) > 1:
                # too large for the hub: pack less from now on, and probe the smaller message
                self._pack_bytes = max(1, len(first.outgoing.payload) // 2)
                self._bounds = {}
                log.warning("forwarder.pack_shrunk", readings=len(first.entries),
                            bytes=len(first.outgoing.payload), pack_bytes=self._pack_bytes, reason=refusal)
                return len(first.entries)
            if refusal is not None:
                entry = first.entries[0]
                await self.outbox.park(entry, refusal)
                self.stats.parked += 1
                log.error("forwarder.parked", nodeseq=entry.nodeseq, subject=entry.subject, reason=refusal)
                return 1
            self._probe = False
            messages = messages[:1]  # (stored: sent again below, dropped as a duplicate)
        else:  # if this fails, the retry forms the same messages (see the module docstring)
            bounds = {m.entries[0].nodeseq: m.entries[-1].nodeseq for m in messages if len(m.entries) > 1}
            if bounds != self._bounds:
                await self.outbox.hold_bounds(bounds)  # on disk before any of them is sent
            self._bounds = bounds
        sent = [e for m in messages for e in m.entries]
        self._batch_began = time.monotonic()
        seqs = await self._publish(bus, messages)
        acked = time.monotonic()
        if len(sent) == len(entries):
            self._bounds = {}
        positions: dict[str, int] = {}
        for message, seq in zip(messages, seqs, strict=True):
            stream = message.entries[0].stream
            if seq > positions.get(stream, 0):
                positions[stream] = seq
        await self.outbox.remove(sent, positions)
        done = time.monotonic()
        waited = max(0.0, (read_ns - sent[0].t) / 1e9)  # the oldest, from its commit to this read
        self.stats.max_wait_s = max(self.stats.max_wait_s, waited)
        if done - began > _SLOW_S:
            log.info("forwarder.slow_batch", n=len(sent), messages=len(messages),
                     read_s=round(read - began, 3), publish_s=round(acked - read, 3),
                     remove_s=round(done - acked, 3), oldest_waited_s=round(waited, 3))
        self.stats.sent += len(sent)
        self.stats.messages += len(messages)
        self.stats.batches += 1
        log.debug("forwarder.sent", n=len(sent), messages=len(messages), through=sent[-1].nodeseq)
        return len(sent)

    def _messages(self, entries: Sequence[Entry]) -> list[Packed]:
        return pack_entries(self._node, entries, pack=self.options.pack, pack_bytes=self._pack_bytes,
                            bounds=self._bounds)

    async def _publish(self, bus: Bus, messages: Sequence[Packed]) -> list[int]:
        outgoing = [m.outgoing for m in messages]
        return await bus.publish_raw_many(outgoing, timeout=self.options.ack_timeout, retries=0)

    async def _refusal(self, bus: Bus, message: Outgoing) -> str | None:
        """Send ``message`` alone: why the hub refuses this message itself, or None if it took
        it (a timeout or a missing stream raises: not the message's fault)."""
        try:
            await bus.js.publish(
                message.subject,
                message.payload,
                timeout=self.options.ack_timeout,
                headers={MSG_ID: message.msg_id},
            )
        except MaxPayloadError as exc:
            return f"larger than the server's max_payload: {exc}"
        except APIError as exc:
            if exc.err_code in _REFUSED_FOR_WHAT_IT_IS:
                return f"JetStream refused it: {exc.description} (err_code {exc.err_code})"
            raise
        return None

    def _within_window(self) -> bool:
        """Whether every send that may be unacked began less than half the duplicate window ago."""
        if self._uncertain_since is None or not self._window:
            return False
        return time.monotonic() - self._uncertain_since < self._window / 2

    async def _learn_window(self, bus: Bus) -> None:
        """The streams' duplicate window, asked once while the hub answers (0: unknown)."""
        try:
            infos = []
            for stream in (DATA, EVENTS):
                async with asyncio.timeout(self.options.ack_timeout):
                    infos.append(await bus.js.stream_info(stream))
            self._window = min(float(i.config.duplicate_window or 0.0) for i in infos)
        except Exception as exc:  # no shortcut then: every uncertain batch is checked
            self._window = 0.0
            log.debug("forwarder.window_unknown", error=str(exc) or type(exc).__name__)

    async def ensure_positions(self, bus: Bus) -> None:
        """Before the first publish ever, note where each stream ends: nothing of this
        outbox can be stored before that point, so reconciliation never reads further back."""
        known = self.outbox.positions
        missing = {s: 0 for s in (DATA, EVENTS) if s not in known}
        if not missing:
            return
        for stream in missing:
            missing[stream] = await bus.last_seq(stream)
        await self.outbox.save_positions(missing)

    async def reconcile(self, bus: Bus) -> int:
        """Delete from the outbox what the hub already stored; how many events that was."""
        if self.outbox.backlog_now()[0] == 0:
            return 0
        positions = self.outbox.positions
        found: list[tuple[int, str]] = []
        reached: dict[str, int] = {}
        for stream, subject in (
            (DATA, data_filter(self._node)),
            (EVENTS, fromedge_filter(self._node)),
        ):
            if stream not in positions:
                continue  # never published to it
            last = positions[stream]
            async for batch in bus.read(
                stream, start_seq=last + 1, filter_subjects=[subject], stop_at_end=True,
                name=reconcile_consumer(self._node),  # the one name a node may read with
            ):
                for message in batch:
                    try:
                        bodies = wire.bodies_of(message.data)
                    except DecodeError as exc:  # not a batch this forwarder sent: nothing of ours
                        log.warning("forwarder.reconcile_unreadable", seq=message.seq, error=exc.reason)
                        bodies = []
                    for body in bodies:
                        seq, msg_id = _identity(body)
                        if seq is not None and msg_id is not None:
                            found.append((seq, msg_id))
                    last = max(last, message.seq)
            reached[stream] = last
        gone = await self.outbox.remove_published(found, reached)
        self.stats.reconciled += gone
        if gone:
            log.info("forwarder.reconciled", already_stored=gone, checked=len(found))
        return gone


def _identity(body: bytes) -> tuple[int | None, str | None]:
    """(nodeseq, event id) of a stored event, read without decoding it."""
    seq = _NODESEQ.search(body)
    ident = _ID.search(body)
    return (int(seq.group(1)) if seq else None, ident.group(1).decode() if ident else None)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
