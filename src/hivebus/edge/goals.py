"""A goal as the node holds it: the ``ses.goal.assigned`` event plus its parsed rules.

What runs when:
- a plugin named by a ``schedule(<plugin>)`` rule (or the older ``<plugin>: <condition>``)
  runs whenever its condition holds at an evaluation round (every second), unless a run of
  it is still going: ``schedule(p): cronjob('p', '*/5 * * * *')`` every five minutes,
  ``schedule(p): true`` back to back;
- a plugin no schedule rule names runs continuously: started when the goal arrives and
  started again when it exits (after a back-off that grows while runs keep failing fast);
- ``publish(<name>)`` sends a ``trigger.fired`` from the edge and a ``readings.<name>`` on the
  node-local bus when its condition *becomes* true (not again until it was false);
- ``set(<key>, value=<v>)`` sets a node-local variable when its condition becomes true; later
  runs of the job's plugins see it as ``HIVEBUS_VAR_<KEY>`` in their environment.
"""

from __future__ import annotations

from dataclasses import dataclass

from hivebus.errors import RuleSyntaxError
from hivebus.rules import Rule, Schedule, parse_rule
from hivebus.schemas.envelope import Event
from hivebus.schemas.ses import GoalAssigned, GoalPlugin


@dataclass(frozen=True)
class Goal:
    event: Event
    rules: tuple[Rule, ...]

    @classmethod
    def of(cls, event: Event) -> Goal:
        """Parse the goal's rules; ``RuleSyntaxError`` names the rule that does not parse, and
        a rule scheduling a plugin the goal does not have is refused the same way."""
        goal: GoalAssigned = event.data
        plugins = {p.name for p in goal.plugins}
        rules = []
        for text in goal.science_rules:
            rule = parse_rule(text)
            if isinstance(rule.action, Schedule) and rule.action.plugin not in plugins:
                raise RuleSyntaxError(
                    text,
                    0,
                    f"schedules {rule.action.plugin!r}, which is not a plugin of job {goal.job_id!r}",
                )
            rules.append(rule)
        return cls(event, tuple(rules))

    @property
    def job_id(self) -> str:
        return str(self.event.data.job_id)

    @property
    def plugins(self) -> list[GoalPlugin]:
        return list(self.event.data.plugins)

    def plugin(self, name: str) -> GoalPlugin | None:
        return next((p for p in self.plugins if p.name == name), None)

    @property
    def continuous(self) -> list[GoalPlugin]:
        """Plugins that no schedule rule names: they run all the time."""
        scheduled = {r.action.plugin for r in self.rules if isinstance(r.action, Schedule)}
        return [p for p in self.plugins if p.name not in scheduled]

    def windows_seconds(self) -> float:
        """The longest window any rule reads (``v``/``rate``'s ``since``), for the readings kept."""
        return max((seconds for rule in self.rules for _, seconds in rule.windows), default=0.0)

    def watched_names(self) -> set[str]:
        """Reading names whose recent values a rule reads."""
        return {name for rule in self.rules for name in rule.reading_names}
