"""The Python API: ``async with hivebus.connect() as hub:``.

    import hivebus
    from hivebus.schemas.ecr import BundleApproved

    async with hivebus.connect("nats://127.0.0.1:4222") as hub:
        seq = await hub.publish(BundleApproved(bundle_id="waggle/plugin-bme680:0.2.1", by="admin"),
                                source="user/admin")
        rows = (await hub.query("select id, state from bundles", min_seq=seq)).records()
        async for event in hub.tail(from_edge="*", type="trigger.fired"):
            print(event.data)

A user's action (here an approval) is a command the ECR decides; on a hub with
authentication it needs the user's token: ``hub.publish(payload, source="user/alice",
token=...)``; a refusal raises ``RequestRejected`` with every reason. On a hub with
authentication the command then travels on a connection of that user's own, which the hub
lets in only with the user's current token and which may act only as that user (the token
does not travel in the command; ``hivebus.auth.user_callout``); nothing changes in the call.
``publish`` returns the event's stream sequence; passing it as ``min_seq`` to ``query``
waits until the views include it (read-your-writes). ``tail`` follows to-edge goals,
from-edge events and triggers live, or from a point in history (``since="-1h"``).
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from nats.errors import Error as NatsError

from hivebus.bus.client import Bus
from hivebus.bus.streams import EVENTS
from hivebus.bus.subjects import EVENTS_SUBJECTS, fromedge_filter, toedge_filter
from hivebus.config import Settings, parse_duration
from hivebus.errors import BusError, HivebusError, PermissionDenied, RequestRejected, SchemaError
from hivebus.schemas import Event, Payload, codec

if TYPE_CHECKING:
    import pandas as pd

    from hivebus.projections.client import QueryResult

log = structlog.get_logger()


def tail_subjects(to_edge: str | None = None, from_edge: str | None = None) -> list[str]:
    """The EVENTS subjects to follow: one node's or every node's ('*') to-edge and/or
    from-edge traffic; everything (the control log too) when neither is given."""
    if to_edge is None and from_edge is None:
        return list(EVENTS_SUBJECTS)
    subjects = []
    if to_edge is not None:
        subjects.append("toedge.>" if to_edge == "*" else toedge_filter(to_edge))
    if from_edge is not None:
        subjects.append(fromedge_filter(from_edge))
    return subjects


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``-1h``, ``-30m``, ``-2d``, ``-90s`` or an ISO time (UTC if it has no zone)."""
    now = now or datetime.now(UTC)
    if text.startswith("-"):
        return now - parse_duration(text[1:], name="since")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise SchemaError(f"since {text!r} is neither a relative time like -1h nor an ISO time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class Hub:
    """A connection to a running hivebus hub."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def publish(
        self, event: Event | Payload, *, source: str = "user/api", subject: str | None = None, token: str | None = None
    ) -> int:
        """Publish an event (or a payload, wrapped in a new event); returns its stream sequence.

        A user's action (a push, approval, grant, job submission...; ``source`` ``user/<name>``)
        is a command, not an event: it goes to the ECR's or the scheduler's decider (with
        ``token``, a user token from ``hivebus user add``, through the command gateway, as a hub
        with authentication requires), which appends the facts. It returns the sequence of the
        last fact once decided, and raises ``RequestRejected`` with every reason when refused
        (the refusal is kept as an ``ecr.command.rejected`` / ``ses.command.rejected`` fact).
        """
        if isinstance(event, Payload):
            event = Event.new(event, source=source, subject=subject or aggregate_of(event))
        from hivebus.schemas.commands import command_of

        if command_of(event) is None:
            return await self.bus.publish(event)
        from hivebus.services.requests import send_command

        answer = await send_command(self.bus, event, token=token)
        if answer.rejection is not None:
            reasons = answer.reasons
            raise RequestRejected(f"{answer.rejection.data.command} refused: {'; '.join(reasons)}", reasons)
        return answer.seq

    async def query(
        self,
        sql: str,
        params: list[Any] | dict[str, Any] | None = None,
        *,
        min_seq: int | Mapping[str, int] | None = None,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> QueryResult:
        """Read-only SQL over the views; ``min_seq`` waits until they include that event."""
        from hivebus.projections.client import query

        return await query(self.bus, sql, params, dict(min_seq) if isinstance(min_seq, Mapping) else min_seq, limit, timeout=timeout)

    async def data(self, start: str | datetime, end: str | datetime | None = None, **options: Any) -> pd.DataFrame:
        """Readings as a DataFrame, like ``sage_data_client.query`` (see ``hivebus.data``)."""
        from hivebus.data import aquery

        return await aquery(self.bus, start, end, **options)

    async def tail(
        self,
        *,
        to_edge: str | None = None,
        from_edge: str | None = None,
        type: str = "*",
        since: str | datetime | None = None,
    ) -> AsyncIterator[Event]:
        """Events as they happen (or from ``since`` on), filtered by route and type glob."""
        async for _seq, event in self.tail_with_seq(to_edge=to_edge, from_edge=from_edge, type=type, since=since):
            yield event

    async def tail_with_seq(
        self,
        *,
        to_edge: str | None = None,
        from_edge: str | None = None,
        type: str = "*",
        since: str | datetime | None = None,
    ) -> AsyncIterator[tuple[int, Event]]:
        start = parse_since(since) if isinstance(since, str) else since
        subjects = tail_subjects(to_edge, from_edge)
        # The last stream sequence read: after a hub restart (the reader's consumer gone, the
        # hub away for a while) the tail goes on from the next one, nothing lost or repeated.
        last: int | None = await self.bus.last_seq(EVENTS) if start is None else None
        while True:
            if last is None:
                reader = self.bus.read(EVENTS, filter_subjects=subjects, start_time=start)
            else:
                reader = self.bus.read(EVENTS, filter_subjects=subjects, start_seq=last + 1)
            try:
                async for batch in reader:
                    for message in batch:
                        last = message.seq
                        try:
                            event = codec.decode(message.data)
                        except HivebusError:
                            continue  # the projector records it in dead_letters
                        if fnmatch.fnmatchcase(event.type, type):
                            yield message.seq, event
            except PermissionDenied:
                raise
            except (BusError, NatsError, TimeoutError) as exc:
                log.info("tail.resuming", after_seq=last, error=str(exc) or exc.__class__.__name__)
                await asyncio.sleep(0.5)

    subscribe = tail


def aggregate_of(payload: Payload) -> str:
    for name in ("bundle_id", "job_id", "resource", "node", "node_id", "bucket_id", "id", "name", "user"):
        value = getattr(payload, name, None)
        if isinstance(value, str) and value:
            return value
    raise SchemaError(f"cannot tell which aggregate a {type(payload).__name__} is about", hint="pass subject=")


@asynccontextmanager
async def connect(url: str | None = None, *, name: str = "hivebus-api") -> AsyncIterator[Hub]:
    """Connect to the hub at ``url`` (default ``HIVEBUS_NATS_URL`` or nats://127.0.0.1:4222)."""
    settings = Settings.from_env(nats_url=url)
    bus = await Bus.connect(settings.nats_url, name=name, settings=settings)
    try:
        yield Hub(bus)
    finally:
        await bus.close()
