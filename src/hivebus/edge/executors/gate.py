"""``ResourceGate``: how many plugins may run at once on a node, by cpu, memory and GPUs.

The scheduler places jobs on nodes that fit them on paper; on the node, cron schedules and
science rules decide *when* a plugin runs, and several may want to run at the same moment.
The gate admits a run only while the sum of what the running plugins asked for stays within
the node's capacity (and under ``max_runs``); the others wait, first come first served, so a
large plugin is not starved by a stream of small ones. A run that asks for more than the
whole node has can never be admitted: ``AdmissionRefused`` says so at once instead of
queueing it forever.

What a run asks for is its ``Limits``: ``cpu`` cores, ``memory_bytes``, one GPU if ``gpu``.
A run without a cpu or memory figure counts as ``default_cpu`` / ``default_memory``.
Amounts are kept as integers (millicores, bytes) so admitting and releasing never drift.

Typical use in the goal runner::

    gate = ResourceGate(Capacity(cpus=6, memory_bytes=8 * 2**30, gpus=1))
    emit("queued")
    async with gate.admit(spec.limits, key=spec.run_id):
        emit("scheduled")
        handle = await executor.start(spec)
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

from hivebus.edge.executors.base import Limits
from hivebus.errors import AdmissionRefused, SetupError

MILLI: Final = 1000


@dataclass(frozen=True, kw_only=True)
class Capacity:
    """What a node lets plugins use at once (from its manifest's hardware, less a reserve)."""

    cpus: float
    memory_bytes: int
    gpus: int = 0
    max_runs: int | None = None

    def __post_init__(self) -> None:
        if not self.cpus > 0 or self.memory_bytes <= 0 or self.gpus < 0:
            raise SetupError(f"node capacity must be positive (cpus={self.cpus}, memory_bytes={self.memory_bytes}, gpus={self.gpus})")
        if self.max_runs is not None and self.max_runs < 1:
            raise SetupError(f"max_runs={self.max_runs} must be at least 1")


@dataclass(frozen=True)
class Demand:
    """What one run holds while admitted: millicores, bytes, GPUs."""

    millicores: int
    memory_bytes: int
    gpus: int


@dataclass(frozen=True)
class Usage:
    """What the gate has handed out, and how many runs wait."""

    cpus: float
    memory_bytes: int
    gpus: int
    runs: int
    waiting: int


class Admission:
    """A granted slot; ``release()`` (idempotent) gives its resources back."""

    def __init__(self, gate: ResourceGate, key: str, demand: Demand) -> None:
        self.gate, self.key, self.demand = gate, key, demand
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.gate._give_back(self)


class ResourceGate:
    def __init__(self, capacity: Capacity, *, default_cpu: float = 0.1, default_memory: int = 64 * 2**20) -> None:
        self.capacity = capacity
        self.default_cpu = default_cpu
        self.default_memory = default_memory
        self._millicores = 0
        self._memory = 0
        self._gpus = 0
        self._runs = 0
        self._queue: deque[tuple[Demand, asyncio.Future[None]]] = deque()

    # --- asking -------------------------------------------------------------------------

    def demand(self, limits: Limits) -> Demand:
        cpu = limits.cpu if limits.cpu else self.default_cpu
        memory = limits.memory_bytes if limits.memory_bytes else self.default_memory
        return Demand(round(cpu * MILLI), memory, 1 if limits.gpu else 0)

    def problem(self, limits: Limits) -> str | None:
        """Why a run with these limits can never be admitted here, or None."""
        d, cap = self.demand(limits), self.capacity
        if d.millicores > round(cap.cpus * MILLI):
            return f"asks for {d.millicores / MILLI:g} cores; the node offers {cap.cpus:g}"
        if d.memory_bytes > cap.memory_bytes:
            return f"asks for {d.memory_bytes / 2**20:.0f} MiB; the node offers {cap.memory_bytes / 2**20:.0f} MiB"
        if d.gpus > cap.gpus:
            return "asks for a GPU; the node has none" if cap.gpus == 0 else f"asks for {d.gpus} GPUs; the node has {cap.gpus}"
        return None

    def try_admit(self, limits: Limits, *, key: str = "") -> Admission | None:
        """Admit now if it fits and nobody is waiting ahead; else None (never waits)."""
        self._refuse_impossible(limits)
        d = self.demand(limits)
        if self._queue or not self._fits(d):
            return None
        return self._grant(key, d)

    async def acquire(self, limits: Limits, *, key: str = "") -> Admission:
        """Wait for a slot, in arrival order. Cancelling the wait leaves no trace."""
        admission = self.try_admit(limits, key=key)
        if admission is not None:
            return admission
        d = self.demand(limits)
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (d, ticket)
        self._queue.append(entry)
        try:
            await ticket
        except BaseException:
            if ticket.done() and not ticket.cancelled() and ticket.exception() is None:
                self._release_demand(d)  # granted just as the wait was cancelled
            with contextlib.suppress(ValueError):
                self._queue.remove(entry)
            self._wake()
            raise
        return Admission(self, key, d)

    @contextlib.asynccontextmanager
    async def admit(self, limits: Limits, *, key: str = "") -> AsyncIterator[Admission]:
        admission = await self.acquire(limits, key=key)
        try:
            yield admission
        finally:
            admission.release()

    # --- state --------------------------------------------------------------------------

    @property
    def usage(self) -> Usage:
        return Usage(self._millicores / MILLI, self._memory, self._gpus, self._runs, len(self._queue))

    def resize(self, capacity: Capacity) -> None:
        """New capacity (the node's config changed); waiting runs are re-examined."""
        self.capacity = capacity
        for demand, ticket in list(self._queue):
            if self.problem(Limits(cpu=demand.millicores / MILLI, memory_bytes=demand.memory_bytes, gpu=demand.gpus > 0)):
                self._queue.remove((demand, ticket))
                ticket.set_exception(AdmissionRefused("the node's capacity shrank below what this run asks for"))
        self._wake()

    # --- internals ----------------------------------------------------------------------

    def _refuse_impossible(self, limits: Limits) -> None:
        problem = self.problem(limits)
        if problem is not None:
            raise AdmissionRefused(f"run can never start on this node: it {problem}")

    def _fits(self, d: Demand) -> bool:
        cap = self.capacity
        return (
            self._millicores + d.millicores <= round(cap.cpus * MILLI)
            and self._memory + d.memory_bytes <= cap.memory_bytes
            and self._gpus + d.gpus <= cap.gpus
            and (cap.max_runs is None or self._runs < cap.max_runs)
        )

    def _grant(self, key: str, d: Demand) -> Admission:
        self._take(d)
        return Admission(self, key, d)

    def _take(self, d: Demand) -> None:
        self._millicores += d.millicores
        self._memory += d.memory_bytes
        self._gpus += d.gpus
        self._runs += 1

    def _release_demand(self, d: Demand) -> None:
        self._millicores -= d.millicores
        self._memory -= d.memory_bytes
        self._gpus -= d.gpus
        self._runs -= 1

    def _give_back(self, admission: Admission) -> None:
        self._release_demand(admission.demand)
        self._wake()

    def _wake(self) -> None:
        """Grant waiting runs in order while the one at the head fits."""
        while self._queue:
            demand, ticket = self._queue[0]
            if ticket.done():
                self._queue.popleft()
                continue
            if not self._fits(demand):
                return
            self._queue.popleft()
            self._take(demand)
            ticket.set_result(None)
