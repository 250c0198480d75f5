"""Science rules: parsing every form, refusing bad rules with the position, evaluating."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hivebus.errors import RuleSyntaxError
from hivebus.rules import MemoryContext, Publish, Schedule, Set, parse_rule
from hivebus.rules.cron import cron_due, cron_period_seconds, cron_problem
from hivebus.rules.durations import parse_duration

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
NS = 1_000_000_000


def ctx_with(
    readings: dict[str, list[tuple[float, float | str]]], now: datetime = T0
) -> MemoryContext:
    """readings: name -> [(seconds before now, value)]."""
    ctx = MemoryContext(now=now)
    for name, points in readings.items():
        for ago, value in points:
            ctx.add(name, value, int((now.timestamp() - ago) * NS))
    return ctx


# --- parsing ----------------------------------------------------------------------------------


def test_the_example_jobs_rules_parse() -> None:
    cron = parse_rule("schedule(bme680): cronjob('bme680', '*/5 * * * *')")
    assert cron.action == Schedule("bme680") and not cron.legacy
    assert cron.cronjobs == [("bme680", "*/5 * * * *")]

    publish = parse_rule("publish(heat.alert): v('env.temperature') > 35")
    assert publish.action == Publish("heat.alert")
    assert publish.reading_names == ["env.temperature"]

    legacy = parse_rule(
        "water-detector: v('env.raingauge.uint') > 3 and cronjob('water-detector', '*/10 * * * *')"
    )
    assert legacy.action == Schedule("water-detector") and legacy.legacy
    assert legacy.plugin == "water-detector"


def test_set_action_carries_its_literal() -> None:
    assert parse_rule("set(mode, value='storm'): 1").action == Set("mode", "storm")
    assert parse_rule("set(gain, value=-2.5): 1").action == Set("gain", -2.5)
    assert parse_rule("set(on, value=true): 1").action == Set("on", True)


def test_quoted_names_and_keyword_windows() -> None:
    rule = parse_rule("schedule('my-plugin'): avg(name='env.t', since='-5m') > 1")
    assert rule.action == Schedule("my-plugin")
    assert rule.reading_names == ["env.t"]


def test_a_plugin_named_like_an_action_uses_the_older_form() -> None:
    assert parse_rule("schedule: 1").action == Schedule("schedule")


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("", 0, "expected an action"),
        ("bme680", 6, "expected ':'"),
        ("schedule(bme680)", 16, "expected ':'"),
        ("schedule(bme680):", 17, "condition is missing"),
        ("schedule(bme680):   ", 20, "condition is missing"),
        ("launch(bme680): 1", 0, "unknown action 'launch'"),
        ("publish(Heat): 1", 8, "not a trigger name"),
        ("set(mode): 1", 8, "expected ','"),
        ("set(mode, val=1): 1", 10, "expected 'value='"),
        ("set(mode, value=): 1", 16, "expected the value to set"),
        ("p: v('Env') > 1", 5, "not a reading name"),
        ("p: v('a', 'b') > 1", 10, "too many arguments"),
        ("p: v() > 1", 5, "needs 'name'"),
        ("p: v(3) > 1", 5, "quoted strings"),
        ("p: avg('a') > 1", 10, "needs 'since'"),
        ("p: avg('a', '5 minutes') > 1", 12, "not a duration"),
        ("p: avg('a', since='5m', since='6m') > 1", 30, "given twice"),
        ("p: avg(since='5m', 'a') > 1", 19, "positional argument follows a keyword"),
        ("p: avg('a', window='5m') > 1", 19, "no argument 'window'"),
        ("p: time('fortnight') > 1", 8, "unknown time unit"),
        ("p: cronjob('p', '* * *')", 16, "has 3 fields"),
        ("p: cronjob('p', '61 * * * *')", 16, "not valid"),
        ("p: cronjob('p', '0 0 31 2 *')", 16, "never fires"),
        ("p: eval('1')", 3, "unknown function 'eval'"),
        ("p: __import__('os')", 3, "unknown function"),
        ("p: v", 4, "expected '('"),
        ("p: (1 > 2", 9, "to close the '('"),
        ("p: 1 > ", 7, "expected a value"),
        ("p: 1 2", 5, "unexpected '2'"),
        ("p: v('a') = 1", 10, "'=' assigns"),
        ("p: 'open", 3, "string is not closed"),
        ("p: 'a\\q'", 5, "unknown escape"),
        ("p: 1 $ 2", 5, "unexpected character '$'"),
        ("p: 3abc", 4, "after the number"),
        ("p: 1e999", 3, "too large"),
        ("p: and", 3, "expected a value"),
    ],
)
def test_bad_rules_say_where(text: str, position: int, words: str) -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        parse_rule(text)
    assert caught.value.position == position, str(caught.value)
    assert words in str(caught.value)
    assert caught.value.rule == text


def test_nesting_and_length_are_bounded() -> None:
    with pytest.raises(RuleSyntaxError, match="nests deeper"):
        parse_rule("p: " + "(" * 200 + "1" + ")" * 200)
    with pytest.raises(RuleSyntaxError, match="nests deeper"):
        parse_rule("p: " + "not " * 200 + "1")
    with pytest.raises(RuleSyntaxError, match="at most"):
        parse_rule("p: " + " or ".join(["1"] * 2000))
    assert parse_rule("p: " + "(" * 20 + "1" + ")" * 20).evaluate(MemoryContext())


# --- evaluation -------------------------------------------------------------------------------


def test_latest_value_and_comparisons() -> None:
    ctx = ctx_with({"env.temperature": [(60, 30.0), (1, 36.5)]})
    assert parse_rule("publish(heat): v('env.temperature') > 35").evaluate(ctx)
    assert not parse_rule("publish(heat): v('env.temperature') > 40").evaluate(ctx)
    assert parse_rule("p: 30 < v('env.temperature') <= 36.5").evaluate(ctx)
    assert not parse_rule("p: 30 < v('env.temperature') < 36").evaluate(ctx)


def test_missing_readings_make_comparisons_false_never_raise() -> None:
    ctx = MemoryContext(now=T0)
    assert not parse_rule("p: v('x') > 1").evaluate(ctx)
    assert not parse_rule("p: v('x') <= 1").evaluate(ctx)
    assert parse_rule("p: not v('x') > 1").evaluate(ctx)
    assert not parse_rule("p: v('x') + 1 > 0").evaluate(ctx)
    assert not parse_rule("p: avg('x', '5m') > 0").evaluate(ctx)
    assert parse_rule("p: count('x', '5m') == 0 and sum('x', '5m') == 0").evaluate(ctx)


def test_windows_aggregate_only_recent_numbers() -> None:
    ctx = ctx_with({"env.rain": [(600, 100.0), (240, 1.0), (120, 2.0), (60, 3.0), (30, "n/a")]})
    assert parse_rule("p: avg('env.rain', '5m') == 2").evaluate(ctx)
    assert parse_rule("p: sum('env.rain', '5m') == 6").evaluate(ctx)
    assert parse_rule("p: min('env.rain', '5m') == 1 and max('env.rain', '5m') == 3").evaluate(ctx)
    assert parse_rule("p: count('env.rain', '15m') == 4").evaluate(ctx)
    # 1.0 at -240 s to 3.0 at -60 s: 2 units in 180 s
    assert parse_rule("p: rate('env.rain', '5m') * 180 == 2").evaluate(ctx)
    assert not parse_rule("p: rate('env.rain', '90s') > 0").evaluate(ctx)  # one point: no rate


def test_arithmetic_and_mixed_kinds_never_raise() -> None:
    ctx = ctx_with({"a.b": [(1, 4.0)], "mode": [(1, "storm")]})
    assert parse_rule("p: v('a.b') / 2 - -1 == 3 and v('a.b') % 3 == 1").evaluate(ctx)
    assert not parse_rule("p: v('a.b') / 0 > 0").evaluate(ctx)
    assert parse_rule("p: v('mode') == 'storm' and v('mode') != 3").evaluate(ctx)
    assert not parse_rule("p: v('mode') > 3").evaluate(ctx)
    assert not parse_rule("p: 1e308 * 10 > 0").evaluate(ctx)


def test_time_parts_are_utc() -> None:
    ctx = MemoryContext(now=datetime(2024, 6, 1, 14, 30, tzinfo=UTC))  # a Saturday
    assert parse_rule("p: time('hour') == 14 and time('minute') == 30").evaluate(ctx)
    assert parse_rule("p: time('weekday') == 5 and time('month') == 6").evaluate(ctx)
    assert parse_rule("p: time('dayofyear') == 153 and time('year') == 2024").evaluate(ctx)


def test_cronjob_is_due_once_per_slot() -> None:
    rule = parse_rule("schedule(bme680): cronjob('bme680', '*/5 * * * *')")
    ctx = MemoryContext(now=T0 + timedelta(seconds=10))  # 12:00:10, slot 12:00 just passed
    assert rule.evaluate(ctx)
    ctx.set_now(T0 + timedelta(seconds=40))
    assert not rule.evaluate(ctx)
    ctx.set_now(T0 + timedelta(minutes=5, seconds=1))
    assert rule.evaluate(ctx)


def test_cron_helpers() -> None:
    assert cron_period_seconds("*/5 * * * *") == 300
    assert cron_period_seconds("0 9,17 * * *") == 8 * 3600
    assert cron_period_seconds("@hourly") == 3600
    assert cron_problem("*/5 * * * *") is None
    assert not cron_due("0 * * * *", T0, T0)
    assert cron_due("0 * * * *", T0 - timedelta(minutes=1), T0)
    assert not cron_due("0 * * * *", None, T0 + timedelta(minutes=2))


def test_durations() -> None:
    assert parse_duration("5m") == 300
    assert parse_duration("-1h30m") == 5400
    assert parse_duration("1d") == 86400
    for bad in ("", "5", "m", "5 m", "-", "0s", "99999w"):
        with pytest.raises(ValueError):
            parse_duration(bad)
