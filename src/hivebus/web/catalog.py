"""The ECR's catalog, folded in the web process, so the read API shows what the ECR lets read.

Who may read a bundle (its owner, its namespace's owner, users and groups granted READ on it
or on its namespace, reviewers, everyone when ``AllUsers`` holds READ) is decided by
``handlers.catalog.Catalog.may_read``; groups and roles are ``auth.*`` facts the views do not
hold. So ``Access`` folds the same facts with the same ``evolve`` the ECR uses, caught up
before every answer (a grant or revoke counts at once), and the routes ask it.
"""

from __future__ import annotations

import asyncio
from typing import Final

import structlog

from hivebus.bus.client import Bus
from hivebus.bus.streams import EVENTS
from hivebus.errors import SchemaError
from hivebus.handlers.catalog import Catalog, evolve
from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.directory import INPUTS as DIRECTORY_INPUTS
from hivebus.schemas import codec

log = structlog.get_logger()
INPUTS: Final = ("evt.ecr.bundle.>", "evt.ecr.permission.>", *DIRECTORY_INPUTS)
"""What the catalog's access rules fold (not profiles nor node hardware)."""


class Access:
    def __init__(self, bus: Bus, config: HandlerConfig | None = None) -> None:
        self.bus = bus
        self.catalog = Catalog(config or HandlerConfig.from_env())
        self._position = 0
        self._reading = asyncio.Lock()

    async def catch_up(self) -> Catalog:
        async with self._reading:
            async for batch in self.bus.read(EVENTS, start_seq=self._position + 1, filter_subjects=list(INPUTS),
                                             stop_at_end=True):
                for message in batch:
                    self._position = max(self._position, message.seq)
                    try:
                        evolve(self.catalog, codec.decode(message.data))
                    except SchemaError as exc:
                        log.warning("access.bad_event", seq=message.seq, error=str(exc))
        return self.catalog

    async def readable(self, user: str | None) -> list[str]:
        """Every bundle id (deleted ones too) ``user`` may read, sorted."""
        catalog = await self.catch_up()
        return sorted(bid for bid in catalog.bundles if catalog.may_read(user, bid))
