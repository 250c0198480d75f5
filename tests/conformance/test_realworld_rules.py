"""Real science rules, as Sage's own people wrote them, read and evaluated as Sage does.

``../shared/realworld/expected.yaml`` (beside the repository; not part of it) gives, for 85
rules from the scheduler's and the node checker's tests and docs and from real job files,
what the real system does: whether the cloud scheduler parses the rule and the node checker
can evaluate it (``real``), the scheduler's reading of the action (``parsed``), and for some
the condition's value in a stated situation (``evaluates`` + ``context``). Every rule goes
through hivebus's parser; where a value is stated, the situation is built twice -- as the hub
evaluates (``MemoryContext``) and as a node does (``RecentReadings`` + ``TickContext``) --
and both must give Sage's value.

Deliberate differences (``DELIBERATE``) are the only cases where hivebus's verdict may differ.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from hivebus.edge.recent import RecentReadings, TickContext
from hivebus.errors import RuleSyntaxError
from hivebus.rules import MemoryContext, Rule, parse_rule

REALWORLD = Path(__file__).resolve().parents[2].parent / "shared" / "realworld"
EXPECTED = REALWORLD / "expected.yaml"
ABSENT = (
    f"{EXPECTED} is absent: the real Sage rules live beside the repository "
    "(../shared/realworld/), not in it, and this clone has no copy"
)
DEFAULT_NOW = datetime.fromisoformat("2021-01-01T10:05:30+00:00")
NS = 1_000_000_000

LEGACY_FORM = (
    "the older '<plugin>: <condition>' form (in 23 of the scheduler's own example jobs): Sage's "
    "scheduler now refuses it; hivebus reads it as schedule(<plugin>): <condition> and warns "
    "with that form, so old job files keep working -- when the name is a bare plugin name and "
    "the condition is one hivebus reads"
)
DELIBERATE: dict[str, str] = {"legacy form": LEGACY_FORM}


def rule_cases() -> list[dict[str, Any]]:
    if not EXPECTED.is_file():
        return []
    return list(yaml.safe_load(EXPECTED.read_text())["rules"])


CASES = rule_cases()
pytestmark = pytest.mark.skipif(not CASES, reason=ABSENT)


def ids(cases: list[dict[str, Any]]) -> list[str]:
    return [case["id"] for case in cases]


def parsed_or_refused(text: str) -> Rule | RuleSyntaxError:
    try:
        return parse_rule(text)
    except RuleSyntaxError as exc:
        return exc


def difference(case: dict[str, Any], rule: Rule | RuleSyntaxError) -> str | None:
    """Which deliberate difference explains hivebus's verdict differing from Sage's (None:
    they do not differ). Fails when nothing explains it."""
    accepted = isinstance(rule, Rule)
    if accepted == (case["real"] == "accept"):
        return None
    assert isinstance(rule, Rule), f"hivebus refuses what Sage takes: {rule}"
    assert rule.legacy, f"hivebus takes what Sage refuses ({case['reason']})"
    assert rule.warnings and f"schedule({rule.plugin}): " in rule.warnings[0], rule.warnings
    return "legacy form"


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_hivebus_takes_what_sage_takes_and_refuses_what_it_refuses(case: dict[str, Any]) -> None:
    rule = parsed_or_refused(case["rule"])
    explained = difference(case, rule)
    assert explained is None or explained in DELIBERATE
    if isinstance(rule, RuleSyntaxError):
        assert rule.position <= len(case["rule"]) and str(rule).startswith("bad science rule")


WITH_PARSE = [case for case in CASES if "parsed" in case]


@pytest.mark.parametrize("case", WITH_PARSE, ids=ids(WITH_PARSE))
def test_the_action_reads_as_sages_scheduler_reads_it(case: dict[str, Any]) -> None:
    rule = parse_rule(case["rule"])
    expected = case["parsed"]
    assert (rule.action.kind, rule.object, rule.params) == (
        expected["action"],
        expected["object"],
        {key: str(value) for key, value in (expected.get("params") or {}).items()},
    )


WITH_VALUE = [case for case in CASES if "evaluates" in case]


def hub_context(rule: Rule, situation: dict[str, Any]) -> MemoryContext:
    now = _now(situation)
    ctx = MemoryContext(now=now)
    for reading in situation.get("readings") or []:
        ctx.add(reading["name"], reading["value"], _at(now, reading["age_s"]), reading.get("meta"))
    for plugin, seconds in (situation.get("last_runs") or {}).items():
        ctx.record_run(plugin, now - timedelta(seconds=seconds))
    return ctx


def edge_context(rule: Rule, situation: dict[str, Any]) -> TickContext:
    now = _now(situation)
    recent = RecentReadings()
    recent.watch(rule.reading_names, max((s for _, s in rule.windows), default=0.0) + 60)
    for reading in situation.get("readings") or []:
        recent.add(
            reading["name"], reading["value"], _at(now, reading["age_s"]), reading.get("meta")
        )
    runs = {p: now - timedelta(seconds=s) for p, s in (situation.get("last_runs") or {}).items()}
    return TickContext(recent, now, runs)


def _now(situation: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(situation["now"]) if "now" in situation else DEFAULT_NOW


def _at(now: datetime, age_s: float) -> int:
    return int(now.timestamp() * NS) - int(age_s * NS)


@pytest.mark.parametrize("case", WITH_VALUE, ids=ids(WITH_VALUE))
def test_the_condition_has_sages_value_on_the_hub_and_on_the_edge(case: dict[str, Any]) -> None:
    rule = parse_rule(case["rule"])
    situation = case.get("context") or {}
    hub = rule.outcome(hub_context(rule, situation))
    edge = rule.outcome(edge_context(rule, situation))
    assert hub == edge, (hub, edge)
    assert hub.fired is case["evaluates"], (case.get("given"), hub)
    assert hub.problem is None, hub.problem  # a stated value, not a failure to evaluate


LEGACY = [
    case
    for case in CASES
    if isinstance(rule := parsed_or_refused(case["rule"]), Rule) and rule.legacy
]


@pytest.mark.parametrize("case", LEGACY, ids=ids(LEGACY))
def test_an_older_form_rule_warns_with_the_modern_form_which_means_the_same(
    case: dict[str, Any],
) -> None:
    rule = parse_rule(case["rule"])
    modern = parse_rule(rule.modern)
    assert not modern.legacy and modern.text.startswith(f"schedule({rule.plugin}): ")
    assert modern.action == rule.action and modern.cronjobs == rule.cronjobs
    assert modern.reading_names == rule.reading_names
    assert len(modern.warnings) == len(rule.warnings) - 1  # the same, less the older-form one
