"""Science rules: a small, safe language for when plugins run and what a node reports.

    schedule(bme680): cronjob('bme680', '*/5 * * * *')
    schedule(detector): v('env.raingauge.uint') > 3 and time('hour') >= 6
    publish(heat.alert): avg('env.temperature', '10m') > 35
    set(mode, value='storm'): rate('env.pressure', '1h') < -0.5
    water-detector: v('env.raingauge.uint') > 3          (older form: schedule)

``parse_rule`` checks everything that can be checked without data (syntax, functions and their
arguments, cron expressions, windows) and raises ``RuleSyntaxError`` with the position;
``Rule.evaluate(ctx)`` runs on the hub (dry-runs) and on nodes (offline) alike. No ``eval``.
"""

from hivebus.errors import RuleSyntaxError
from hivebus.rules.context import MemoryContext, RuleContext
from hivebus.rules.cron import cron_due, cron_period_seconds, cron_problem, next_fire
from hivebus.rules.durations import parse_duration
from hivebus.rules.functions import FUNCTIONS, TIME_UNITS
from hivebus.rules.parser import MAX_DEPTH, MAX_RULE_LENGTH, parse_rule
from hivebus.rules.syntax import Action, Publish, Rule, Schedule, Set

__all__ = [
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_RULE_LENGTH",
    "TIME_UNITS",
    "Action",
    "MemoryContext",
    "Publish",
    "Rule",
    "RuleContext",
    "RuleSyntaxError",
    "Schedule",
    "Set",
    "cron_due",
    "cron_period_seconds",
    "cron_problem",
    "next_fire",
    "parse_duration",
    "parse_rule",
]
