"""Reading intake: every reading produced on the node, routed by its scope.

Plugins publish ``local.publish.<name>`` on the node-local bus; the agent's own readings
(``sys.*``, virtual sensors) come through ``accept``. Each reading is enriched (``node``,
``vsn``, ``host`` are set by the agent and override whatever a plugin claimed; ``job``,
``task``, ``plugin`` are the SDK's), remembered for science rules and the sensor watch, and
then routed as docs/node-local-bus.md says: scope ``node`` -> ``readings.<name>`` on the local
bus only, ``beehive`` -> the outbox only, ``all`` -> both.

Readings that arrive together go to the outbox in one ``submit`` (one group commit). A plugin
that sent a request (a reply subject) is answered once its reading is on disk (``{"ok": true,
"nodeseq": n}``) or refused (``{"error": ...}``); a bad reading is counted
(``readings.invalid``) and never stops the intake.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError

from hivebus.edge.outbox import Outbox
from hivebus.edge.recent import RecentReadings
from hivebus.edge.sensors import SensorWatch
from hivebus.schemas.data import Reading
from hivebus.schemas.envelope import Event

log = structlog.get_logger()

PUBLISH_PREFIX: Final = "local.publish."
READINGS_PREFIX: Final = "readings."
INVALID: Final = "readings.invalid"


@dataclass(frozen=True)
class Identity:
    node: str
    vsn: str
    host: str


LocalPublish = Callable[[str, bytes], Awaitable[None]]


class Intake:
    def __init__(
        self,
        *,
        identity: Identity,
        outbox: Outbox,
        recent: RecentReadings,
        sensors: SensorWatch,
        publish_local: LocalPublish,
    ) -> None:
        self.identity = identity
        self.outbox = outbox
        self.recent = recent
        self.sensors = sensors
        self.publish_local = publish_local
        self._source = f"node/{identity.node}"
        self._batch: list[Event] = []
        self._replies: list[tuple[int, str]] = []
        self._flush_scheduled = False
        self._pending: set[asyncio.Future[Any]] = set()
        self.accepted = 0
        self.invalid = 0

    # --- from plugins -------------------------------------------------------------------

    async def on_local_publish(self, msg: Msg) -> None:
        """The local-bus callback for ``local.publish.>``."""
        try:
            reading = self._parse(msg.subject, msg.data)
        except ValueError as exc:
            self.invalid += 1
            self.outbox.count_drop(INVALID)
            if self.invalid == 1 or self.invalid % 1000 == 0:
                log.warning(
                    "intake.invalid_reading",
                    subject=msg.subject,
                    error=str(exc),
                    total=self.invalid,
                )
            if msg.reply:
                await msg.respond(json.dumps({"error": str(exc)}).encode())
            return
        index = await self._route(reading)
        if msg.reply:
            if index is None:
                await msg.respond(b'{"ok":true}')
            else:
                self._replies.append((index, msg.reply))

    def _parse(self, subject: str, data: bytes) -> Reading:
        name = subject[len(PUBLISH_PREFIX) :]
        try:
            reading = Reading.model_validate_json(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in first["loc"]) or "<body>"
            raise ValueError(f"{field}: {first['msg']}") from None
        if reading.name != name:
            raise ValueError(f"name {reading.name!r} does not match the subject {subject!r}")
        return reading

    # --- from the agent -----------------------------------------------------------------

    async def accept(self, readings: Sequence[Reading]) -> None:
        """The agent's own readings (``sys.*``, virtual sensors), routed like a plugin's."""
        for reading in readings:
            await self._route(reading)

    # --- routing ------------------------------------------------------------------------

    async def _route(self, reading: Reading) -> int | None:
        """Enrich, remember, publish locally and/or queue for the outbox; the index of the
        event in the pending outbox batch, or None if it does not go to the hub."""
        reading = self._enriched(reading)
        self.accepted += 1
        self.recent.add(reading.name, reading.value, reading.timestamp, reading.meta)
        self.sensors.saw(reading.name)
        if reading.scope != "beehive":
            await self.publish_local(
                READINGS_PREFIX + reading.name, reading.model_dump_json().encode()
            )
        if reading.scope == "node":
            return None
        self._batch.append(Event.new(reading, source=self._source, subject=self.identity.node))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return len(self._batch) - 1

    def _enriched(self, reading: Reading) -> Reading:
        meta = reading.meta
        ident = self.identity
        if (
            meta.get("node") == ident.node
            and meta.get("vsn") == ident.vsn
            and meta.get("host") == ident.host
        ):
            return reading
        return reading.model_copy(
            update={"meta": {**meta, "node": ident.node, "vsn": ident.vsn, "host": ident.host}}
        )

    def _flush(self) -> None:
        """Send what arrived since the last flush to the outbox as one group."""
        self._flush_scheduled = False
        batch, replies = self._batch, self._replies
        self._batch, self._replies = [], []
        if not batch:
            return
        try:
            future = self.outbox.submit(batch)
        except Exception as exc:  # outbox closed (shutting down) or an event too large
            log.error("intake.outbox_refused", error=str(exc), n=len(batch))
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
        # Keep a reference to what is pending, so a failure is retrieved and logged.
        task: asyncio.Future[Any] = (
            asyncio.ensure_future(self._answer(future, replies)) if replies else future
        )
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("intake.append_failed", error=str(task.exception()))

    async def _answer(
        self, future: asyncio.Future[list[int | None]], replies: list[tuple[int, str]]
    ) -> None:
        try:
            seqs = await future
        except Exception as exc:
            body = json.dumps({"error": str(exc)}).encode()
            for _, reply in replies:
                await self.publish_local(reply, body)
            return
        for index, reply in replies:
            seq = seqs[index]
            body = (
                b'{"ok":true,"nodeseq":%d}' % seq
                if seq is not None
                else b'{"ok":true,"dropped":true}'
            )
            await self.publish_local(reply, body)

    async def drain(self) -> None:
        """Wait until everything accepted so far is on disk."""
        self._flush()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
