"""The parsed form of a science rule: an action and a condition tree.

Nodes are frozen dataclasses carrying the 0-based ``position`` of the text they came from,
so an evaluator or a linter can point back into the rule. ``Rule`` is what ``parse_rule``
returns; ``Rule.evaluate(ctx)`` (in ``evaluate.py``) decides whether the action fires.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from hivebus.rules.context import RuleContext

Literal_ = float | str | bool


# --- actions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Schedule:
    """Run ``plugin`` (one of the job's plugins) when the condition holds."""

    plugin: str
    kind: Literal["schedule"] = "schedule"

    def __str__(self) -> str:
        return f"schedule({self.plugin})"


@dataclass(frozen=True, slots=True)
class Publish:
    """Send a from-edge trigger ``name`` (``trigger.fired``) when the condition holds."""

    name: str
    kind: Literal["publish"] = "publish"

    def __str__(self) -> str:
        return f"publish({self.name})"


@dataclass(frozen=True, slots=True)
class Set:
    """Set the node-local variable ``key`` to ``value`` when the condition holds."""

    key: str
    value: Literal_
    kind: Literal["set"] = "set"

    def __str__(self) -> str:
        return f"set({self.key}, value={self.value!r})"


Action = Schedule | Publish | Set


# --- condition nodes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Const:
    value: Literal_
    position: int


@dataclass(frozen=True, slots=True)
class Call:
    """A built-in function call; arguments are already checked against the function's shape."""

    name: str
    args: tuple[Node, ...]
    position: int


@dataclass(frozen=True, slots=True)
class Unary:
    op: Literal["-", "not"]
    operand: Node
    position: int


@dataclass(frozen=True, slots=True)
class Binary:
    op: Literal["+", "-", "*", "/", "%"]
    left: Node
    right: Node
    position: int


@dataclass(frozen=True, slots=True)
class Compare:
    """``a < b <= c`` (chained as in Python: every adjacent pair must hold)."""

    operands: tuple[Node, ...]
    ops: tuple[str, ...]
    position: int


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: Literal["and", "or"]
    operands: tuple[Node, ...]
    position: int


Node = Const | Call | Unary | Binary | Compare | BoolOp


def walk(node: Node) -> Iterator[Node]:
    """Every node of a condition, depth first."""
    stack: list[Node] = [node]
    while stack:
        current = stack.pop()
        yield current
        match current:
            case Call(args=args):
                stack.extend(reversed(args))
            case Unary(operand=operand):
                stack.append(operand)
            case Binary(left=left, right=right):
                stack.extend((right, left))
            case Compare(operands=operands) | BoolOp(operands=operands):
                stack.extend(reversed(operands))
            case _:
                pass


@dataclass(frozen=True, slots=True)
class Rule:
    """A parsed science rule: ``<action>: <condition>``."""

    text: str
    action: Action
    condition: Node
    legacy: bool = False
    """Written in the older ``<plugin>: <condition>`` form."""
    _calls: tuple[Call, ...] = field(default=(), repr=False, compare=False)

    def evaluate(self, ctx: RuleContext) -> bool:
        """Whether the action fires now. Never raises for a parsed rule (see ``evaluate.py``)."""
        from hivebus.rules.evaluate import truthy

        return truthy(self.condition, ctx)

    @property
    def cronjobs(self) -> list[tuple[str, str]]:
        """``(plugin, cron expression)`` of every ``cronjob(...)`` in the condition."""
        return [
            (str(c.args[0].value), str(c.args[1].value))  # type: ignore[union-attr]
            for c in self._calls
            if c.name == "cronjob"
        ]

    @property
    def reading_names(self) -> list[str]:
        """The reading names the condition reads (``v``/``avg``/``sum``/``rate``...), in order."""
        names: list[str] = []
        for call in self._calls:
            if call.name != "cronjob" and call.name != "time" and call.args:
                name = call.args[0].value  # type: ignore[union-attr]
                if isinstance(name, str) and name not in names:
                    names.append(name)
        return names

    @property
    def plugin(self) -> str | None:
        """The plugin a ``schedule`` rule runs, else None."""
        return self.action.plugin if isinstance(self.action, Schedule) else None

    def __str__(self) -> str:
        return self.text
