"""A cancel always lands. On Python 3.11, ``asyncio.wait_for`` returns the awaited result
when the cancel meets an awaitable that has just finished, and the cancelled task goes
on as if nothing had happened. The projector's readers wait that way for their next
pull answer (one every half second), so a stop now and then left one reading forever
and the projector never stopped (seen in CI: test_private_replies' teardown hung 120 s).
hivebus waits with ``asyncio.timeout`` instead, which counts cancels; ruff bans
``asyncio.wait_for`` in src (pyproject, TID251) and this module checks it too."""

from __future__ import annotations

import ast
import asyncio
import types
from pathlib import Path

import pytest

from hivebus.bus.reader import _next

SRC = Path(__file__).resolve().parents[2] / "src" / "hivebus"


async def test_a_reader_waiting_for_its_next_answer_is_cancelled_even_as_one_arrives() -> None:
    nc = types.SimpleNamespace(stats={"reconnects": 0})
    queue: asyncio.Queue[str] = asyncio.Queue()
    waiting = asyncio.create_task(_next(queue, nc, 10.0))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    queue.put_nowait("answer")  # its wake-up and the cancel land in the same turn of the loop
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert queue.get_nowait() == "answer"  # and the answer stays for whoever reads next


def test_no_module_waits_with_asyncio_wait_for() -> None:
    uses = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and node.attr == "wait_for"
                    and isinstance(node.value, ast.Name) and node.value.id == "asyncio"):
                uses.append(f"{path.relative_to(SRC.parent)}:{node.lineno}")
    assert uses == [], "use `async with asyncio.timeout(t): await x` instead"
