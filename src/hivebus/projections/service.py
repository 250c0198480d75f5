"""The ``hivebus.query`` request/reply service the projector serves.

Request (JSON): ``{"sql", "params", "min_seq", "limit", "timeout", "format", "chunked"}``;
reply: ``{"columns", "types", "rows", "positions", "truncated"}`` or ``{"error", "kind"}``
(kinds: ``QueryRefused``, ``QueryError``, ``QueryTimeout``). ``min_seq`` makes the service wait,
within ``timeout``, until the views have applied that sequence (read-your-writes).

A reply that does not fit one NATS message is cut for plain requesters (``truncated``), and
sent as several messages to clients that ask for ``chunked`` replies (``hivebus.projections
.client`` does): each carries the headers ``Hivebus-Chunk`` (index) and ``Hivebus-Chunks``
(count). ``format: "arrow"`` (chunked only) sends Arrow IPC streams instead of JSON.

Every request is answered in its own task, so a slow query never delays the others; a query
past its timeout is interrupted and answered with ``QueryTimeout``, and the service goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import structlog
from nats.aio.msg import Msg

from hivebus.bus.client import Bus
from hivebus.errors import HivebusError, QueryError, QueryTimeout
from hivebus.projections.query import QueryEngine, QueryRequest
from hivebus.projections.results import arrow_replies, dumps, json_replies

log = structlog.get_logger()

QUERY_SUBJECT = "hivebus.query"
QUEUE = "hivebus-query"
CHUNK = "Hivebus-Chunk"
CHUNKS = "Hivebus-Chunks"
CONTENT_TYPE = "Content-Type"
JSON_TYPE = "application/json"
ARROW_TYPE = "application/vnd.apache.arrow.stream"

WaitFor = Callable[[dict[str, int], float], Awaitable[bool]]


@contextlib.asynccontextmanager
async def _no_gate() -> AsyncIterator[None]:
    yield


class QueryService:
    """Answers ``hivebus.query`` with ``engine``; ``wait_for`` serves ``min_seq``."""

    def __init__(
        self,
        bus: Bus,
        engine: QueryEngine,
        *,
        wait_for: WaitFor | None = None,
        positions: Callable[[], dict[str, int]] | None = None,
        gate: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
        subject: str = QUERY_SUBJECT,
    ) -> None:
        self.bus = bus
        self.engine = engine
        self.wait_for = wait_for
        self.positions = positions
        self.gate = gate or _no_gate
        self.subject = subject
        self._sub: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.answered = 0

    async def start(self) -> None:
        self._sub = await self.bus.nc.subscribe(self.subject, queue=QUEUE, cb=self._on_request)
        await self.bus.nc.flush()

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_request(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        started = time.monotonic()
        chunked, fmt = False, "json"
        try:
            request = QueryRequest.from_dict(_json(msg.data))
            chunked, fmt = request.chunked, request.format
            if fmt == "arrow" and not chunked:
                raise QueryError("format \"arrow\" needs chunked replies (\"chunked\": true)")
            if request.min_seq:
                await self._reach(request.min_seq, request.timeout)
            remaining = max(0.001, request.timeout - (time.monotonic() - started))
            async with self.gate():
                result = await self.engine.run(request.sql, request.params, limit=request.limit, timeout=remaining)
            max_bytes = self.bus.nc.max_payload - 1024
            if fmt == "arrow":
                bodies = arrow_replies(result.table, positions=result.positions, truncated=result.truncated,
                                       max_bytes=max_bytes)
            else:
                bodies = json_replies(result.table, positions=result.positions, truncated=result.truncated,
                                      max_bytes=max_bytes, chunked=chunked)
            kind = ARROW_TYPE if fmt == "arrow" else JSON_TYPE
            log.debug("query.answered", rows=result.table.num_rows, messages=len(bodies),
                      seconds=round(time.monotonic() - started, 4))
        except HivebusError as exc:
            bodies, kind = [error_body(exc)], JSON_TYPE
            log.info("query.failed", kind=type(exc).__name__, error=str(exc))
        except Exception as exc:  # a bug: answer it, keep serving
            log.exception("query.crashed")
            bodies, kind = [dumps({"error": f"internal error: {type(exc).__name__}: {exc}", "kind": "QueryError"})], JSON_TYPE
        self.answered += 1
        await self._reply(msg, bodies, kind, chunked)

    async def _reach(self, min_seq: dict[str, int], timeout: float) -> None:
        if self.wait_for is None:
            return
        if not await self.wait_for(min_seq, timeout):
            at = self.positions() if self.positions else {}
            wanted = ", ".join(f"{s} {n}" for s, n in min_seq.items())
            raise QueryTimeout(
                f"the views did not reach {wanted} within {timeout:g}s (they are at "
                + ", ".join(f"{s} {at.get(s, 0)}" for s in min_seq) + ")",
                hint="is the projector running and caught up? (`hivebus query \"SELECT * FROM projector.checkpoints\"`)",
            )

    async def _reply(self, msg: Msg, bodies: list[bytes], kind: str, chunked: bool) -> None:
        if not msg.reply:
            return
        try:
            if not chunked:
                await self.bus.nc.publish(msg.reply, bodies[0])
                return
            total = str(len(bodies))
            for i, body in enumerate(bodies):
                await self.bus.nc.publish(msg.reply, body, headers={CHUNK: str(i), CHUNKS: total, CONTENT_TYPE: kind})
                if i % 16 == 15:
                    await self.bus.nc.flush()
        except Exception as exc:
            log.warning("query.reply_failed", error=str(exc) or type(exc).__name__)


def error_body(exc: BaseException) -> bytes:
    return dumps({"error": str(exc), "kind": type(exc).__name__})


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise QueryError(f"the request is not JSON: {exc}") from None
