"""``events``: the raw control-plane log, one row per event of the EVENTS stream.

The payload is kept as JSON in its current version (upcast at decode), so users can reach
any field with DuckDB's JSON functions: ``data->>'$.bundle_id'``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from hivebus.projections.views.base import EVENTS, AppendView, Item, Row, Table, bigint, utc


class EventsView(AppendView):
    name = "events"
    version = 1
    stream = EVENTS
    public = ("events",)
    table: ClassVar[Table] = Table(
        "events",
        """CREATE TABLE {name} (
            seq BIGINT NOT NULL,
            id VARCHAR NOT NULL,
            type VARCHAR NOT NULL,
            dataversion INTEGER NOT NULL,
            source VARCHAR NOT NULL,
            subject VARCHAR NOT NULL,
            time TIMESTAMP NOT NULL,
            correlationid VARCHAR,
            causationid VARCHAR,
            node VARCHAR,
            nodeseq BIGINT,
            nats_subject VARCHAR NOT NULL,
            data JSON
        )""",
    )

    def rows(self, item: Item) -> Iterable[Row]:
        event = item.event
        yield {
            "seq": item.seq,
            "id": event.id,
            "type": event.type,
            "dataversion": event.dataversion,
            "source": event.source,
            "subject": event.subject,
            "time": utc(event.time),
            "correlationid": event.correlationid,
            "causationid": event.causationid,
            "node": event.node,
            "nodeseq": bigint(event.nodeseq, "nodeseq"),
            "nats_subject": item.subject,
            "data": event.data.model_dump_json(),
        }
