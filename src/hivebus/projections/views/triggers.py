"""``triggers``: every science-rule ``publish`` action a node fired (``trigger.fired``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from hivebus.projections.views.base import (
    EVENTS,
    AppendView,
    Item,
    Row,
    Table,
    number_and_text,
    utc,
)

TRIGGER_FIRED = "trigger.fired"


class TriggersView(AppendView):
    name = "triggers"
    version = 1
    stream = EVENTS
    public = ("triggers",)
    table: ClassVar[Table] = Table(
        "triggers",
        """CREATE TABLE {name} (
            seq BIGINT NOT NULL,
            id VARCHAR NOT NULL,
            fired_at TIMESTAMP NOT NULL,
            node VARCHAR NOT NULL,
            job_id VARCHAR NOT NULL,
            rule VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            value DOUBLE,
            value_text VARCHAR,
            received_at TIMESTAMP NOT NULL
        )""",
    )

    def rows(self, item: Item) -> Iterable[Row]:
        event = item.event
        if event.type != TRIGGER_FIRED:
            return
        fired = event.data
        value, text = number_and_text(fired.value)
        yield {
            "seq": item.seq,
            "id": event.id,
            "fired_at": utc(fired.time),
            "node": fired.node,
            "job_id": fired.job_id,
            "rule": fired.rule,
            "name": fired.name,
            "value": value,
            "value_text": text,
            "received_at": utc(event.time),
        }
