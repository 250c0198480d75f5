"""The projector: one process, one DuckDB file, every view, the query service.

``Projector(settings, bus, db_path).run(stop)``:

1. opens the store (creating the tables of new views) and resumes every stream after its
   checkpoint;
2. runs the ``Pump``: EVENTS, DATA and DEADLETTERS read side by side, merged in stored-time
   order, applied in batches whose rows and checkpoints commit together;
3. serves ``hivebus.query`` (SQL, read-only, on cursors of the same database, in threads)
   and ``hivebus.projector.*`` (status, rebuild);
4. rebuilds, in the background, any view whose ``version`` changed since the file was built.

Rebuilds are blue/green: the views are replayed from sequence 1 into a new file while the
live file keeps applying and answering; then projection pauses for the moment it takes the
new file to catch up to the live checkpoints exactly, and the new file (all views) or the new
tables (some views, in one transaction) take the old ones' place. Queries are answered
throughout; during a whole-file swap a new query waits for the swap (milliseconds) and queries
already running finish on the old file first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog
from nats.aio.msg import Msg

from hivebus.bus.client import Bus
from hivebus.config import Settings
from hivebus.errors import HivebusError, ProjectionError
from hivebus.projections.pump import Pump, PumpConfig
from hivebus.projections.query import QueryEngine
from hivebus.projections.service import QueryService, error_body
from hivebus.projections.store import Prepared, Store
from hivebus.projections.views import View, all_views, select_views
from hivebus.replay.build import Build, Progress, remove_db

log = structlog.get_logger()
T = TypeVar("T")

STATUS_SUBJECT = "hivebus.projector.status"
REBUILD_SUBJECT = "hivebus.projector.rebuild"
PROGRESS_SUBJECT = "hivebus.projector.progress"


def default_db_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / "views.duckdb"


@dataclass(frozen=True, kw_only=True)
class ProjectorConfig:
    pump: PumpConfig = field(default_factory=PumpConfig)
    query_workers: int = 4
    serve_queries: bool = True
    ensure_streams: bool = True
    rebuild_stale: bool = True
    """Rebuild views whose version changed, in the background, at start."""


class Gate:
    """Readers (queries) share it; a whole-file swap takes it alone."""

    def __init__(self) -> None:
        self._readers = 0
        self._writing = False
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._writing)
            self._readers += 1
        try:
            yield
        finally:
            async with self._changed:
                self._readers -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._writing)
            self._writing = True
            await self._changed.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            async with self._changed:
                self._writing = False
                self._changed.notify_all()


class Projector:
    """Owns one DuckDB file of views; see the module doc."""

    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        db_path: Path | str | None = None,
        *,
        views: Sequence[View] | None = None,
        config: ProjectorConfig | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.db_path = Path(db_path) if db_path is not None else default_db_path(settings)
        self.views = list(views) if views is not None else all_views()
        self.config = config or ProjectorConfig()
        self.store: Store | None = None
        self.pump: Pump | None = None
        self.gate = Gate()
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hivebus-projector")
        self._tick = asyncio.Event()
        self._rebuild_lock = asyncio.Lock()
        self._rebuild: asyncio.Task[dict[str, Any]] | None = None
        self._subs: list[Any] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._service: QueryService | None = None
        self._engine: QueryEngine | None = None
        self._stats = {"messages": 0, "since": time.monotonic(), "logged": time.monotonic()}
        self.ready = asyncio.Event()

    # --- running ----------------------------------------------------------------------------

    @property
    def positions(self) -> dict[str, int]:
        return dict(self.store.positions) if self.store is not None else {}

    async def _in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            if self.config.ensure_streams:
                await self.bus.ensure_streams()
            self.store = await self._in_writer(lambda: Store(self.db_path, self.views))
            log.info("projector.started", db=str(self.db_path), positions=self.store.positions,
                     stale=[v.name for v in self.store.stale])
            self.pump = Pump(self.bus, self.store, self._writer, config=self.config.pump, on_commit=self._committed)
            await self._start_services()
            if self.store.stale and self.config.rebuild_stale:
                self.start_rebuild([v.name for v in self.store.stale], reason="version changed")
            self.ready.set()
            await self.pump.run(stop)
        finally:
            await self._shutdown()

    async def _start_services(self) -> None:
        if self.config.serve_queries:
            self._engine = QueryEngine(self._cursor, workers=self.config.query_workers)
            self._service = QueryService(self.bus, self._engine, wait_for=self.wait_for,
                                         positions=lambda: self.positions, gate=self.gate.reading)
            await self._service.start()
        nc = self.bus.nc
        self._subs.append(await nc.subscribe(STATUS_SUBJECT, cb=self._on_status))
        self._subs.append(await nc.subscribe(REBUILD_SUBJECT, cb=self._on_rebuild))

    async def _shutdown(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        if self._service is not None:
            await self._service.stop()
        if self._rebuild is not None and not self._rebuild.done():
            self._rebuild.cancel()
            with contextlib.suppress(BaseException):
                await self._rebuild
        if self._engine is not None:
            self._engine.close()
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self._in_writer(self.store.checkpoint)
            await self._in_writer(self.store.close)
            log.info("projector.stopped", positions=self.store.positions)
        self._writer.shutdown(wait=True)

    def _cursor(self) -> Any:
        if self.store is None:
            raise ProjectionError("the projector's store is not open")
        return self.store.reader()

    def _committed(self, prepared: Prepared) -> None:
        self._tick.set()
        self._tick = asyncio.Event()
        self._stats["messages"] += prepared.messages
        now = time.monotonic()
        if now - self._stats["logged"] >= 10.0:
            rate = self._stats["messages"] / (now - self._stats["since"])
            log.info("projector.progress", positions=prepared.positions, per_second=round(rate))
            self._stats.update(messages=0, since=now, logged=now)

    async def wait_for(self, min_seq: dict[str, int], timeout: float) -> bool:
        """True once every stream in ``min_seq`` is applied up to its sequence (within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            positions = self.positions
            if all(positions.get(s, 0) >= n for s, n in min_seq.items()):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._tick.wait()

    # --- rebuilds ---------------------------------------------------------------------------

    def start_rebuild(self, names: list[str] | None, *, reason: str = "asked",
                      progress: Progress | None = None) -> asyncio.Task[dict[str, Any]]:
        """Rebuild ``names`` (all when None) in the background; one rebuild at a time."""
        if self._rebuild is not None and not self._rebuild.done():
            raise ProjectionError("a rebuild is already running", hint="wait for it to finish")
        views = self.select(names)
        self._rebuild = asyncio.create_task(self.rebuild(views, reason=reason, progress=progress))
        return self._rebuild

    def select(self, names: list[str] | None) -> list[View]:
        """This projector's views named (all when None); SetupError names an unknown one."""
        wanted = {v.name for v in select_views(names)}
        return [v for v in self.views if v.name in wanted]

    async def rebuild(self, views: Sequence[View], *, reason: str = "asked",
                      progress: Progress | None = None) -> dict[str, Any]:
        """Replay ``views`` into a new file and swap them in (see the module doc)."""
        assert self.store is not None and self.pump is not None
        async with self._rebuild_lock:
            names = [v.name for v in views]
            everything = set(names) == {v.name for v in self.views}
            started = time.monotonic()
            log.info("projector.rebuild_started", views=names, reason=reason)
            tmp = self.db_path.with_name(f"{self.db_path.name}.rebuild-{uuid.uuid4().hex[:8]}")
            build = Build(self.bus, tmp, self.views if everything else views)
            try:
                await build.open()
                for _ in range(5):  # chase the live file while it keeps applying
                    targets = self.positions
                    await build.run_to(targets, progress)
                    if self.positions == targets:
                        break
                await self._swap(build, views, everything, progress)
            except BaseException:
                await build.close(keep=False)
                raise
            report = {"views": names, "positions": self.positions, "messages": build.messages,
                      "seconds": round(time.monotonic() - started, 3)}
            log.info("projector.rebuild_done", **report)
            return report

    async def _swap(self, build: Build, views: Sequence[View], everything: bool, progress: Progress | None) -> None:
        assert self.pump is not None and self.store is not None
        pump = self.pump
        pump.paused.clear()
        try:
            await pump.idle.wait()
            final = self.positions
            await build.run_to(final, progress)  # exactly where the live file is
            if not build.reached(final):
                assert build.store is not None
                raise ProjectionError(f"the rebuild stopped at {build.store.positions}, not at the live {final}",
                                      hint="were messages deleted from a stream meanwhile? try again")
            if everything:
                await self._swap_file(build)
            else:
                assert build.store is not None
                await self._in_writer(self.store.copy_views_from, build.store, views)
                await build.close(keep=False)
        finally:
            pump.paused.set()

    async def _swap_file(self, build: Build) -> None:
        assert self.store is not None and self.pump is not None
        async with self.gate.writing():
            await build.close(keep=True)
            await self._in_writer(self.store.close)
            remove_db(self.db_path)
            os.replace(build.path, self.db_path)
            self.store = await self._in_writer(lambda: Store(self.db_path, self.views))
            self.pump.store = self.store

    # --- control subjects -------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background, keeping a reference until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _on_status(self, msg: Msg) -> None:
        store = self.store
        body = {
            "db": str(self.db_path),
            "positions": self.positions,
            "views": {v.name: v.version for v in self.views},
            "stale": [v.name for v in store.stale] if store else [],
            "rebuilding": self._rebuild is not None and not self._rebuild.done(),
        }
        if msg.reply:
            await msg.respond(json.dumps(body).encode())

    async def _on_rebuild(self, msg: Msg) -> None:
        """Start a rebuild; progress goes to ``hivebus.projector.progress.<id>``."""
        try:
            request = json.loads(msg.data or b"{}")
            names = request.get("views") or None
            rebuild_id = uuid.uuid4().hex[:12]
            subject = f"{PROGRESS_SUBJECT}.{rebuild_id}"
            nc = self.bus.nc
            last = [0.0]

            def progress(positions: dict[str, int], targets: dict[str, int]) -> None:
                now = time.monotonic()
                if now - last[0] >= 0.2:
                    last[0] = now
                    body = json.dumps({"phase": "build", "positions": positions, "targets": targets}).encode()
                    self._spawn(nc.publish(subject, body))

            task = self.start_rebuild(names, progress=progress)

            def finished(t: asyncio.Task[dict[str, Any]]) -> None:
                if t.cancelled():
                    body: dict[str, Any] = {"phase": "failed", "error": "cancelled"}
                elif t.exception() is not None:
                    body = {"phase": "failed", "error": str(t.exception())}
                else:
                    body = {"phase": "done", **t.result()}
                self._spawn(nc.publish(subject, json.dumps(body).encode()))

            task.add_done_callback(finished)
            reply = {"id": rebuild_id, "progress": subject, "views": [v.name for v in self.select(names)],
                     "positions": self.positions}
            body = json.dumps(reply).encode()
        except HivebusError as exc:
            body = error_body(exc)
        except (ValueError, AttributeError) as exc:
            body = error_body(ProjectionError(f"bad rebuild request: {exc}"))
        if msg.reply:
            await msg.respond(body)


@contextlib.asynccontextmanager
async def running(
    bus: Bus,
    db_path: Path | str,
    *,
    settings: Settings | None = None,
    views: Sequence[View] | None = None,
    config: ProjectorConfig | None = None,
) -> AsyncIterator[Projector]:
    """A projector running in this event loop for the length of the block (tests, demos)."""
    stop = asyncio.Event()
    projector = Projector(settings or bus.settings, bus, db_path, views=views, config=config)
    task = asyncio.create_task(projector.run(stop))
    ready = asyncio.create_task(projector.ready.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # it failed to start: raise why
    try:
        yield projector
    finally:
        stop.set()
        await task


async def run_until_signalled(settings: Settings, db_path: Path | str | None,
                              announce: Callable[[Projector], None]) -> None:
    """The projector as a process: connected as ``hivebus-projector``, until SIGINT or SIGTERM."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with await Bus.connect(settings.nats_url, name="hivebus-projector", settings=settings) as bus:
        projector = Projector(settings, bus, db_path)
        announce(projector)
        await projector.run(stop)
