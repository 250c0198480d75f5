"""Science rules: parsing every form, refusing bad rules with the position, evaluating them as
Sage's node checker does (``v()`` a window of values, reducers, Python's truth)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hivebus.errors import RuleSyntaxError
from hivebus.rules import MemoryContext, Publish, Schedule, Set, Window, parse_rule
from hivebus.rules.cron import cron_due, cron_period_seconds, cron_problem, last_fire
from hivebus.rules.durations import parse_duration

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
NS = 1_000_000_000


def ctx_with(
    readings: dict[
        str, list[tuple[float, float | str] | tuple[float, float | str, dict[str, str]]]
    ],
    now: datetime = T0,
) -> MemoryContext:
    """readings: name -> [(seconds before now, value[, meta])]."""
    ctx = MemoryContext(now=now)
    for name, points in readings.items():
        for ago, value, *meta in points:
            ctx.add(name, value, int((now.timestamp() - ago) * NS), meta[0] if meta else None)
    return ctx


def fires(text: str, ctx: MemoryContext) -> bool:
    return parse_rule(text).evaluate(ctx)


# --- parsing: actions ---------------------------------------------------------------------------


def test_actions_as_sages_scheduler_reads_them() -> None:
    cron = parse_rule("schedule(bme680): cronjob('bme680', '*/5 * * * *')")
    assert cron.action == Schedule("bme680") and not cron.legacy and cron.warnings == ()
    assert cron.cronjobs == [("bme680", "*/5 * * * *")]

    quoted = parse_rule("schedule('plugin-b', duration=\"5m\"): True")
    bare = parse_rule("schedule(plugin-b, duration=5m): True")
    assert quoted.action == bare.action == Schedule("plugin-b", (("duration", "5m"),))
    assert bare.params == {"duration": "5m"} and bare.object == "plugin-b"

    publish = parse_rule("publish(env.event.cloudmotion.fast, to=cloud): True")
    assert publish.action == Publish("env.event.cloudmotion.fast", (("to", "cloud"),))

    sunrise = parse_rule("set(sys.time.sunrise, value=06:39:00): True")
    assert sunrise.action == Set("sys.time.sunrise", "06:39:00")
    assert sunrise.params == {"value": "06:39:00"}
    assert parse_rule("set(mode, value='storm', note=x): True").action == Set(
        "mode", "storm", (("note", "x"),)
    )
    assert parse_rule("set(gain, value=-2.5): True").action == Set("gain", "-2.5")


def test_the_older_form_is_read_as_schedule_with_a_warning_showing_the_modern_form() -> None:
    legacy = parse_rule("water-detector: any(v('env.raingauge.uint') > 3)")
    assert legacy.action == Schedule("water-detector") and legacy.legacy
    assert legacy.modern == "schedule(water-detector): any(v('env.raingauge.uint') > 3)"
    assert legacy.warnings == (
        "the older '<plugin>: <condition>' form, which Sage's scheduler refuses; "
        "hivebus reads it as: schedule(water-detector): any(v('env.raingauge.uint') > 3)",
    )


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("", 0, "expected an action"),
        ("bme680", 6, "expected ':'"),
        ("schedule(bme680)", 16, "expected ':'"),
        ("schedule(bme680):", 17, "condition is missing"),
        ("schedule(bme680):   ", 20, "condition is missing"),
        ("schedule(plugin-a: True", 19, "expected ')' to close schedule"),
        ("schedul(plugin-b): True", 0, "unknown action 'schedul'"),
        ("schedule: True", 0, "'schedule' needs its object"),
        ("my_state: True", 0, "'my_state' is not a plugin name"),
        ('"thermalimaging": True', 0, "expected an action"),
        ("publish(Heat): True", 8, "not a name to publish"),
        ("set(mode): True", 8, "needs the value to set"),
        ("set(mode, value): True", 15, "expected '=' after the parameter 'value'"),
        ("set(mode, value=1, value=2): True", 19, "given twice"),
        ("schedule(p, =1): True", 12, "expected a parameter"),
    ],
)
def test_bad_actions_say_where(text: str, position: int, words: str) -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        parse_rule(text)
    assert caught.value.position == position, str(caught.value)
    assert words in str(caught.value)
    assert caught.value.rule == text


# --- parsing: conditions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "position", "words"),
    [
        ("v('Env') > 1", 5, "not a reading name"),
        ("v('a', '-1m')", 10, "too many arguments"),
        ("v() > 1", 5, "needs 'name'"),
        ("v(3)", 5, "not a reading name"),
        ("v('a', since='5m')", 16, "starts in the future: write since='-5m'"),
        ("v('a', since='5 minutes')", 16, "not a duration"),
        ("v('a', since='-5m', since='-6m')", 23, "given twice"),
        ("v(since='-5m', 'a')", 18, "positional argument follows a keyword"),
        ("v('a', sensor=3)", 17, "meta values are quoted strings"),
        ("v('a', last=1)", 15, "is not True or False"),
        ("v('a', since=time('hour'))", 16, "is a literal"),
        ("rate('a', window='-1m')", 20, "is a length"),
        ("time('fortnight') > 1", 8, "unknown time unit"),
        ("cronjob('p', '* * *')", 16, "has 3 fields"),
        ("cronjob('p', '61 * * * *')", 16, "not valid"),
        ("cronjob('p', '0 0 31 2 *')", 16, "never fires"),
        ("after('p', since=1.5)", 20, "whole number of seconds"),
        ("after('p', since=-5)", 20, "whole number of seconds"),
        ("avg('env.t', '5m') > 1", 7, "not a name: avg(v('env.t', since='-5m'))"),
        ("any(3 > 1)", 7, "any() takes the values of a window, not a bool"),
        ("sum() > 1", 7, "sum() needs values"),
        ("sum(v('a'), v('b')) > 1", 15, "takes one argument"),
        ("avg(x=v('a')) > 1", 7, "takes no keyword arguments"),
        ("max(v('a'), 3) > 1", 7, "max() of several arguments takes numbers"),
        ("eval('1')", 3, "unknown function 'eval'"),
        ("__import__('os')", 3, "unknown function"),
        ("v", 4, "expected '('"),
        ("(1 > 2", 9, "to close the '('"),
        ("1 > ", 7, "expected a value"),
        ("1 2", 5, "unexpected '2'"),
        ("any(v('a') = 1)", 14, "'=' assigns"),
        ("'open", 3, "string is not closed"),
        ("'a\\q'", 5, "unknown escape"),
        ("1 $ 2", 5, "unexpected character '$'"),
        ("3abc", 4, "after the number"),
        ("1e999", 3, "too large"),
        ("and", 3, "expected a value"),
        ("sum(rate('env.raingauge.total_acc', since=\"-1h\") > 3.", 56, "or ')' to close it"),
        ('after("program_A" since="program_B")', 21, "expected ','"),
    ],
)
def test_bad_conditions_say_where(condition: str, position: int, words: str) -> None:
    text = "p: " + condition
    with pytest.raises(RuleSyntaxError) as caught:
        parse_rule(text)
    assert caught.value.position == position, str(caught.value)
    assert words in str(caught.value)


def test_what_parses_but_cannot_fire_or_is_hivebuss_own_is_warned_about() -> None:
    assert parse_rule("schedule(p): any(v('x') > 3) and time('hour') == 2").warnings == ()
    (bare,) = parse_rule("schedule(p): v('x') > 3").warnings
    assert "gives the values of a window, not True or False" in bare and "any(...)" in bare
    (number,) = parse_rule("schedule(p): avg(v('x'))").warnings
    assert "gives a number" in number
    (truth,) = parse_rule("schedule(p): v('x') > 3 and cronjob('p', '* * * * *')").warnings
    assert "truth of the window at position 13" in truth
    assert "hivebus's spelling" in parse_rule("schedule(p): true").warnings[0]
    assert "Sage's checker has len()" in parse_rule("schedule(p): count(v('x')) > 1").warnings[0]
    assert "hivebus's" in parse_rule("schedule(p): time('weekday') == 1").warnings[0]


def test_nesting_and_length_are_bounded() -> None:
    with pytest.raises(RuleSyntaxError, match="nests deeper"):
        parse_rule("p: " + "(" * 200 + "1" + ")" * 200)
    with pytest.raises(RuleSyntaxError, match="nests deeper"):
        parse_rule("p: " + "not " * 200 + "1")
    with pytest.raises(RuleSyntaxError, match="at most"):
        parse_rule("p: " + " or ".join(["1"] * 2000))
    assert parse_rule("p: " + "(" * 20 + "True" + ")" * 20).evaluate(MemoryContext())


# --- evaluation: windows ------------------------------------------------------------------------


def test_v_gives_the_values_of_the_last_minute_by_default_and_since_widens_it() -> None:
    ctx = ctx_with({"env.temperature": [(100, 15.1), (30, 23.1), (1, 36.5)]})
    rule = parse_rule("p: v('env.temperature')")
    assert rule.outcome(ctx).value == Window((23.1, 36.5))
    assert fires("p: avg(v('env.temperature')) > 29", ctx)
    assert not fires("p: avg(v('env.temperature', since='-2m')) > 29", ctx)
    assert fires("p: any(v('env.temperature') > 35) and not all(v('env.temperature') > 35)", ctx)
    assert fires("p: len(v('env.temperature', since='-2m')) == 3", ctx)
    assert fires("p: max(v('env.temperature', last=True)) == 36.5", ctx)
    assert fires("p: min(v('env.temperature')) == 23.1 and sum(v('env.temperature')) == 59.6", ctx)


def test_meta_filters_pick_the_sensor() -> None:
    ctx = ctx_with(
        {
            "env.temperature": [
                (100, 15.1, {"sensor": "bme680"}),
                (1, 23.1, {"sensor": "bme680"}),
                (0, 41.2, {"sensor": "bme280"}),
            ]
        }
    )
    assert fires("p: avg(v('env.temperature', sensor='bme680')) > 23", ctx)
    assert not fires("p: avg(v('env.temperature', sensor='bme680', since='-2m')) > 23", ctx)
    assert not fires("p: any(v('env.temperature', sensor='sht31') > 0)", ctx)


def test_comparisons_and_arithmetic_apply_to_every_value() -> None:
    ctx = ctx_with({"a.b": [(20, 4), (10, 6)], "c.d": [(5, 1), (4, 2)], "mode": [(1, "storm")]})
    assert parse_rule("p: v('a.b') * 2 - 1 > 8").outcome(ctx).value == Window((False, True))
    assert fires("p: all(v('a.b') - v('c.d') >= 3)", ctx)
    assert fires("p: any(v('mode') == 'storm') and not any(v('mode') == 3)", ctx)
    assert fires("p: sum(abs(-v('a.b'))) == 10", ctx)


def test_a_condition_that_gives_no_truth_value_or_fails_does_not_fire_and_says_why() -> None:
    ctx = ctx_with({"x": [(20, 4.0), (10, 6.0)], "one": [(1, 5.0)], "mode": [(1, "wet")]})
    several = parse_rule("p: v('x') > 3 and True").outcome(ctx)
    assert not several.fired and "truth of 2 values is ambiguous" in str(several.problem)
    assert fires("p: v('one') > 3 and True", ctx)  # one value: its truth, as in numpy
    window = parse_rule("p: v('one') > 3").outcome(ctx)
    assert not window.fired and window.value == Window((True,))
    assert "not True or False" in str(window.problem)
    assert (
        not fires("p: 1", ctx) and not fires("p: True and 1", ctx) and fires("p: 1 and True", ctx)
    )
    missing = parse_rule("p: not any(v('nothing') > 1)").outcome(ctx)
    assert not missing.fired and "no data for 'nothing'" in str(missing.problem)
    assert fires("p: True or any(v('nothing') > 1)", ctx)  # short-circuits, as in Python
    assert not fires("p: any(v('x') / 0 > 0)", ctx)
    assert not fires("p: any(v('mode') > 3)", ctx)
    assert not fires("p: any(v('x') > v('one'))", ctx)  # windows of different lengths


def test_rate_is_the_mean_increase_per_unit_in_each_window() -> None:
    # +1 per 30 s, then a drop (counts for nothing), then +3 in 30 s
    ctx = ctx_with({"rain": [(150, 1.0), (120, 2.0), (90, 3.0), (60, 0.5), (30, 3.5)]})
    rates = parse_rule("p: rate('rain', since='-3m', window='1m', unit='1m')").outcome(ctx).value
    # by the later value's minute: 11:58 (+1 and +1 in 30 s each), 11:59 (the drop; +3 in 30 s)
    assert rates == Window((2.0, 6.0))
    assert fires("p: any(rate('rain', since='-3m', window='1m', unit='1m') > 5)", ctx)
    assert not fires("p: any(rate('rain', since='-3m', window='1m') > 1)", ctx)  # per second
    assert not fires("p: any(rate('rain', since='-10s') > 0)", ctx)  # fewer than two values


# --- evaluation: clock and runs -----------------------------------------------------------------


def test_time_parts_are_utc() -> None:
    ctx = MemoryContext(now=datetime(2024, 6, 1, 14, 30, tzinfo=UTC))  # a Saturday
    assert fires("p: time('hour') == 14 and time('minute') == 30", ctx)
    assert fires("p: time('weekday') == 5 and time('month') == 6", ctx)
    assert fires("p: time('dayofyear') == 153 and time('year') == 2024", ctx)


def test_cronjob_holds_for_a_minute_after_its_fire_unless_the_program_ran_in_it() -> None:
    rule = parse_rule("schedule(bme680): cronjob('bme680', '*/5 * * * *')")
    ctx = MemoryContext(now=T0 + timedelta(seconds=10))  # 12:00:10, the 12:00 fire just passed
    assert rule.evaluate(ctx)
    ctx.record_run("bme680", T0 + timedelta(seconds=12))
    ctx.set_now(T0 + timedelta(seconds=40))
    assert not rule.evaluate(ctx)  # it ran in this minute
    ctx.set_now(T0 + timedelta(seconds=70))
    assert not rule.evaluate(ctx)  # a minute after the fire
    ctx.set_now(T0 + timedelta(minutes=5, seconds=1))
    assert rule.evaluate(ctx)
    empty = parse_rule("schedule(p): cronjob('', '0 * * * *')")
    assert empty.evaluate(MemoryContext(now=T0 + timedelta(seconds=59)))
    seconds = parse_rule('schedule(p): cronjob("p", "*/2 * * * * *")')  # seconds last
    assert seconds.evaluate(MemoryContext(now=T0 + timedelta(seconds=3)))
    assert not seconds.evaluate(MemoryContext(now=T0 + timedelta(seconds=119.5)))  # odd minute


def test_after_asks_whether_a_plugin_has_run() -> None:
    ctx = MemoryContext(now=T0)
    ctx.record_run("yourplugin", T0 - timedelta(minutes=1))
    ctx.record_run("myplugin", T0 - timedelta(minutes=2))
    assert not fires("p: after('notmyplugin')", ctx)
    assert fires("p: after('myplugin') and after('myplugin', since='notmyplugin')", ctx)
    assert fires("p: after('yourplugin', since='myplugin')", ctx)
    assert not fires("p: after('myplugin', since='yourplugin')", ctx)
    assert fires("p: after('myplugin', since=119)", ctx)
    assert not fires("p: after('myplugin', since=121)", ctx)


def test_cron_helpers() -> None:
    assert cron_period_seconds("*/5 * * * *") == 300
    assert cron_period_seconds("0 9,17 * * *") == 8 * 3600
    assert cron_period_seconds("@hourly") == 3600
    assert cron_period_seconds("* * * * * *") == 60  # at most once a minute, whatever the seconds
    assert cron_problem("*/5 * * * *") is None and cron_problem("*/2 * * * * *") is None
    assert cron_problem("1/10 * * * *") is None and cron_problem("01-59/5 * * * *") is None
    assert "has 7 fields" in str(cron_problem("* * * * * * *"))
    assert last_fire("0 * * * *", T0) == T0
    assert last_fire("0 * * * *", T0 - timedelta(seconds=1)) == T0 - timedelta(hours=1)
    assert not cron_due("0 * * * *", T0, T0)
    assert cron_due("0 * * * *", T0 - timedelta(minutes=1), T0)


def test_durations() -> None:
    assert parse_duration("5m") == 300
    assert parse_duration("-1h30m") == 5400
    assert parse_duration("1d") == 86400
    for bad in ("", "5", "m", "5 m", "-", "0s", "99999w"):
        with pytest.raises(ValueError):
            parse_duration(bad)
