"""Pipelined JetStream publishing with one shared ack inbox.

nats-py's ``publish_async`` pays for a semaphore, a future, a done-callback and a dict
entry per message. ``Pipeline`` keeps a window of messages in flight on one wildcard
reply subscription and records each ack into a slot of a list, which is what a batch
publisher needs. Every message carries ``Nats-Msg-Id``, so a message whose ack was lost
(server restart, timeout) is simply sent again: the stream's duplicate window drops the
copy and the ack still reports the original sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from hivebus.errors import ConcurrencyConflict, PublishError

log = structlog.get_logger()

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
WRONG_LAST_SEQUENCE = 10071
_RECHECK_S = 0.1  # how often a wait for acks looks whether the connection was lost


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: subject, body, and its dedup id."""

    subject: str
    payload: bytes
    msg_id: str


@dataclass(slots=True)
class _Batch:
    messages: Sequence[Outgoing]
    seqs: list[int] = field(default_factory=list)
    errors: dict[int, Exception] = field(default_factory=dict)
    unrouted: set[int] = field(default_factory=set)  # got "no responders" (503)
    resolved: int = 0  # slots with a sequence or an error
    replies: int = 0  # every reply, for telling progress from silence
    connection: int = 0  # the client's reconnect count when the current attempt went out
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.seqs = [0] * len(self.messages)

    def pending(self) -> list[int]:
        return [i for i, seq in enumerate(self.seqs) if not seq and i not in self.errors]


class Pipeline:
    def __init__(self, nc: NATS, *, window: int = 8192) -> None:
        self._nc = nc
        self._window = window
        self._prefix = ""
        self._batches: dict[str, _Batch] = {}
        self._counter = 0

    async def _ensure_inbox(self) -> None:
        if not self._prefix:
            self._prefix = self._nc.new_inbox() + "."
            await self._nc.subscribe(self._prefix + ">", cb=self._on_ack, pending_msgs_limit=1_000_000)

    async def _on_ack(self, msg: Msg) -> None:
        batch_id, _, index = msg.subject[len(self._prefix) :].partition(".")
        batch = self._batches.get(batch_id)
        if batch is None:
            return
        batch.replies += 1
        batch.wake.set()
        i = int(index)
        if batch.seqs[i] or i in batch.errors:
            return  # a late ack for a message we already sent again
        if msg.headers and msg.headers.get("Status") == "503":
            # No stream answered: none listens, or a replicated stream is electing a
            # leader. Retried; reported only if it never goes away.
            batch.unrouted.add(i)
            return
        seq = _ack_seq(msg.data)
        if seq:
            batch.seqs[i] = seq
        else:
            batch.errors[i] = _ack_failure(msg.data)
        batch.unrouted.discard(i)
        batch.resolved += 1

    async def publish(
        self, messages: Sequence[Outgoing], *, timeout: float = 10.0, retries: int = 8
    ) -> list[int]:
        """Publish ``messages`` pipelined; returns each one's stream sequence, in order.

        Messages still unacknowledged when the acks stop coming for ``timeout`` seconds
        are sent again (same ``Nats-Msg-Id``), with backoff, up to ``retries`` times:
        long enough to ride out a server restart or a cluster's leader election.
        """
        if not messages:
            return []
        await self._ensure_inbox()
        self._counter += 1
        batch_id = str(self._counter)
        batch = _Batch(messages)
        self._batches[batch_id] = batch
        try:
            todo = list(range(len(messages)))
            for attempt in range(retries + 1):
                if attempt:
                    log.warning("publish.retry", unacked=len(todo), attempt=attempt)
                    await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                await self._send(batch, batch_id, todo, timeout)
                await self._settle(batch, timeout)
                todo = batch.pending()
                if not todo:
                    break
            if batch.errors:
                raise batch.errors[min(batch.errors)]
            if todo:
                if set(todo) <= batch.unrouted:
                    subject = messages[todo[0]].subject
                    raise PublishError(f"no stream listens on {subject!r}", hint="run `hivebus up` once to create the streams")
                raise PublishError(
                    f"{len(todo)} of {len(messages)} messages were not acknowledged after {retries} retries",
                    hint="is the NATS server up?",
                )
            return batch.seqs
        finally:
            del self._batches[batch_id]

    async def _send(self, batch: _Batch, batch_id: str, todo: list[int], timeout: float) -> None:
        """Send ``todo`` keeping at most ``window`` unanswered; stop early if replies stall."""
        batch.connection = self._connection()
        publish = self._nc.publish
        reply_prefix = f"{self._prefix}{batch_id}."
        window = self._window
        base = batch.replies
        for sent, i in enumerate(todo, start=1):
            m = batch.messages[i]
            await publish(m.subject, m.payload, reply=reply_prefix + str(i), headers={MSG_ID: m.msg_id})
            if sent - (batch.replies - base) >= window:

                def half_drained(sent: int = sent) -> bool:
                    return sent - (batch.replies - base) < window // 2

                if not await self._until(batch, half_drained, timeout):
                    return  # acks stopped (server gone?): the rest goes in the next attempt

    async def _settle(self, batch: _Batch, timeout: float) -> None:
        try:
            await self._nc.flush(timeout=max(1, int(timeout)))
        except Exception as exc:  # disconnected: the acks will not come; the caller resends
            log.warning("publish.flush_failed", error=str(exc))
            return
        await self._until(batch, lambda: batch.resolved + len(batch.unrouted) >= len(batch.messages), timeout)

    def _connection(self) -> int:
        """Which connection the client is on: nats-py counts completed reconnects."""
        return int(self._nc.stats.get("reconnects", 0))

    async def _until(self, batch: _Batch, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()``; False if ``timeout`` seconds pass with no reply at all, or as
        soon as the client has reconnected since the attempt went out: the acks of messages
        that were on the lost connection never come (the server was killed, or the client
        moved to another cluster member), so the caller sends them again now rather than
        after ``timeout`` (measured: a forwarder batch in flight when the hub was SIGKILLed
        waited the whole 5 s ack timeout after the hub was back)."""
        loop = asyncio.get_running_loop()
        quiet_since, replies = loop.time(), batch.replies
        while not done():
            if self._connection() != batch.connection:
                return False
            batch.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(_RECHECK_S, timeout)):
                    await batch.wake.wait()
            now = loop.time()
            if batch.replies != replies:
                quiet_since, replies = now, batch.replies
            elif now - quiet_since >= timeout:
                return False
        return True


def _ack_seq(data: bytes) -> int:
    """The sequence in a PubAck (``{"stream":"DATA","seq":42[,"duplicate":true]}``), 0 if none.

    A substring scan: json.loads per ack was the largest cost of a pipelined publish.
    """
    start = data.find(b'"seq":')
    if start < 0 or b'"error"' in data:
        return 0
    start += 6
    end = start
    while end < len(data) and 48 <= data[end] <= 57:
        end += 1
    return int(data[start:end]) if end > start else 0


def _ack_failure(data: bytes) -> Exception:
    try:
        ack = json.loads(data)
    except ValueError:
        return PublishError(f"unreadable ack {data[:80]!r}")
    return _ack_error(ack.get("error", {"description": str(ack)[:200]}))


def _ack_error(error: dict) -> Exception:
    if error.get("err_code") == WRONG_LAST_SEQUENCE:
        return ConcurrencyConflict("", -1, error.get("description", ""))
    return PublishError(f"JetStream refused the message: {error.get('description', error)}")
