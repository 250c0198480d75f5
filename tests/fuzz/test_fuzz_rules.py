"""Fuzz the science-rule language: parser, evaluator, cron expressions and windows.

A rule comes in with a job (``scienceRules``), is parsed on the hub (submit) and again on
every node, and is evaluated on the node every tick, offline. So: any text parses to a
``Rule`` or raises ``RuleSyntaxError`` with a position inside the text; a parsed rule never
raises while it is evaluated, whatever the readings and the clock; whatever the parser lets
through is something the rest of the platform accepts (a ``publish`` name is a valid
``trigger.fired`` name, a reading name is a valid reading name, a plugin is a valid label);
and every cron expression the parser accepts can be scheduled at any date.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from hivebus.errors import RuleSyntaxError
from hivebus.rules import (
    FUNCTIONS,
    TIME_UNITS,
    MemoryContext,
    Publish,
    Rule,
    Schedule,
    Set,
    cron_due,
    cron_period_seconds,
    cron_problem,
    next_fire,
    parse_duration,
    parse_rule,
)
from hivebus.rules.durations import MAX_SECONDS
from hivebus.schemas.data import ReadingName
from hivebus.schemas.fields import Label
from tests.fuzz import fuzz

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
READING_NAME = TypeAdapter(ReadingName)
LABEL = TypeAdapter(Label)


def example_rules() -> list[str]:
    rules = []
    for path in sorted(EXAMPLES.glob("job-*.yaml")):
        rules += yaml.safe_load(path.read_text()).get("scienceRules", [])
    assert rules, "the examples carry science rules"
    return rules


CORPUS = [
    *example_rules(),
    "set(mode, value='storm'): any(rate('env.pressure', since='-1h', window='10m', unit='1h') < 0.5)",
    "publish(heat.alert, to=cloud): avg(v('env.temperature', since='-10m')) >= 35 or not (time('hour') < 6)",
    "schedule(cam): len(v('env.motion', since='-5m')) > 2 and max(v('env.t', since='-1h30m')) - min(v('env.t')) > 10",
    "schedule(p, duration=5m): cronjob('p', '@hourly') and sum(v('sys.load1', since='-250ms')) / 0 == 1",
    "schedule(\"q\"): any(-v('a.b', sensor='bme680') % 3 != 0) and 1 < avg(v('x', last=True)) <= 2",
    "schedule(b): after('a', since='b') or after('a', since=120) or cronjob('', '*/2 * * * * *')",
]


def accepted_or_refused(text: str) -> Rule | None:
    """The rule, or None after checking the RuleSyntaxError points inside the text."""
    try:
        rule = parse_rule(text)
    except RuleSyntaxError as exc:
        assert 0 <= exc.position <= len(text), (text, exc.position)
        assert str(exc).startswith(f"bad science rule at position {exc.position}:")
        return None
    check_accepted(rule)
    return rule


def check_accepted(rule: Rule) -> None:
    """What the parser lets through is what the rest of the platform accepts, and runs."""
    action = rule.action
    if isinstance(action, Publish):
        READING_NAME.validate_python(action.name)  # the node sends it as trigger.fired's name
    elif isinstance(action, Schedule):
        LABEL.validate_python(action.plugin)  # it must name one of the job's plugins
    elif isinstance(action, Set):
        LABEL.validate_python(action.key)
    for name in rule.reading_names:
        READING_NAME.validate_python(name)
    for plugin, expr in rule.cronjobs:
        if plugin:  # '' is allowed: the cron alone, no program's runs
            LABEL.validate_python(plugin)
        assert cron_problem(expr) is None
    for ctx in contexts():
        assert rule.evaluate(ctx) in (True, False)


def contexts() -> list[MemoryContext]:
    """Readings of every awkward kind, at an ordinary time and at the ends of the calendar."""
    out = []
    for now in (datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC), datetime(2000, 1, 1, tzinfo=UTC),
                datetime(2099, 12, 31, 23, 59, tzinfo=UTC)):  # fmt: skip
        ctx = MemoryContext(now=now)
        ns = int(now.timestamp() * 1e9)
        for name in ("env.t", "env.temperature", "a.b", "x", "sys.load1", "env.pressure"):
            for i, value in enumerate((1.0, -0.0, 1e308, -1e308, 3, "wet", 2**70, 5e-324, True)):
                ctx.add(name, value, ns - i * 1_000_000_000, {"sensor": "bme680"} if i % 2 else None)
        ctx.record_run("p", now - timedelta(seconds=30))
        out.append(ctx)
    out.append(MemoryContext(now=datetime(2024, 1, 1, tzinfo=UTC)))  # nothing read yet
    return out


# --- arbitrary and mutated text ---------------------------------------------------------------


@fuzz(300)
@given(st.text(max_size=120))
@example("publish('heat.alert\\n'): v('x') > 1")
@example("schedule('p\\n'): v('x') > 1")
@example("schedule(p): v('env.t\\n') > 1")
@example("schedule(p): cronjob('p\\n', '* * * * *')")
@example("set('k\\n', value=1): v('x') > 1")
@example("p: " + "(" * 60 + "1" + ")" * 60)
@example("p: " + "not " * 60 + "1")
@example("p: " + "-" * 60 + "1")
@example("p: 1" + " + 1" * 2000)
@example("p: " + "9" * 400 + " > 1")
@example("p: 1e308 * 10 > 1")
def test_any_text_is_a_rule_or_a_positioned_syntax_error(text: str) -> None:
    accepted_or_refused(text)


@fuzz(400)
@given(rule=st.sampled_from(CORPUS), data=st.data())
def test_a_valid_rule_with_one_edit_is_a_rule_or_a_positioned_syntax_error(rule: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(rule)))
    edit = data.draw(st.sampled_from(["insert", "delete", "replace"]))
    piece = data.draw(st.sampled_from(["(", ")", "'", '"', ",", ":", "=", "\\", "\n", " ", "-", "e", "9",
                                       "not ", " and ", "v(", "*/", "ß", "\x00"]) | st.text(max_size=3))  # fmt: skip
    if edit == "insert":
        text = rule[:at] + piece + rule[at:]
    elif edit == "delete":
        text = rule[:at] + rule[at + len(piece) :]
    else:
        text = rule[:at] + piece + rule[at + len(piece) :]
    accepted_or_refused(text)


# --- rules built from the grammar ---------------------------------------------------------------

reading_names = st.from_regex(r"[a-z0-9_]{1,6}(\.[a-z0-9_]{1,6}){0,2}", fullmatch=True) | st.sampled_from(
    ["env.t", "env.temperature", "a.b", "x", "sys.load1"]
)
plugins = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,8}", fullmatch=True)
windows = st.builds(
    lambda sign, parts: sign + "".join(f"{n}{u}" for n, u in parts),
    st.sampled_from(["-"]),
    st.lists(st.tuples(st.integers(1, 90), st.sampled_from(["ms", "s", "m", "h", "d", "w"])), min_size=1, max_size=3),
).filter(lambda w: parse_duration(w) <= MAX_SECONDS)
crons = st.sampled_from(["* * * * *", "*/5 * * * *", "0 0 29 2 *", "59 23 31 12 *", "0 */6 * * 1-5",
                         "@hourly", "@yearly", "15,45 8-17 * 1,7 sun"])  # fmt: skip


def quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def data(draw: st.DrawFn) -> str:
    """A ``v(...)`` or ``rate(...)`` call: a window of values."""
    options = [quoted(draw(reading_names))]
    if draw(st.booleans()):
        options.append(f"since={quoted(draw(windows))}")
    if draw(st.booleans()):
        options.append(f"sensor={quoted(draw(st.sampled_from(['bme680', 'x'])))}")
    if draw(st.booleans()):
        return f"rate({', '.join(options)}, window={quoted(draw(windows).lstrip('-'))})"
    return f"v({', '.join(options)}{', last=True' if draw(st.booleans()) else ''})"


def call(name: str, draw: st.DrawFn) -> str:
    if name in ("v", "rate"):
        return data(draw)
    if name == "time":
        return f"time({quoted(draw(st.sampled_from(TIME_UNITS)))})"
    if name == "cronjob":
        return f"cronjob({quoted(draw(plugins | st.just('')))}, {quoted(draw(crons))})"
    if name == "after":
        since = draw(st.sampled_from(["", ", since=120", ", since='p'"]))
        return f"after({quoted(draw(plugins))}{since})"
    if name in ("min", "max") and draw(st.booleans()):
        return f"{name}(1, time('hour'), -2.5)"
    inner = data(draw)
    if draw(st.booleans()):
        inner = f"{inner} {draw(st.sampled_from(['>', '==', '*', '-']))} {draw(st.sampled_from(['1', '2.5']))}"
    return f"{name}({inner})"


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(st.sampled_from(["number", "string", "bool", "call"] + (["unary", "binary", "compare", "boolop", "paren"] if depth < 4 else [])))
    if kind == "number":
        return draw(st.sampled_from(["0", "1", "2.5", "1e3", ".5", "1e308", "0.0", "3"]))
    if kind == "string":
        return quoted(draw(st.text(alphabet="ab '\\\"", max_size=4)))
    if kind == "bool":
        return draw(st.sampled_from(["true", "false", "True", "False"]))
    if kind == "call":
        return call(draw(st.sampled_from(sorted(FUNCTIONS))), draw)
    inner = expressions(depth + 1).map(lambda e: e if _atomic(e) else f"({e})")
    if kind == "unary":
        return draw(st.sampled_from(["-", "not "])) + draw(inner)
    if kind == "binary":
        return f"{draw(inner)} {draw(st.sampled_from('+-*/%'))} {draw(inner)}"
    if kind == "compare":
        return f"{draw(inner)} {draw(st.sampled_from(['<', '<=', '>', '>=', '==', '!=']))} {draw(inner)}"
    if kind == "boolop":
        return f"{draw(inner)} {draw(st.sampled_from(['and', 'or']))} {draw(inner)}"
    return f"({draw(inner)})"


def _atomic(expression: str) -> bool:
    """A literal, a call or a parenthesised group: safe as an operand anywhere."""
    if expression.startswith("(") and expression.endswith(")"):
        depth = 0
        for i, ch in enumerate(expression):  # one group, not "(a) + (b)" (quotes hold no parens)
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0 and i < len(expression) - 1:
                return False
        return True
    return expression[0] not in "-n" and " " not in expression.split("(")[0]


def word(name: str) -> str:
    """A plugin name as an action argument: bare when the grammar allows it, else quoted."""
    return name if ":" not in name else quoted(name)


@st.composite
def rules(draw: st.DrawFn) -> str:
    action = draw(st.sampled_from(["schedule", "publish", "set", "legacy"]))
    if action == "schedule":
        head = f"schedule({word(draw(plugins))})"
    elif action == "publish":
        head = f"publish({draw(reading_names)}{draw(st.sampled_from(['', ', to=cloud']))})"
    elif action == "set":
        value = draw(st.sampled_from(["1", "-2.5", "'storm'", "true"]))
        head = f"set({word(draw(plugins))}, value={value})"
    else:
        head = draw(st.from_regex(r"[a-z0-9][a-z0-9-]{0,8}", fullmatch=True).filter(lambda p: p not in ("schedule", "publish", "set")))
    return f"{head}: {draw(expressions())}"


@fuzz(300)
@given(rules())
def test_every_rule_the_grammar_allows_parses_and_evaluates(text: str) -> None:
    rule = accepted_or_refused(text)
    assert rule is not None, text


@fuzz(200)
@given(rules(), st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
       st.lists(st.tuples(st.sampled_from(["env.t", "a.b", "x", "sys.load1"]),
                          st.floats() | st.integers() | st.text(max_size=3),
                          st.integers(-10**12, 10**12)), max_size=8))  # fmt: skip
def test_a_parsed_rule_never_raises_whatever_the_readings_and_the_clock(
    text: str, now: datetime, readings: list[tuple[str, Any, int]]
) -> None:
    rule = parse_rule(text)
    ctx = MemoryContext(now=now.replace(tzinfo=UTC))
    base = int(ctx.now().timestamp() * 1e9)
    for name, value, offset in readings:
        ctx.add(name, value, base + offset)
    first = rule.evaluate(ctx)
    assert first in (True, False)
    ctx.set_now(ctx.now() + timedelta(minutes=1))
    assert rule.evaluate(ctx) in (True, False)


# --- cron expressions and windows -----------------------------------------------------------------

def cron_field(low: int, high: int, names: list[str]) -> st.SearchStrategy[str]:
    """One cron field, mostly in range (``*``, ``*/n``, ``a``, ``a-b``, ``a,b``, ``a-b/n``, names)."""
    n = st.integers(low, high).map(str) | st.sampled_from(names or ["*"])
    wild = st.integers(low - 2, high + 2).map(str) | st.sampled_from(["L", "?", "#", "W", "H", "1#2", "5L", "-1"])
    return st.one_of(
        st.just("*"),
        st.integers(0, high + 1).map(lambda k: f"*/{k}"),
        n,
        st.builds(lambda a, b: f"{a}-{b}", n, n),
        st.builds(lambda a, b: f"{a},{b}", n, n),
        st.builds(lambda a, b, k: f"{a}-{b}/{k}", n, n, st.integers(1, 7)),
        wild,
    )


MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
five_fields = st.tuples(
    cron_field(0, 59, []), cron_field(0, 23, []), cron_field(1, 31, []),
    cron_field(1, 12, MONTHS), cron_field(0, 7, DAYS),
).map(" ".join)  # fmt: skip
cron_like = st.one_of(
    five_fields,
    five_fields,
    st.lists(st.text(alphabet="0123456789*/-,LW#?abcdefjmnorstuy", min_size=1, max_size=4), min_size=4, max_size=7).map(" ".join),
    st.text(max_size=30),
    st.sampled_from(["@hourly", "@HOURLY", "@reboot", "@every 5m", "0 0 30 2 *", "0 0 31 4 *", "* * * * * *",
                     " */5  *\t* * * ", "0 0 29 2 *", "0 0 31 2,4 *", "٣ * * * *"]),
)  # fmt: skip
instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1))


@fuzz(300)
@given(cron_like, instants)
def test_every_cron_expression_the_parser_accepts_can_be_scheduled(expr: str, when: datetime) -> None:
    problem = cron_problem(expr)
    assert problem is None or isinstance(problem, str)
    text = f"schedule(p): cronjob('p', {quoted(expr)})"
    rule = accepted_or_refused(text)
    assert (rule is None) == (problem is not None), (expr, problem)
    if problem is not None:
        return
    now = when.replace(tzinfo=UTC)
    fire = next_fire(expr, now)
    assert fire > now
    assert cron_due(expr, None, now) in (True, False)
    assert cron_due(expr, fire - timedelta(seconds=1), fire) is True
    period = cron_period_seconds(expr)
    assert 60 <= period < math.inf


@fuzz(300)
@given(st.text(max_size=20) | st.lists(st.tuples(st.text(alphabet="0123456789.", min_size=1, max_size=25),
                                                  st.sampled_from(["ms", "s", "m", "h", "d", "w", "", "x"])),
                                       min_size=1, max_size=4).map(lambda p: "".join(n + u for n, u in p)))  # fmt: skip
def test_a_window_is_a_positive_bounded_duration_or_a_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        assert str(exc)
        return
    assert 0 < seconds <= MAX_SECONDS and math.isfinite(seconds)
    since = "-" + text.strip().lstrip("-")
    rule = accepted_or_refused(f"schedule(p): avg(v('env.t', since={quoted(since)})) > 1")
    assert rule is not None and rule.windows == [("env.t", seconds)]
