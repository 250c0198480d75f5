"""Property: no input makes the rule parser raise anything but ``RuleSyntaxError``."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from hivebus.errors import RuleSyntaxError
from hivebus.rules import MemoryContext, parse_rule

_FRAGMENTS = [
    "schedule(",
    "publish(",
    "set(",
    "p",
    ")",
    "(",
    ":",
    ",",
    "value=",
    "v(",
    "avg(",
    "rate(",
    "sum(",
    "time(",
    "cronjob(",
    "'env.t'",
    "'5m'",
    "'hour'",
    "'*/5 * * * *'",
    "'p'",
    " and ",
    " or ",
    "not ",
    "<",
    "<=",
    "==",
    "!=",
    ">",
    "-",
    "+",
    "*",
    "/",
    "%",
    "1",
    "2.5",
    "1e3",
    "'",
    '"',
    "\\",
    "since=",
    "true",
    " ",
    "=",
]

rule_like = st.lists(st.sampled_from(_FRAGMENTS), max_size=30).map("".join)


def _parse_and_evaluate(text: str) -> None:
    try:
        rule = parse_rule(text)
    except RuleSyntaxError as exc:
        assert 0 <= exc.position <= len(text)
        return
    ctx = MemoryContext(now=datetime(2024, 1, 1, tzinfo=UTC))
    ctx.add("env.t", 3.0, 1_704_067_100_000_000_000)
    assert rule.evaluate(ctx) in (True, False)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_only_raises_rule_syntax_errors(text: str) -> None:
    _parse_and_evaluate(text)


@settings(max_examples=600, deadline=None)
@given(rule_like)
def test_rule_shaped_text_only_raises_rule_syntax_errors(text: str) -> None:
    _parse_and_evaluate(text)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["schedule(p): ", "p: ", "publish(a.b): "]), rule_like)
def test_conditions_only_raise_rule_syntax_errors(head: str, body: str) -> None:
    _parse_and_evaluate(head + body)
