"""The object store's bookkeeping on the bus: fold the storage facts, decide, append.

``Storage`` keeps ``handlers.storage.StorageState`` caught up on ``evt.storage.>`` (before
every decision, so another API replica's writes count) and appends a decision's facts with
``Nats-Expected-Last-Subject-Sequence`` on the bucket's subjects: two replicas deciding on
one bucket at once cannot both win; the loser decides again on the newer state. A refusal is
appended as ``storage.command.rejected`` (every reason, for audit) and raised as ``Refused``.
"""

from __future__ import annotations

import asyncio
from typing import Final, NoReturn

import structlog

from hivebus.bus.client import Bus
from hivebus.bus.streams import EVENTS
from hivebus.bus.subjects import decode_token, encode_token
from hivebus.errors import ConcurrencyConflict, SchemaError
from hivebus.handlers import storage as rules
from hivebus.schemas import codec
from hivebus.schemas.envelope import Event

log = structlog.get_logger()
SOURCE: Final = "handler/storage"
FILTER: Final = "evt.storage.>"


class Refused(Exception):
    def __init__(self, refusal: rules.Refusal) -> None:
        super().__init__("; ".join(refusal.reasons))
        self.refusal = refusal


class Storage:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.state = rules.StorageState()
        self._position = 0
        self._last: dict[str, int] = {}  # bucket id -> last sequence on its subjects (rejections too)
        self._lock = asyncio.Lock()
        self._reading = asyncio.Lock()  # one fold at a time: concurrent requests catch up in turn

    async def catch_up(self) -> rules.StorageState:
        async with self._reading:
            return await self._catch_up()

    async def _catch_up(self) -> rules.StorageState:
        async for batch in self.bus.read(EVENTS, start_seq=self._position + 1, filter_subjects=[FILTER], stop_at_end=True):
            for message in batch:
                self._position = max(self._position, message.seq)
                self._last[decode_token(message.subject.rpartition(".")[2])] = message.seq
                try:
                    rules.evolve(self.state, codec.decode(message.data), message.seq)
                except SchemaError as exc:
                    log.warning("storage.bad_event", seq=message.seq, error=str(exc))
        return self.state

    async def check(self, command: rules.Command) -> None:
        """``Refused`` (and a rejection in the log) if ``command`` would be refused now; no facts."""
        async with self._lock:
            await self.catch_up()
            decision = rules.decide(self.state, command)
            if isinstance(decision, rules.Refusal):
                await self._reject(command, decision)

    async def _reject(self, command: rules.Command, refusal: rules.Refusal) -> NoReturn:
        rejected = Event.new(rules.rejection(command, refusal), source=SOURCE, subject=command.bucket_id or "-")
        await self.bus.publish(rejected)
        raise Refused(refusal)

    async def act(self, command: rules.Command, attempts: int = 5) -> list[Event]:
        """Decide ``command`` and append its facts; ``Refused`` says why not."""
        async with self._lock:
            for _ in range(attempts):
                await self.catch_up()
                decision = rules.decide(self.state, command)
                if isinstance(decision, rules.Refusal):
                    await self._reject(command, decision)
                expected = self._last.get(command.bucket_id, 0)
                events = [Event.new(p, source=SOURCE, subject=command.bucket_id) for p in decision]
                try:
                    for event in events:
                        expected = await self.bus.publish(
                            event, expected_last_subject_seq=expected,
                            expected_subject=f"evt.storage.*.*.{encode_token(command.bucket_id)}",
                        )
                except ConcurrencyConflict:
                    continue  # someone else changed the bucket: decide again on what they did
                await self.catch_up()
                return events
        raise Refused(rules.Refusal("conflict", [f"bucket {command.bucket_id} kept changing; try again"]))
