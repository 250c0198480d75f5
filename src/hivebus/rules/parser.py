"""Science rule parser: a hand-written scanner and recursive-descent parser, no ``eval``.

Grammar (``[]`` optional, ``*`` repeated)::

    rule      := action ':' condition | plugin ':' condition      (older form, see below)
    action    := ('schedule' | 'publish' | 'set') '(' object (',' key '=' text)* ')'
    object    := quoted string | bare text up to ',' or ')'      text := the same, ':' allowed
    condition := or
    or        := and ('or' and)*            and := not ('and' not)*
    not       := 'not' not | compare        compare := sum (('<'|'<='|'>'|'>='|'=='|'!=') sum)*
    sum       := term (('+'|'-') term)*     term := unary (('*'|'/'|'%') unary)*
    unary     := '-' unary | atom
    atom      := number | string | True | False | call | '(' condition ')'
    call      := function '(' [arg (',' arg)*] [','] ')'    arg := condition | name '=' condition

The action is read as Sage's cloud scheduler reads it: an object, then ``key=value``
parameters kept as text with their quotes removed (``set(sys.time.sunrise, value=06:39:00)``).
The condition is the subset of Python that Sage's node checker evaluates (see ``kinds.py``
and ``evaluate.py`` for what it means).

The older ``<plugin>: <condition>`` form, which Sage's scheduler no longer parses but old job
files use, is read as ``schedule(<plugin>): <condition>`` with a warning that shows that form;
the plugin name must then be a bare Sage plugin name (``[a-z0-9-]``).

Every error is a ``RuleSyntaxError`` with the 0-based position of the offending character;
the parser also refuses what would only fail later (unknown functions, wrong arguments, bad
cron expressions and windows, a reducer given a name instead of values), deep nesting and
over-long rules.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from hivebus.errors import RuleSyntaxError
from hivebus.rules.functions import CHECKS, FUNCTIONS, SAGE_TIME_UNITS, Signature
from hivebus.rules.kinds import condition_warnings
from hivebus.rules.syntax import (
    Action,
    BoolOp,
    Call,
    Compare,
    Const,
    Node,
    Publish,
    Rule,
    Scalar,
    Schedule,
    Set,
    Unary,
    walk,
)
from hivebus.rules.syntax import (
    Binary as BinaryNode,
)

MAX_RULE_LENGTH: Final = 4096
MAX_DEPTH: Final = 48
ACTIONS: Final = ("schedule", "publish", "set")

_ACTION_HEAD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_HEAD_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_LEGACY_PLUGIN = re.compile(r"[a-z0-9][a-z0-9-]*")  # fullmatch: Sage's plugin names
_BARE_OBJECT = re.compile(r"[^\s,()'\"=]+")
_BARE_VALUE = re.compile(r"[^\s,()'\"]+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEYWORD_ARG = re.compile(r"\s*=(?!=)")
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"\d+")
_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")
_PUBLISH_NAME = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*")  # fullmatch: "$" lets "a\n" through
_OPERATORS: Final = (
    "<=",
    ">=",
    "==",
    "!=",
    "<",
    ">",
    "(",
    ")",
    ",",
    "=",
    ":",
    "+",
    "-",
    "*",
    "/",
    "%",
)
_COMPARE: Final = frozenset({"<", "<=", ">", ">=", "==", "!="})
_KEYWORDS: Final = {"and", "or", "not", "true", "false", "True", "False"}
_ESCAPES: Final = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "num" | "str" | "ident" | "op" | "end"
    text: str
    value: float | int | str | None
    position: int


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0
        self._peeked: Token | None = None
        self.warnings: list[str] = []

    # --- errors and scanning ---------------------------------------------------------------

    def fail(self, position: int, message: str) -> RuleSyntaxError:
        return RuleSyntaxError(self.text, max(0, min(position, len(self.text))), message)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def scan_string(self) -> Token:
        start = self.pos
        quote = self.text[start]
        chars: list[str] = []
        i = start + 1
        while i < len(self.text):
            ch = self.text[i]
            if ch == quote:
                self.pos = i + 1
                return Token("str", self.text[start : i + 1], "".join(chars), start)
            if ch == "\\":
                if i + 1 >= len(self.text):
                    break
                escaped = self.text[i + 1]
                if escaped not in _ESCAPES:
                    raise self.fail(i, f"unknown escape \\{escaped} in a string")
                chars.append(_ESCAPES[escaped])
                i += 2
                continue
            if ch == "\n":
                break
            chars.append(ch)
            i += 1
        raise self.fail(start, "string is not closed")

    def scan(self) -> Token:
        self.skip_space()
        start = self.pos
        if start >= len(self.text):
            return Token("end", "", None, start)
        ch = self.text[start]
        if ch in "'\"":
            return self.scan_string()
        number = _NUMBER.match(self.text, start)
        if number:
            end = number.end()
            if end < len(self.text) and (self.text[end].isalnum() or self.text[end] == "_"):
                raise self.fail(end, f"unexpected {self.text[end]!r} after the number")
            text = number.group()
            if len(text) > 64:
                raise self.fail(start, "number is too large")
            value: float | int = int(text) if _INTEGER.fullmatch(text) else float(text)
            if not math.isfinite(value):
                raise self.fail(start, "number is too large")
            self.pos = end
            return Token("num", text, value, start)
        ident = _IDENT.match(self.text, start)
        if ident:
            self.pos = ident.end()
            return Token("ident", ident.group(), ident.group(), start)
        for op in _OPERATORS:
            if self.text.startswith(op, start):
                self.pos = start + len(op)
                return Token("op", op, op, start)
        raise self.fail(start, f"unexpected character {ch!r}")

    def peek(self) -> Token:
        if self._peeked is None:
            self._peeked = self.scan()
        return self._peeked

    def next(self) -> Token:
        token = self.peek()
        self._peeked = None
        return token

    def expect_op(self, op: str, what: str) -> Token:
        token = self.next()
        if token.kind != "op" or token.text != op:
            raise self.fail(token.position, f"expected {op!r} {what}, found {describe(token)}")
        return token

    def at_op(self, *ops: str) -> bool:
        token = self.peek()
        return token.kind == "op" and token.text in ops

    def at_word(self, word: str) -> bool:
        token = self.peek()
        return token.kind == "ident" and token.text == word

    # --- action ----------------------------------------------------------------------------

    def piece(self, pattern: re.Pattern[str], what: str) -> tuple[str, int]:
        """A quoted string (quotes removed) or bare text matching ``pattern``."""
        assert self._peeked is None
        self.skip_space()
        start = self.pos
        if start < len(self.text) and self.text[start] in "'\"":
            return str(self.scan_string().value), start
        match = pattern.match(self.text, start)
        if match is None:
            found = repr(self.text[start]) if start < len(self.text) else "the end of the rule"
            raise self.fail(start, f"expected {what}, found {found}")
        self.pos = match.end()
        return match.group(), start

    def skip_to(self, ch: str) -> bool:
        self.skip_space()
        if self.pos < len(self.text) and self.text[self.pos] == ch:
            self.pos += 1
            return True
        return False

    def action(self) -> tuple[Action, bool]:
        self.skip_space()
        start = self.pos
        head = _ACTION_HEAD.match(self.text, start)
        if head is None:
            return self.legacy_action(start), True
        name = head.group(1)
        if name not in ACTIONS:
            raise self.fail(
                start,
                f"unknown action {name!r} (use schedule(<plugin>), publish(<name>) or set(<key>, value=<v>))",
            )
        self.pos = head.end()
        what = {"schedule": "a plugin name", "publish": "a name to publish", "set": "a key"}[name]
        target, target_at = self.piece(_BARE_OBJECT, what)
        params: dict[str, str] = {}
        while self.skip_to(","):
            self.skip_space()
            key_at = self.pos
            key = _IDENT.match(self.text, key_at)
            if key is None:
                raise self.fail(key_at, f"expected a parameter '<name>=<value>' in {name}(...)")
            self.pos = key.end()
            if not self.skip_to("="):
                raise self.fail(self.pos, f"expected '=' after the parameter {key.group()!r}")
            if key.group() in params:
                raise self.fail(key_at, f"parameter {key.group()!r} is given twice")
            params[key.group()] = self.piece(_BARE_VALUE, f"the value of {key.group()!r}")[0]
        self.skip_space()
        close_at = self.pos
        if not self.skip_to(")"):
            found = (
                repr(self.text[close_at]) if close_at < len(self.text) else "the end of the rule"
            )
            raise self.fail(close_at, f"expected ')' to close {name}(...), found {found}")
        action = self.build_action(name, target, target_at, params, close_at)
        self.expect_op(":", "between the action and its condition")
        return action, False

    def build_action(
        self, name: str, target: str, at: int, params: dict[str, str], close_at: int
    ) -> Action:
        if name == "schedule":
            check_plugin(self, target, at)
            return Schedule(target, tuple(params.items()))
        if name == "publish":
            if not _PUBLISH_NAME.fullmatch(target) or len(target) > 128:
                raise self.fail(
                    at,
                    f"{target!r} is not a name to publish (dot-separated lower-case parts, e.g. 'env.event.heat')",
                )
            return Publish(target, tuple(params.items()))
        check_plugin(self, target, at, "key")
        if "value" not in params:
            raise self.fail(close_at, "set(<key>, value=<v>) needs the value to set")
        value = params.pop("value")
        return Set(target, value, tuple(params.items()))

    def legacy_action(self, start: int) -> Schedule:
        """``<plugin>: <condition>``, the form old job files use: schedule(<plugin>)."""
        word = _HEAD_WORD.match(self.text, start)
        if word is None:
            raise self.fail(
                start,
                "expected an action: schedule(<plugin>), publish(<name>) or "
                f"set(<key>, value=<v>), found {self.found(start)}",
            )
        name = word.group()
        self.pos = word.end()
        self.skip_space()
        if self.pos >= len(self.text) or self.text[self.pos] != ":":
            if name in ACTIONS:
                raise self.fail(
                    self.pos, f"expected '(' after {name!r}: {name}(<object>): <condition>"
                )
            raise self.fail(
                self.pos,
                f"expected ':' after {name!r} (a rule is '<action>(<object>): <condition>'), "
                f"found {self.found(self.pos)}",
            )
        if name in ACTIONS:
            raise self.fail(start, f"{name!r} needs its object: {name}(<object>): <condition>")
        if not _LEGACY_PLUGIN.fullmatch(name) or len(name) > 128:
            raise self.fail(
                start,
                "a rule is '<action>(<object>): <condition>'; as the older '<plugin>: <condition>' "
                f"form, {name!r} is not a plugin name (lower-case letters, digits and '-')",
            )
        self.pos += 1
        return Schedule(name)

    def found(self, at: int) -> str:
        return repr(self.text[at]) if at < len(self.text) else "the end of the rule"

    # --- condition -------------------------------------------------------------------------

    def nested(self, at: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(at, f"the condition nests deeper than {MAX_DEPTH} levels")

    def condition(self) -> Node:
        start = self.peek().position
        self.nested(start)
        try:
            operands = [self.conjunction()]
            while self.at_word("or"):
                self.next()
                operands.append(self.conjunction())
            return operands[0] if len(operands) == 1 else BoolOp("or", tuple(operands), start)
        finally:
            self.depth -= 1

    def conjunction(self) -> Node:
        start = self.peek().position
        operands = [self.negation()]
        while self.at_word("and"):
            self.next()
            operands.append(self.negation())
        return operands[0] if len(operands) == 1 else BoolOp("and", tuple(operands), start)

    def negation(self) -> Node:
        if self.at_word("not"):
            token = self.next()
            self.nested(token.position)
            try:
                return Unary("not", self.negation(), token.position)
            finally:
                self.depth -= 1
        return self.comparison()

    def comparison(self) -> Node:
        start = self.peek().position
        operands = [self.sum()]
        ops: list[str] = []
        while self.at_op(*_COMPARE):
            ops.append(self.next().text)
            operands.append(self.sum())
        if self.at_op("="):
            raise self.fail(self.peek().position, "'=' assigns; compare with '=='")
        return operands[0] if not ops else Compare(tuple(operands), tuple(ops), start)

    def sum(self) -> Node:
        node = self.term()
        while self.at_op("+", "-"):
            token = self.next()
            node = BinaryNode(token.text, node, self.term(), token.position)  # type: ignore[arg-type]
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.at_op("*", "/", "%"):
            token = self.next()
            node = BinaryNode(token.text, node, self.unary(), token.position)  # type: ignore[arg-type]
        return node

    def unary(self) -> Node:
        if self.at_op("-"):
            token = self.next()
            self.nested(token.position)
            try:
                return Unary("-", self.unary(), token.position)
            finally:
                self.depth -= 1
        return self.atom()

    def atom(self) -> Node:
        token = self.next()
        if token.kind == "num":
            return Const(token.value, token.position)  # type: ignore[arg-type]
        if token.kind == "str":
            return Const(str(token.value), token.position)
        if token.kind == "op" and token.text == "(":
            node = self.condition()
            self.expect_op(")", f"to close the '(' at position {token.position}")
            return node
        if token.kind == "ident":
            if token.text in ("true", "True", "false", "False"):
                if token.text.islower():
                    self.warnings.append(
                        f"{token.text!r} at position {token.position} is hivebus's spelling; "
                        f"Sage's checker (Python) knows only {token.text.title()}"
                    )
                return Const(token.text in ("true", "True"), token.position)
            if token.text in _KEYWORDS:
                raise self.fail(token.position, f"expected a value, found {token.text!r}")
            return self.call(token)
        raise self.fail(token.position, f"expected a value, found {describe(token)}")

    def call(self, name: Token) -> Call:
        signature = FUNCTIONS.get(name.text)
        if signature is None:
            known = ", ".join(FUNCTIONS)
            raise self.fail(name.position, f"unknown function {name.text!r} (known: {known})")
        if not self.at_op("("):
            raise self.fail(
                self.peek().position, f"expected '(' after {name.text!r}: {signature.usage}"
            )
        self.next()
        positional: list[Node] = []
        keywords: list[tuple[str, Node, int]] = []
        while not self.at_op(")"):
            if positional or keywords:
                if not self.at_op(","):
                    token = self.peek()
                    raise self.fail(
                        token.position,
                        f"expected ',' between the arguments of {name.text}(...) or ')' to "
                        f"close it, found {describe(token)}",
                    )
                self.next()
                if self.at_op(")"):
                    break  # a trailing comma
            token = self.peek()
            if token.kind == "ident" and _KEYWORD_ARG.match(
                self.text, token.position + len(token.text)
            ):
                self.next()
                self.next()  # '='
                keywords.append((token.text, self.condition(), token.position))
                continue
            if keywords:
                raise self.fail(
                    token.position, f"a positional argument follows a keyword: {signature.usage}"
                )
            positional.append(self.condition())
        end = self.expect_op(")", f"to close {name.text}(...)")
        if signature.values:
            return self.reducer(name, signature, positional, keywords, end)
        return self.data_call(name, signature, positional, keywords, end)

    def reducer(
        self,
        name: Token,
        signature: Signature,
        positional: list[Node],
        keywords: list[tuple[str, Node, int]],
        end: Token,
    ) -> Call:
        if keywords:
            raise self.fail(
                keywords[0][2], f"{name.text}() takes no keyword arguments: {signature.usage}"
            )
        if not positional:
            raise self.fail(end.position, f"{name.text}() needs values: {signature.usage}")
        first = positional[0]
        if isinstance(first, Const) and isinstance(first.value, str) and signature.values == 1:
            since = [
                f", since='-{str(n.value).lstrip('-')}'"
                for n in positional[1:2]
                if isinstance(n, Const)
            ]
            example = f"v({first.value!r}{''.join(since)})"
            raise self.fail(
                first.position,
                f"{name.text}() takes the values of a window, not a name: {name.text}({example})",
            )
        if signature.values == 1 and len(positional) > 1:
            raise self.fail(
                positional[1].position, f"{name.text}() takes one argument: {signature.usage}"
            )
        if name.text == "count":
            self.warnings.append(
                f"count() at position {name.position} is hivebus's; Sage's checker has len()"
            )
        return Call(name.text, tuple(positional), name.position)

    def data_call(
        self,
        name: Token,
        signature: Signature,
        positional: list[Node],
        keywords: list[tuple[str, Node, int]],
        end: Token,
    ) -> Call:
        usage = signature.usage
        order = [option for option in signature.options if option.positional]
        given: dict[str, tuple[Scalar, int]] = {}
        meta: list[tuple[str, str]] = []
        if len(positional) > len(order):
            raise self.fail(positional[len(order)].position, f"too many arguments: {usage}")
        for option, node in zip(order, positional, strict=False):
            given[option.name] = (self.literal(name.text, option.name, node), node.position)
        known = {option.name for option in signature.options}
        for keyword, node, at in keywords:
            if keyword in given or keyword in dict(meta):
                raise self.fail(at, f"argument {keyword!r} of {name.text}() is given twice")
            if keyword in known:
                given[keyword] = (self.literal(name.text, keyword, node), node.position)
            elif signature.meta:
                value = self.literal(name.text, keyword, node)
                if not isinstance(value, str):
                    raise self.fail(
                        node.position, f"meta values are quoted strings: {keyword}='{value}'"
                    )
                meta.append((keyword, value))
            else:
                raise self.fail(at, f"{name.text}() has no argument {keyword!r}: {usage}")
        options: list[tuple[str, Scalar]] = []
        for option in signature.options:
            if option.name not in given:
                if option.default is None:
                    raise self.fail(end.position, f"{name.text}() needs {option.name!r}: {usage}")
                continue
            value, at = given[option.name]
            problem = CHECKS[option.kind](value)
            if problem is not None:
                raise self.fail(at, problem)
            options.append((option.name, value))
        if name.text == "time" and given["unit"][0] not in SAGE_TIME_UNITS:
            self.warnings.append(
                f"time({given['unit'][0]!r}) is hivebus's; Sage's checker reads only "
                f"{', '.join(SAGE_TIME_UNITS)}"
            )
        return Call(name.text, (), name.position, tuple(options), tuple(meta))

    def literal(self, function: str, param: str, node: Node) -> Scalar:
        if isinstance(node, Const):
            return node.value
        if (
            isinstance(node, Unary)
            and node.op == "-"
            and isinstance(node.operand, Const)
            and isinstance(node.operand.value, int | float)
            and not isinstance(node.operand.value, bool)
        ):
            return -node.operand.value
        raise self.fail(
            node.position,
            f"{param}= of {function}() is a literal (a quoted string, a number, True or False)",
        )


def check_plugin(parser: _Parser, name: str, at: int, what: str = "plugin name") -> None:
    if not name or len(name) > 128 or not _LABEL.fullmatch(name):
        raise parser.fail(at, f"{name!r} is not a {what}")


def describe(token: Token) -> str:
    return "the end of the rule" if token.kind == "end" else repr(token.text)


def parse_rule(text: str) -> Rule:
    """Parse one science rule; ``RuleSyntaxError`` (with the position) when it is not one.

    Parsed rules are immutable and cached by text: the scheduler and nodes parse the same
    few rules over and over.
    """
    if not isinstance(text, str):
        raise RuleSyntaxError(str(text), 0, "a rule is a string")
    return _parse(text)


@lru_cache(maxsize=4096)
def _parse(text: str) -> Rule:
    if len(text) > MAX_RULE_LENGTH:
        raise RuleSyntaxError(
            text[:80] + "...", MAX_RULE_LENGTH, f"a rule is at most {MAX_RULE_LENGTH} characters"
        )
    parser = _Parser(text)
    action, legacy = parser.action()
    if parser.peek().kind == "end":
        raise parser.fail(len(text), "the condition is missing after ':'")
    condition = parser.condition()
    trailing = parser.next()
    if trailing.kind != "end":
        raise parser.fail(trailing.position, f"unexpected {trailing.text!r} after the condition")
    warnings = condition_warnings(condition, parser.fail) + parser.warnings
    calls = tuple(node for node in walk(condition) if isinstance(node, Call))
    rule = Rule(text=text, action=action, condition=condition, legacy=legacy, _calls=calls)
    if legacy:
        warnings.insert(
            0,
            "the older '<plugin>: <condition>' form, which Sage's scheduler refuses; "
            f"hivebus reads it as: {rule.modern}",
        )
    return Rule(
        text=text,
        action=action,
        condition=condition,
        legacy=legacy,
        warnings=tuple(warnings),
        _calls=calls,
    )
