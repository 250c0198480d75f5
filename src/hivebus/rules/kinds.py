"""What kind of value each part of a condition can give, known before any data arrives.

A condition is Python as Sage's node checker runs it: ``v()`` gives the values of a window (a
numpy array there), comparisons and arithmetic apply to every value, reducers (``any``,
``avg``...) make one value of them, and the checker fires a rule only when the condition's
value is ``True`` or ``False`` -- an array, a number or a string is an evaluation failure.
So kinds are worked out once, at parse time:

- what can never work is refused with the fix (``avg('env.t')``: avg takes values, not a name);
- what parses but cannot fire, or fires only sometimes, gets a warning: a condition that can
  only give values or a number, and a window whose truth is taken (``v('x') > 3 and ...``,
  ``not v('x')``), which holds only while the window has exactly one value.
"""

from __future__ import annotations

from collections.abc import Callable

from hivebus.rules.functions import FUNCTIONS, WINDOW_REDUCERS, Kind
from hivebus.rules.syntax import Binary, BoolOp, Call, Compare, Const, Node, Unary

Kinds = frozenset[Kind]
Fail = Callable[[int, str], Exception]

WINDOW: Kinds = frozenset({"window"})
_TRUTH_OF_A_WINDOW = (
    "the truth of the window at position {at} is taken: on Sage it holds only while the "
    "window has exactly one value (several are an error); write any(...) or all(...)"
)


def _of_const(value: object) -> Kind:
    if isinstance(value, bool):
        return "bool"
    return "string" if isinstance(value, str) else "number"


class KindCheck:
    """Walks a parsed condition once: ``kinds(node)`` refuses through ``fail`` and collects
    ``warnings``."""

    def __init__(self, fail: Fail) -> None:
        self.fail = fail
        self.warnings: list[str] = []

    def truth_taken(self, node: Node, kinds: Kinds) -> None:
        if "window" in kinds:
            self.warnings.append(_TRUTH_OF_A_WINDOW.format(at=node.position))

    def numeric(self, node: Node, kinds: Kinds) -> None:
        """Arithmetic on a string fails when evaluated (the rule does not fire); not refused
        here, as Python's ``'a' * 2`` would not be either."""

    def kinds(self, node: Node) -> Kinds:
        match node:
            case Const(value=value):
                return frozenset({_of_const(value)})
            case Call():
                return self.call(node)
            case Unary(op="not", operand=operand):
                self.truth_taken(operand, self.kinds(operand))
                return frozenset({"bool"})
            case Unary(operand=operand):
                inner = self.kinds(operand)
                self.numeric(operand, inner)
                return WINDOW if "window" in inner else frozenset({"number"})
            case Binary(left=left, right=right):
                sides = [self.kinds(left), self.kinds(right)]
                for side, kinds in zip((left, right), sides, strict=True):
                    self.numeric(side, kinds)
                return WINDOW if any("window" in k for k in sides) else frozenset({"number"})
            case Compare(operands=operands):
                each = [self.kinds(operand) for operand in operands]
                if any("window" in k for k in each):
                    if len(operands) > 2:  # a < b < c takes the truth of (a < b)
                        self.truth_taken(node, WINDOW)
                    return WINDOW
                return frozenset({"bool"})
            case BoolOp(operands=operands):
                union: set[Kind] = set()
                for i, operand in enumerate(operands):
                    kinds = self.kinds(operand)
                    if i < len(operands) - 1:  # Python tests these; it returns the last as is
                        self.truth_taken(operand, kinds)
                    union |= kinds
                return frozenset(union)
        raise TypeError(f"not a rule node: {node!r}")  # pragma: no cover

    def call(self, call: Call) -> Kinds:
        signature = FUNCTIONS[call.name]
        argument_kinds = [self.kinds(arg) for arg in call.args]
        if call.name in WINDOW_REDUCERS or (call.name in ("min", "max") and len(call.args) == 1):
            kinds = argument_kinds[0]
            if "window" not in kinds:
                raise self.fail(
                    call.args[0].position,
                    f"{call.name}() takes the values of a window, not a {_name(kinds)}: "
                    f"e.g. {signature.usage}",
                )
        elif call.name in ("min", "max"):
            for arg, kinds in zip(call.args, argument_kinds, strict=True):
                if "window" in kinds:
                    raise self.fail(
                        arg.position,
                        f"{call.name}() of several arguments takes numbers; "
                        f"{call.name}(v(...)) takes the values of one window",
                    )
        elif call.name == "abs":
            self.numeric(call.args[0], argument_kinds[0])
            if "window" in argument_kinds[0]:
                return WINDOW
        return frozenset({signature.returns})


def _name(kinds: Kinds) -> str:
    return " or ".join(sorted(kinds))


def condition_warnings(condition: Node, fail: Fail) -> list[str]:
    """Refuse what can never be evaluated; warn about what cannot give True or False."""
    check = KindCheck(fail)
    kinds = check.kinds(condition)
    if "bool" not in kinds:
        what = "the values of a window" if kinds == WINDOW else f"a {_name(kinds)}"
        fix = "any(...) or all(...)" if "window" in kinds else "a comparison"
        check.warnings.insert(
            0,
            f"the condition gives {what}, not True or False: on Sage it never fires; write {fix}",
        )
    return check.warnings
