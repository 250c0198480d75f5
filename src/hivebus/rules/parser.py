"""Science rule parser: a hand-written scanner and recursive-descent parser, no ``eval``.

Grammar (``[]`` optional, ``*`` repeated)::

    rule      := action ':' condition
    action    := 'schedule' '(' word ')' | 'publish' '(' word ')'
               | 'set' '(' word ',' 'value' '=' literal ')' | word        (older form = schedule)
    word      := bare name [A-Za-z0-9_][A-Za-z0-9_.-]* | quoted string
    condition := or
    or        := and ('or' and)*            and := not ('and' not)*
    not       := 'not' not | compare        compare := sum (('<'|'<='|'>'|'>='|'=='|'!=') sum)*
    sum       := term (('+'|'-') term)*     term := unary (('*'|'/'|'%') unary)*
    unary     := '-' unary | atom
    atom      := number | string | true | false | call | '(' condition ')'
    call      := function '(' [arg (',' arg)*] ')'     arg := literal | keyword '=' literal

Every error is a ``RuleSyntaxError`` with the 0-based position of the offending character;
the parser also refuses what would only fail later (unknown functions, wrong arguments, bad
cron expressions and windows), deep nesting and over-long rules.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from hivebus.errors import RuleSyntaxError
from hivebus.rules.functions import CHECKS, FUNCTIONS
from hivebus.rules.syntax import (
    Action,
    BoolOp,
    Call,
    Compare,
    Const,
    Node,
    Publish,
    Rule,
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

_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
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
    value: float | str | None
    position: int


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0
        self._peeked: Token | None = None

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
            value = float(number.group())
            if not math.isfinite(value):
                raise self.fail(start, "number is too large")
            self.pos = end
            return Token("num", number.group(), value, start)
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

    def word(self, what: str) -> tuple[str, int]:
        """A name in an action: bare (``water-detector``, ``heat.alert``) or quoted."""
        assert self._peeked is None
        self.skip_space()
        start = self.pos
        if start < len(self.text) and self.text[start] in "'\"":
            token = self.scan_string()
            return str(token.value), start
        match = _WORD.match(self.text, start)
        if match is None:
            found = repr(self.text[start]) if start < len(self.text) else "the end of the rule"
            raise self.fail(start, f"expected {what}, found {found}")
        self.pos = match.end()
        return match.group(), start

    def literal(self, what: str) -> float | str | bool:
        token = self.next()
        negative = False
        if token.kind == "op" and token.text == "-":
            negative = True
            token = self.next()
            if token.kind != "num":
                raise self.fail(
                    token.position, f"expected a number after '-', found {describe(token)}"
                )
        if token.kind == "num":
            return -float(token.value) if negative else float(token.value)  # type: ignore[arg-type]
        if token.kind == "str":
            return str(token.value)
        if token.kind == "ident" and token.text in ("true", "True", "false", "False"):
            return token.text in ("true", "True")
        raise self.fail(
            token.position,
            f"expected {what} (a number, a string, true or false), found {describe(token)}",
        )

    def action(self) -> tuple[Action, bool]:
        self.skip_space()
        name, start = self.word(
            "an action: schedule(<plugin>), publish(<name>), set(<key>, value=<v>) or <plugin>"
        )
        self.skip_space()
        is_call = self.pos < len(self.text) and self.text[self.pos] == "("
        if name in ("schedule", "publish", "set") and is_call:
            self.pos += 1
            what = {"schedule": "a plugin name", "publish": "a trigger name", "set": "a key"}[name]
            target, target_at = self.word(what)
            action: Action
            if name == "schedule":
                check_plugin(self, target, target_at)
                action = Schedule(target)
            elif name == "publish":
                if not _PUBLISH_NAME.fullmatch(target) or len(target) > 128:
                    raise self.fail(
                        target_at,
                        f"{target!r} is not a trigger name (dot-separated lower-case parts, e.g. 'heat.alert')",
                    )
                action = Publish(target)
            else:
                check_plugin(self, target, target_at, "key")
                self.expect_op(",", "after the key of set(<key>, value=<v>)")
                keyword = self.next()
                if keyword.kind != "ident" or keyword.text != "value":
                    raise self.fail(
                        keyword.position,
                        f"expected 'value=' in set(<key>, value=<v>), found {describe(keyword)}",
                    )
                self.expect_op("=", "after 'value'")
                action = Set(target, self.literal("the value to set"))
            self.expect_op(")", f"to close {name}(...)")
            self.expect_op(":", "between the action and its condition")
            return action, False
        if is_call:
            raise self.fail(
                start,
                f"unknown action {name!r} (use schedule(<plugin>), publish(<name>) or set(<key>, value=<v>))",
            )
        check_plugin(self, name, start)
        self.expect_op(":", f"after {name!r} (a rule is '<action>: <condition>')")
        return Schedule(name), True

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
            return Const(float(token.value), token.position)  # type: ignore[arg-type]
        if token.kind == "str":
            return Const(str(token.value), token.position)
        if token.kind == "op" and token.text == "(":
            node = self.condition()
            self.expect_op(")", f"to close the '(' at position {token.position}")
            return node
        if token.kind == "ident":
            if token.text in ("true", "True", "false", "False"):
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
                self.peek().position,
                f"expected '(' after {name.text!r}: {signature.usage(name.text)}",
            )
        self.next()
        params = signature.params
        usage = signature.usage(name.text)
        given: dict[str, tuple[str, int]] = {}
        index = 0
        while not self.at_op(")"):
            if given:
                self.expect_op(",", f"between the arguments of {name.text}(...)")
                if self.at_op(")"):
                    break  # a trailing comma
            token = self.next()
            keyword: str | None = None
            if token.kind == "ident" and self.at_op("="):
                keyword = token.text
                self.next()
                token = self.next()
            if token.kind != "str":
                raise self.fail(
                    token.position, f"arguments of {name.text}(...) are quoted strings: {usage}"
                )
            if keyword is None:
                if index < len(given):
                    raise self.fail(
                        token.position, f"a positional argument follows a keyword: {usage}"
                    )
                if index >= len(params):
                    raise self.fail(token.position, f"too many arguments: {usage}")
                param = params[index][0]
                index += 1
            elif keyword not in dict(params):
                raise self.fail(
                    token.position, f"{name.text}() has no argument {keyword!r}: {usage}"
                )
            else:
                param = keyword
            if param in given:
                raise self.fail(
                    token.position, f"argument {param!r} of {name.text}() is given twice"
                )
            given[param] = (str(token.value), token.position)
        end = self.expect_op(")", f"to close {name.text}(...)")
        missing = [p for p, _ in params if p not in given]
        if missing:
            raise self.fail(
                end.position, f"{name.text}() needs {', '.join(repr(m) for m in missing)}: {usage}"
            )
        args: list[Node] = []
        for param, kind in params:
            value, at = given[param]
            problem = CHECKS[kind](value)
            if problem is not None:
                raise self.fail(at, problem)
            args.append(Const(value, at))
        return Call(name.text, tuple(args), name.position)


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
    calls = tuple(node for node in walk(condition) if isinstance(node, Call))
    return Rule(text=text, action=action, condition=condition, legacy=legacy, _calls=calls)
