"""The parsed form of a science rule: an action and a condition tree.

Nodes are frozen dataclasses carrying the 0-based ``position`` of the text they came from,
so an evaluator or a linter can point back into the rule. ``Rule`` is what ``parse_rule``
returns; ``Rule.evaluate(ctx)`` (in ``evaluate.py``) decides whether the action fires.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from hivebus.rules.durations import parse_duration

if TYPE_CHECKING:
    from hivebus.rules.context import RuleContext
    from hivebus.rules.evaluate import Outcome

Scalar = int | float | str | bool
Params = tuple[tuple[str, str], ...]
"""An action's ``key=value`` parameters as written (quotes removed), in order."""


# --- actions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Schedule:
    """Run ``plugin`` (one of the job's plugins) when the condition holds."""

    plugin: str
    params: Params = ()
    kind: Literal["schedule"] = "schedule"

    def __str__(self) -> str:
        return f"schedule({_with_params(self.plugin, self.params)})"


@dataclass(frozen=True, slots=True)
class Publish:
    """Send a from-edge trigger ``name`` (``trigger.fired``) when the condition holds."""

    name: str
    params: Params = ()
    kind: Literal["publish"] = "publish"

    def __str__(self) -> str:
        return f"publish({_with_params(self.name, self.params)})"


@dataclass(frozen=True, slots=True)
class Set:
    """Set the node-local variable ``key`` to ``value`` (the text as written) when the
    condition holds; ``params`` are the other parameters."""

    key: str
    value: str
    params: Params = ()
    kind: Literal["set"] = "set"

    def __str__(self) -> str:
        return f"set({_with_params(self.key, (('value', self.value), *self.params))})"


Action = Schedule | Publish | Set


def _with_params(target: str, params: Params) -> str:
    return ", ".join([target, *(f"{key}={value}" for key, value in params)])


# --- condition nodes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Const:
    value: Scalar
    position: int


@dataclass(frozen=True, slots=True)
class Call:
    """A built-in function call, its arguments checked against the function's signature.

    ``args`` are the expressions a reducer (``avg``, ``any``...) works on; ``options`` the
    literal arguments of a data or clock function (``v``'s name and ``since``, a cron
    expression...) by parameter name; ``meta`` the ``<meta key>='<value>'`` filters of
    ``v``/``rate``.
    """

    name: str
    args: tuple[Node, ...]
    position: int
    options: tuple[tuple[str, Scalar], ...] = ()
    meta: tuple[tuple[str, str], ...] = ()

    def option(self, name: str, default: Scalar | None = None) -> Scalar | None:
        return next((value for key, value in self.options if key == name), default)


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

DATA_FUNCTIONS = ("v", "rate")
"""The functions that read readings: their first option is the reading name."""
DEFAULT_SINCE = "-1m"


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
    """A parsed science rule: ``<action>(<object>, <key>=<value>...): <condition>``."""

    text: str
    action: Action
    condition: Node
    legacy: bool = False
    """Written in the older ``<plugin>: <condition>`` form."""
    warnings: tuple[str, ...] = ()
    """What parses but will not mean what it seems, or is hivebus's and not Sage's."""
    _calls: tuple[Call, ...] = field(default=(), repr=False, compare=False)

    def evaluate(self, ctx: RuleContext) -> bool:
        """Whether the action fires now. Never raises for a parsed rule (see ``evaluate.py``)."""
        return self.outcome(ctx).fired

    def outcome(self, ctx: RuleContext) -> Outcome:
        """Whether it fires, the condition's value, and why it does not when it failed."""
        from hivebus.rules.evaluate import outcome

        return outcome(self.condition, ctx)

    @property
    def params(self) -> dict[str, str]:
        """The action's parameters as Sage's scheduler reads them (``set``'s value included)."""
        if isinstance(self.action, Set):
            return {"value": self.action.value, **dict(self.action.params)}
        return dict(self.action.params)

    @property
    def object(self) -> str:
        """The action's object: the plugin, the published name or the key."""
        match self.action:
            case Schedule(plugin=plugin):
                return plugin
            case Publish(name=name):
                return name
            case Set(key=key):
                return key

    @property
    def cronjobs(self) -> list[tuple[str, str]]:
        """``(program, cron expression)`` of every ``cronjob(...)``; the program may be ''."""
        return [
            (str(c.option("name")), str(c.option("expr")))
            for c in self._calls
            if c.name == "cronjob"
        ]

    @property
    def reading_names(self) -> list[str]:
        """The reading names the condition reads (``v``/``rate``), in order."""
        names: list[str] = []
        for name, _ in self.windows:
            if name not in names:
                names.append(name)
        return names

    @property
    def windows(self) -> list[tuple[str, float]]:
        """``(reading name, seconds back from now)`` of every ``v``/``rate`` call."""
        return [
            (str(c.option("name")), parse_duration(str(c.option("since", DEFAULT_SINCE))))
            for c in self._calls
            if c.name in DATA_FUNCTIONS
        ]

    @property
    def plugin(self) -> str | None:
        """The plugin a ``schedule`` rule runs, else None."""
        return self.action.plugin if isinstance(self.action, Schedule) else None

    @property
    def modern(self) -> str:
        """The rule in the form Sage's scheduler parses (the text itself unless legacy)."""
        if not self.legacy:
            return self.text
        return f"{self.action}: {self.text.split(':', 1)[1].strip()}"

    def __str__(self) -> str:
        return self.text
