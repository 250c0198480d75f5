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
import json
from collections.abc import Sequence
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


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: subject, body, and its dedup id."""

    subject: str
    payload: bytes
    msg_id: str


@dataclass(slots=True)
class _Batch:
    size: int
    seqs: list[int] = field(default_factory=list)
    errors: dict[int, Exception] = field(default_factory=dict)
    done: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.seqs = [0] * self.size


class Pipeline:
    def __init__(self, nc: NATS, *, window: int = 8192) -> None:
        self._nc = nc
        self._window = window
        self._prefix = ""
        self._batches: dict[str, _Batch] = {}
        self._counter = 0
        self._lock = asyncio.Lock()

    async def _ensure_inbox(self) -> None:
        if not self._prefix:
            self._prefix = self._nc.new_inbox() + "."
            await self._nc.subscribe(self._prefix + ">", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        batch_id, _, index = msg.subject[len(self._prefix) :].partition(".")
        batch = self._batches.get(batch_id)
        if batch is None:
            return
        i = int(index)
        if batch.seqs[i] or i in batch.errors:
            return  # a late ack for a message we already sent again
        if msg.headers and msg.headers.get("Status") == "503":
            batch.errors[i] = PublishError(f"no stream listens on {msg.subject!r}")
        else:
            seq = _ack_seq(msg.data)
            if seq:
                batch.seqs[i] = seq
            else:
                batch.errors[i] = _ack_failure(msg.data)
        batch.done += 1
        batch.wake.set()

    async def publish(
        self, messages: Sequence[Outgoing], *, timeout: float = 10.0, retries: int = 5
    ) -> list[int]:
        """Publish ``messages`` pipelined; returns each one's stream sequence, in order.

        Waits for every ack. Messages unacknowledged after ``timeout`` seconds without
        progress are sent again (same ``Nats-Msg-Id``), up to ``retries`` times.
        """
        if not messages:
            return []
        await self._ensure_inbox()
        self._counter += 1
        batch_id = str(self._counter)
        batch = _Batch(len(messages))
        self._batches[batch_id] = batch
        try:
            todo = list(range(len(messages)))
            for attempt in range(retries + 1):
                await self._send(batch, batch_id, messages, todo, timeout)
                await self._wait(batch, timeout)
                todo = [i for i in todo if not batch.seqs[i] and i not in batch.errors]
                if not todo:
                    break
                log.warning("publish.retry", unacked=len(todo), attempt=attempt + 1)
            if batch.errors:
                first = min(batch.errors)
                raise batch.errors[first]
            if todo:
                raise PublishError(
                    f"{len(todo)} of {len(messages)} messages were not acknowledged after {retries} retries",
                    hint="is the NATS server up and does a stream listen on these subjects?",
                )
            return batch.seqs
        finally:
            del self._batches[batch_id]

    async def _send(self, batch: _Batch, batch_id: str, messages: Sequence[Outgoing], todo: list[int], timeout: float) -> None:
        publish = self._nc.publish
        reply_prefix = f"{self._prefix}{batch_id}."
        window = self._window
        sent = batch.done
        for i in todo:
            m = messages[i]
            await publish(m.subject, m.payload, reply=reply_prefix + str(i), headers={MSG_ID: m.msg_id})
            sent += 1
            if sent - batch.done >= window:
                await self._drain_to(batch, sent - window // 2, timeout)

    async def _drain_to(self, batch: _Batch, target: int, timeout: float) -> None:
        """Wait until at least ``target`` acks arrived (or ``timeout`` passes without progress)."""
        while batch.done < target:
            batch.wake.clear()
            before = batch.done
            try:
                await asyncio.wait_for(batch.wake.wait(), timeout)
            except TimeoutError:
                if batch.done == before:
                    return

    async def _wait(self, batch: _Batch, timeout: float) -> None:
        try:
            await self._nc.flush(timeout=max(1, int(timeout)))
        except Exception as exc:  # disconnected: the acks will not come; the caller resends
            log.warning("publish.flush_failed", error=str(exc))
            return
        await self._drain_to(batch, batch.size, timeout)


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
