"""Runtime wiring of the platform handlers (the I/O side of ``hivebus.handlers``).

``run_handlers(settings, bus, stop)`` runs the ECR, the scheduler (with its dry-run endpoint
``hivebus.ses.dryrun``) and node health, each on its own durable consumer, and the command
gateway (``hivebus.cmd``, users' commands with tokens) and the nodes' upload service
(``hivebus.storage.upload.<node>``, ``services.uploads``), until ``stop`` is set. The ECR and the
scheduler decide commands on ``hivebus.decide.<name>`` (``services.deciders``); their
reactions to facts (profiles, completions) must run as one instance at a time, their command
decisions are safe from any number (optimistic concurrency). ``instance`` names this process's
deciders (``hivebus.decide.<name>.<instance>``) and, when given, their durable consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from hivebus.bus.client import Bus
from hivebus.config import Settings
from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.ecr import EcrHandler
from hivebus.handlers.health import HealthHandler
from hivebus.handlers.ses import SesHandler
from hivebus.services.deciders import serve_decider
from hivebus.services.dryrun import DRYRUN_SUBJECT, serve_dryrun
from hivebus.services.gateway import Gateway
from hivebus.services.handler_service import HandlerService
from hivebus.services.uploads import UploadDecider

log = structlog.get_logger()

HANDLERS = ("ecr", "ses", "health")


def build_services(
    settings: Settings,
    bus: Bus,
    config: HandlerConfig | None = None,
    only: tuple[str, ...] = HANDLERS,
    instance: str | None = None,
) -> list[HandlerService]:
    config = config or HandlerConfig.from_env(node_offline_after=settings.node_offline_after)
    services: list[HandlerService] = []

    def on_ready(dryrun: bool) -> Any:
        started: list[Any] = []

        async def start(service: HandlerService) -> None:
            if not started:  # once, not again after a rebuild
                started.append(await serve_decider(service, bus, instance))
                if dryrun:
                    started.append(await serve_dryrun(service, bus))

        return start

    durable = f"-{instance}" if instance else ""
    for name in only:
        if name == "ecr":
            services.append(HandlerService(EcrHandler(config), settings, bus, on_ready=on_ready(False), durable_suffix=durable))
        elif name == "ses":
            services.append(HandlerService(SesHandler(config), settings, bus, on_ready=on_ready(True), durable_suffix=durable))
        elif name == "health":
            services.append(HandlerService(HealthHandler(config), settings, bus))
        else:
            raise ValueError(f"unknown handler {name!r} (one of {', '.join(HANDLERS)})")
    return services


async def run_handlers(
    settings: Settings,
    bus: Bus,
    stop: asyncio.Event,
    *,
    config: HandlerConfig | None = None,
    only: tuple[str, ...] = HANDLERS,
    instance: str | None = None,
) -> None:
    """Run the handlers until ``stop`` is set; the streams must exist (``bus.ensure_streams``)."""
    services = build_services(settings, bus, config, only, instance)
    inner = asyncio.Event()  # stops our tasks without touching the caller's event

    async def follow() -> None:
        await stop.wait()
        inner.set()

    follower = asyncio.create_task(follow())
    gateway = await Gateway(bus).serve()  # user actions with tokens enter here
    uploads = await UploadDecider(bus, replicas=settings.replicas,  # nodes' files, as storage facts
                                  max_bytes=settings.upload_bucket_max_bytes).serve()
    tasks = [asyncio.create_task(s.run(inner), name=f"handler-{s.handler.name}") for s in services]
    log.info("handlers.started", handlers=[s.handler.name for s in services])
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = task.exception()
            if error is not None:
                raise error
    finally:
        inner.set()
        follower.cancel()
        for task in [*tasks, follower]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await gateway.unsubscribe()
        await uploads.close()
        log.info("handlers.stopped")


__all__ = ["DRYRUN_SUBJECT", "HANDLERS", "HandlerService", "build_services", "run_handlers"]
