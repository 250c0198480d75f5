"""ResourceGate: concurrent runs on a node admitted by cpu, memory, GPUs and count, in order."""

from __future__ import annotations

import asyncio

import pytest

from hivebus.edge.executors import Capacity, Limits, ResourceGate
from hivebus.errors import AdmissionRefused, SetupError

MIB = 2**20


def gate(cpus: float = 2, memory: int = 1024 * MIB, gpus: int = 0, max_runs: int | None = None) -> ResourceGate:
    return ResourceGate(Capacity(cpus=cpus, memory_bytes=memory, gpus=gpus, max_runs=max_runs))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_runs_are_admitted_while_they_fit_and_wait_beyond() -> None:
    g = gate(cpus=1)
    a = g.try_admit(Limits(cpu=0.5, memory_bytes=100 * MIB))
    b = g.try_admit(Limits(cpu=0.5, memory_bytes=100 * MIB))
    assert a is not None and b is not None
    assert g.try_admit(Limits(cpu=0.25, memory_bytes=MIB)) is None  # no cpu left
    assert g.usage.cpus == 1.0 and g.usage.memory_bytes == 200 * MIB and g.usage.runs == 2
    waiter = asyncio.create_task(g.acquire(Limits(cpu=0.25, memory_bytes=MIB)))
    await settle()
    assert not waiter.done() and g.usage.waiting == 1
    a.release()
    third = await asyncio.wait_for(waiter, 5)
    assert g.usage.runs == 2 and g.usage.cpus == 0.75
    b.release()
    third.release()
    third.release()  # idempotent
    assert g.usage.runs == 0 and g.usage.cpus == 0 and g.usage.memory_bytes == 0


async def test_memory_and_gpus_limit_admission() -> None:
    g = gate(cpus=8, memory=256 * MIB, gpus=1)
    big = g.try_admit(Limits(cpu=0.1, memory_bytes=200 * MIB))
    assert big is not None
    assert g.try_admit(Limits(cpu=0.1, memory_bytes=100 * MIB)) is None
    gpu = g.try_admit(Limits(cpu=0.1, memory_bytes=10 * MIB, gpu=True))
    assert gpu is not None
    assert g.try_admit(Limits(cpu=0.1, memory_bytes=10 * MIB, gpu=True)) is None  # the one GPU is taken
    assert g.usage.gpus == 1


async def test_waiters_are_admitted_first_come_first_served() -> None:
    """A large run at the head is not overtaken by smaller ones that would fit now."""
    g = gate(cpus=2)
    holder = g.try_admit(Limits(cpu=1.5, memory_bytes=MIB))
    assert holder is not None
    order: list[str] = []

    async def run(name: str, cpu: float) -> None:
        async with g.admit(Limits(cpu=cpu, memory_bytes=MIB), key=name):
            order.append(name)
            await asyncio.sleep(0)

    big = asyncio.create_task(run("big", 2.0))
    await settle()
    small = asyncio.create_task(run("small", 0.25))
    await settle()
    assert order == []  # small fits in the 0.5 cores left, but big came first
    assert g.try_admit(Limits(cpu=0.1, memory_bytes=MIB)) is None  # nor does anyone jump the queue
    holder.release()
    await asyncio.wait_for(asyncio.gather(big, small), 5)
    assert order == ["big", "small"]
    assert g.usage.runs == 0 and g.usage.waiting == 0


async def test_max_runs_bounds_concurrency() -> None:
    g = gate(cpus=64, max_runs=2)
    running = 0
    peak = 0

    async def run() -> None:
        nonlocal running, peak
        async with g.admit(Limits(cpu=0.1, memory_bytes=MIB)):
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1

    await asyncio.wait_for(asyncio.gather(*(run() for _ in range(8))), 10)
    assert peak == 2


async def test_a_run_bigger_than_the_node_is_refused_at_once() -> None:
    g = gate(cpus=2, memory=512 * MIB, gpus=0)
    with pytest.raises(AdmissionRefused, match="asks for 4 cores; the node offers 2"):
        await g.acquire(Limits(cpu=4))
    with pytest.raises(AdmissionRefused, match="1024 MiB; the node offers 512 MiB"):
        g.try_admit(Limits(memory_bytes=1024 * MIB))
    with pytest.raises(AdmissionRefused, match="GPU; the node has none"):
        g.try_admit(Limits(gpu=True))
    assert g.problem(Limits(cpu=2, memory_bytes=512 * MIB)) is None


async def test_cancelled_waiter_leaves_no_trace() -> None:
    g = gate(cpus=1)
    holder = g.try_admit(Limits(cpu=1, memory_bytes=MIB))
    assert holder is not None
    cancelled = asyncio.create_task(g.acquire(Limits(cpu=1, memory_bytes=MIB)))
    after = asyncio.create_task(g.acquire(Limits(cpu=0.5, memory_bytes=MIB)))
    await settle()
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    holder.release()
    admitted = await asyncio.wait_for(after, 5)
    assert g.usage.runs == 1 and g.usage.cpus == 0.5 and g.usage.waiting == 0
    admitted.release()
    assert g.usage.runs == 0 and g.usage.cpus == 0


async def test_cancellation_right_after_the_grant_gives_the_slot_back() -> None:
    g = gate(cpus=1)
    holder = g.try_admit(Limits(cpu=1, memory_bytes=MIB))
    assert holder is not None
    waiter = asyncio.create_task(g.acquire(Limits(cpu=1, memory_bytes=MIB)))
    await settle()
    holder.release()  # grants the waiter, which has not resumed yet
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled()
    assert g.usage.runs == 0 and g.usage.cpus == 0


async def test_runs_without_figures_count_as_the_defaults() -> None:
    g = ResourceGate(Capacity(cpus=1, memory_bytes=1024 * MIB), default_cpu=0.5, default_memory=100 * MIB)
    assert g.try_admit(Limits()) is not None
    assert g.try_admit(Limits()) is not None
    assert g.try_admit(Limits()) is None
    assert g.usage.memory_bytes == 200 * MIB


async def test_shrinking_the_node_refuses_waiters_that_can_no_longer_fit() -> None:
    g = gate(cpus=4)
    holder = g.try_admit(Limits(cpu=4, memory_bytes=MIB))
    assert holder is not None
    waiter = asyncio.create_task(g.acquire(Limits(cpu=3, memory_bytes=MIB)))
    await settle()
    g.resize(Capacity(cpus=2, memory_bytes=1024 * MIB))
    with pytest.raises(AdmissionRefused, match="capacity shrank"):
        await asyncio.wait_for(waiter, 5)
    holder.release()
    assert g.usage.runs == 0 and g.usage.waiting == 0


def test_capacity_is_validated_when_built() -> None:
    with pytest.raises(SetupError, match="positive"):
        Capacity(cpus=0, memory_bytes=MIB)
    with pytest.raises(SetupError, match="max_runs"):
        Capacity(cpus=1, memory_bytes=MIB, max_runs=0)
