"""Science rules: a small, safe language for when plugins run and what a node reports.

    schedule(bme680): cronjob('bme680', '*/5 * * * *')
    schedule(detector, duration=5m): any(v('env.raingauge.uint', since='-10m') > 3)
    publish(env.event.heat, to=cloud): avg(v('env.temperature', sensor='bme680')) > 35
    set(rainy, value=1): any(rate('env.raingauge.total_acc', since='-1h', window='10m', unit='1h') > 3)
    schedule(b): after('a', since='b')

Rules are Sage's: ``<action>(<object>, <key>=<value>...): <condition>``, the condition the
subset of Python that Sage's node checker evaluates, with its meaning (``v()`` gives the
values of a window, comparisons apply to each, ``any``/``all``/``sum``/``avg``/``min``/
``max``/``len`` reduce them, and only a True condition fires). See docs/rules.md.

``parse_rule`` checks everything that can be checked without data (syntax, functions and their
arguments, cron expressions, windows, what kind of value each part gives) and raises
``RuleSyntaxError`` with the position; what parses but will not do what it seems is in
``Rule.warnings``. ``Rule.evaluate(ctx)`` / ``Rule.outcome(ctx)`` run on the hub (dry-runs,
``MemoryContext``) and on nodes (offline, over their own readings) alike. No ``eval``.
"""

from hivebus.errors import RuleSyntaxError
from hivebus.rules.context import MemoryContext, Point, RuleContext
from hivebus.rules.cron import (
    cron_due,
    cron_period_seconds,
    cron_problem,
    last_fire,
    next_fire,
    slot_open,
)
from hivebus.rules.durations import parse_duration
from hivebus.rules.evaluate import Outcome
from hivebus.rules.functions import FUNCTIONS, TIME_UNITS
from hivebus.rules.parser import MAX_DEPTH, MAX_RULE_LENGTH, parse_rule
from hivebus.rules.syntax import Action, Publish, Rule, Schedule, Set
from hivebus.rules.values import Window

__all__ = [
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_RULE_LENGTH",
    "TIME_UNITS",
    "Action",
    "MemoryContext",
    "Outcome",
    "Point",
    "Publish",
    "Rule",
    "RuleContext",
    "RuleSyntaxError",
    "Schedule",
    "Set",
    "Window",
    "cron_due",
    "cron_period_seconds",
    "cron_problem",
    "last_fire",
    "next_fire",
    "parse_duration",
    "parse_rule",
    "slot_open",
]
