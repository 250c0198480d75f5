"""Live streams over HTTP: ``GET /api/v1/stream`` as Server-Sent Events.

Two kinds, one per connection (``kind=events``, the default, or ``kind=readings``):

- **events** of the EVENTS stream with the filters of ``hivebus tail``: ``to_edge=NODE|*``
  (goals and config the hub sends a node), ``from_edge=NODE|*`` (what nodes report: plugin
  states, triggers, heartbeats), ``type=GLOB`` (``trigger.fired``, ``ses.*``); neither route
  given means every event, the control log too. Each SSE message is ``hivebus tail --json``'s
  line: ``{"seq", "id", "type", "source", "subject", "time", "data", ...}``. As on NATS, where
  the public identity cannot read ``toedge.>``, to-edge traffic is for admins
  (``Authorization: sage <token>``): ``to_edge=`` without is a 403, and the unrouted stream
  leaves it out. Browsers' ``EventSource`` sends no header, so the dashboard's streams are
  anonymous: facts, from-edge events and readings.
- **readings** of the DATA stream: ``node=NODE|*``, ``name=GLOB`` (``env.temperature``,
  ``env.*``). Each message is ``{"seq", "node", "timestamp", "name", "value", "meta"}``.

``since=-1h`` (or an ISO time) starts from history; without it only what arrives from now on.
Every message's ``id:`` is its stream sequence (``SEQ``; ``SEQ:I`` for the I-th reading of a
packed DATA message, ``bus.batch``, which carries many), so a client that reconnects with ``Last-Event-ID`` (browsers'
``EventSource`` do it by themselves; ``?last_event_id=`` works too) goes on right after the last
message it saw: nothing lost, nothing repeated. A comment line is sent every ``heartbeat``
seconds (15 by default) so proxies keep the connection open. Memory is bounded for a slow
client: the reader pulls at most ``BATCH`` messages ahead and waits while ``QUEUE`` are
buffered, so the stream stays where the client is (JetStream keeps the rest). When the hub
restarts, the stream goes on from the next sequence, like ``hivebus tail``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import structlog
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from nats.errors import Error as NatsError

from hivebus.api import parse_since, tail_subjects
from hivebus.bus import batch as wire
from hivebus.bus.client import Bus
from hivebus.bus.streams import DATA, EVENTS
from hivebus.bus.subjects import data_filter
from hivebus.errors import BusError, HivebusError, PermissionDenied
from hivebus.schemas import Event, codec
from hivebus.web.app import WebFace
from hivebus.web.errors import ApiError

log = structlog.get_logger()
router = APIRouter(tags=["streams"])

BATCH: Final = 200  # messages one pull asks for
QUEUE: Final = 1000  # SSE messages buffered for a client, at most
SSE: Final = "text/event-stream"
READING: Final = "data.reading"
_GLOB = frozenset("*?[")


@dataclass(frozen=True)
class Cursor:
    """Where a client stands: after message ``seq`` (and its reading ``index`` in a batch)."""

    seq: int
    index: int | None = None

    @classmethod
    def parse(cls, text: str) -> Cursor:
        seq, _, index = text.strip().partition(":")
        try:
            cursor = cls(int(seq), int(index) if index else None)
        except ValueError:
            raise ApiError(400, f"Last-Event-ID {text!r} is not an event id of this stream",
                           "send the id: of the last message received (SEQ or SEQ:INDEX)") from None
        if cursor.seq < 0 or (cursor.index is not None and cursor.index < 0):
            raise ApiError(400, f"Last-Event-ID {text!r} is negative", "send the id: of the last message received")
        return cursor

    def __str__(self) -> str:
        return str(self.seq) if self.index is None else f"{self.seq}:{self.index}"


@dataclass(frozen=True)
class Item:
    cursor: Cursor
    body: dict[str, Any]


def _event_body(seq: int, event: Event) -> dict[str, Any]:
    return {"seq": seq, **codec.to_dict(event)}


def _reading_body(seq: int, node: str | None, reading: Any) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(reading.timestamp / 1e9, tz=UTC)
    return {"seq": seq, "node": node, "timestamp": stamp.isoformat().replace("+00:00", "Z"),
            "name": reading.name, "value": reading.value, "meta": dict(reading.meta)}


@dataclass(frozen=True)
class Selection:
    """What one connection follows."""

    kind: Literal["events", "readings"]
    subjects: list[str]
    type_glob: str = "*"
    name_glob: str = "*"

    @property
    def stream(self) -> str:
        return EVENTS if self.kind == "events" else DATA

    def items(self, seq: int, data: bytes) -> Iterator[Item]:
        if self.kind == "readings" and wire.is_batch(data):
            yield from self._packed(seq, data)
            return
        try:
            event = codec.decode(data)
        except HivebusError:
            return  # the projector records it in dead_letters
        if self.kind == "events":
            if fnmatch.fnmatchcase(event.type, self.type_glob):
                yield Item(Cursor(seq), _event_body(seq, event))
        elif event.type == READING and fnmatch.fnmatchcase(event.data.name, self.name_glob):
            yield Item(Cursor(seq), _reading_body(seq, event.node, event.data))

    def _packed(self, seq: int, data: bytes) -> Iterator[Item]:
        """The readings of a packed DATA message, each ``SEQ:I`` (bad ones are skipped: the
        projector records each in dead_letters)."""
        try:
            bodies = wire.unpack(data)
        except HivebusError:
            return
        for index, body in enumerate(bodies):
            try:
                event = codec.decode(body)
            except HivebusError:
                continue
            if event.type == READING and fnmatch.fnmatchcase(event.data.name, self.name_glob):
                yield Item(Cursor(seq, index), _reading_body(seq, event.node, event.data))


def selection(kind: str, to_edge: str | None, from_edge: str | None, type_glob: str, node: str | None,
              name: str | None) -> Selection:
    if kind == "events":
        if node is not None or name is not None:
            raise ApiError(400, "node= and name= filter readings", "add kind=readings, or use to_edge= / from_edge= for events")
        return Selection("events", tail_subjects(to_edge, from_edge), type_glob=type_glob or "*")
    if kind == "readings":
        if to_edge is not None or from_edge is not None:
            raise ApiError(400, "to_edge= and from_edge= filter events, not readings", "use node= (and name=) with kind=readings")
        glob = name or "*"
        # An exact name (no glob) narrows the server's filter to its own subject and the
        # node's packed messages (which carry every name); a glob is matched here.
        exact = name if name and not (_GLOB & set(name)) else None
        subjects = [data_filter(node or "*", exact or ">")]
        if exact:
            subjects.append(data_filter(node or "*", wire.BATCH_TOKEN))
        return Selection("readings", subjects, name_glob=glob)
    raise ApiError(400, f"kind {kind!r} is not a stream", "kind=events (the default) or kind=readings")


def public_only(chosen: Selection, *, asked_to_edge: bool) -> Selection:
    """What the public NATS identity may read of EVENTS (``auth.permissions``): the platform's
    facts and what nodes send, never the goals and config the hub sends a node (to-edge)."""
    if asked_to_edge:
        raise ApiError(403, "to-edge goals and config are for admins",
                       "send 'Authorization: sage <token>' of an admin; from_edge= and type= need no token")
    return replace(chosen, subjects=[s for s in chosen.subjects if not s.startswith("toedge.")])


async def follow(bus: Bus, chosen: Selection, *, start: datetime | None, after: Cursor | None) -> AsyncIterator[Item]:
    """Items from ``after`` (exclusive), or from ``start``, or from now on; across hub restarts."""
    last: Cursor | None = after
    if last is None and start is None:
        last = Cursor(await bus.last_seq(chosen.stream))
    while True:
        if last is None:
            reader = bus.read(chosen.stream, filter_subjects=chosen.subjects, start_time=start, batch=BATCH)
        else:
            # A batch message partly sent is read again and its sent readings skipped.
            first = last.seq if last.index is not None else last.seq + 1
            reader = bus.read(chosen.stream, filter_subjects=chosen.subjects, start_seq=max(first, 1), batch=BATCH)
        try:
            async for batch in reader:
                for message in batch:
                    if last is not None and message.seq < last.seq:
                        continue
                    for item in chosen.items(message.seq, message.data):
                        if last is not None and item.cursor.seq == last.seq and (
                                last.index is None or (item.cursor.index or 0) <= last.index):
                            continue
                        yield item
                    last = Cursor(message.seq)
        except PermissionDenied:
            raise
        except (BusError, NatsError, TimeoutError) as exc:
            log.info("web.stream.resuming", after=str(last), error=str(exc) or exc.__class__.__name__)
            await asyncio.sleep(0.5)


def frame(item: Item) -> bytes:
    return f"id: {item.cursor}\ndata: {json.dumps(item.body, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


async def sse(source: AsyncIterator[Item], heartbeat: float) -> AsyncIterator[bytes]:
    """SSE frames of ``source``, with a comment every ``heartbeat`` s of silence.

    A task reads ahead into a bounded queue: when the client is slow the queue fills and the
    reader waits, so memory stays bounded and nothing is skipped.
    """
    queue: asyncio.Queue[Item | BaseException] = asyncio.Queue(maxsize=QUEUE)

    async def pump() -> None:
        try:
            async for item in source:
                await queue.put(item)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await queue.put(exc)

    task = asyncio.create_task(pump(), name="web-stream")
    try:
        yield b": hivebus stream\nretry: 1000\n\n"
        while True:
            try:
                async with asyncio.timeout(heartbeat):
                    got = await queue.get()
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if isinstance(got, BaseException):
                error = got.hint if isinstance(got, HivebusError) and got.hint else None
                reason = {"error": Exception.__str__(got) or got.__class__.__name__, "hint": error}
                log.warning("web.stream.ended", error=reason["error"])
                yield f"event: error\ndata: {json.dumps(reason)}\n\n".encode()
                return
            yield frame(got)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


@router.get("/stream", response_class=StreamingResponse,
            responses={200: {"content": {SSE: {}}, "description": "Server-Sent Events, one JSON message each"}})
async def stream(
    web: WebFace,
    kind: Annotated[str, Query(description="events (the default) or readings")] = "events",
    to_edge: Annotated[str | None, Query(description="events the hub sends NODE ('*' for every node)")] = None,
    from_edge: Annotated[str | None, Query(description="events NODE sends the hub ('*' for every node)")] = None,
    type: Annotated[str, Query(description="event types matching this glob, e.g. trigger.fired or ses.*")] = "*",
    node: Annotated[str | None, Query(description="readings of NODE (kind=readings; default every node)")] = None,
    name: Annotated[str | None, Query(description="readings whose name matches this glob (kind=readings)")] = None,
    since: Annotated[str | None, Query(description="start from history: -1h, -30m or an ISO time")] = None,
    last_event_id: Annotated[str | None, Query(description="resume after this id (as the Last-Event-ID header)")] = None,
    heartbeat: Annotated[float, Query(gt=0, le=300, description="seconds between keep-alive comments")] = 15.0,
    last_event_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Follow events or readings live as Server-Sent Events; ``Last-Event-ID`` resumes without loss."""
    chosen = selection(kind, to_edge, from_edge, type, node, name)
    viewer = await web.identities.user_of(authorization)  # 401 for a bad token
    if chosen.kind == "events" and not (viewer is not None and web.identities.is_admin(viewer)):
        chosen = public_only(chosen, asked_to_edge=to_edge is not None)
    resume = last_event_header or last_event_id
    after = Cursor.parse(resume) if resume else None
    start = None
    if since is not None and after is None:
        try:
            start = parse_since(since)
        except HivebusError as exc:
            raise ApiError(400, Exception.__str__(exc), "since=-1h, -30m, -2d or an ISO time like 2025-05-01T10:00:00Z") from None
    if after is None and start is None:
        # Pinned before the response starts: whatever is stored once a client sees the
        # stream open reaches it.
        after = Cursor(await web.bus.last_seq(chosen.stream))
    source = follow(web.bus, chosen, start=start, after=after)
    return StreamingResponse(sse(source, heartbeat), media_type=SSE,
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
