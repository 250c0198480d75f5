"""``dead_letters``: what a consumer (the projector, a handler, an edge agent) could not use.

Built from the DEADLETTERS stream, so every consumer's dead letters appear here, with the
reason and the raw payload. One row per (stream, seq, consumer, batch_index): a dead letter
published twice (after a crash, beyond the duplicate window) is recorded once. ``batch_index``
is NULL for a whole message; for one bad reading of a packed DATA message (issue 18) it is the
reading's place in the message, ``payload`` that reading's bytes, and each bad reading of the
message has its row.
"""

from __future__ import annotations

import base64
import binascii
from typing import ClassVar

from hivebus.projections.views.base import DEADLETTERS, FoldView, Item, Row, Scope, Table, utc


class DeadLettersView(FoldView):
    name = "dead_letters"
    version = 2  # 2: batch_index, a row per bad reading of a packed message
    stream = DEADLETTERS
    public = ("dead_letters",)
    scope_columns = ("stream", "seq", "consumer")
    table: ClassVar[Table] = Table(
        "dead_letters",
        """CREATE TABLE {name} (
            stream VARCHAR NOT NULL,
            seq BIGINT NOT NULL,
            subject VARCHAR,
            consumer VARCHAR NOT NULL,
            reason VARCHAR NOT NULL,
            field VARCHAR,
            time TIMESTAMP,
            payload BLOB,
            dlq_subject VARCHAR NOT NULL,
            dlq_seq BIGINT NOT NULL,
            batch_index INTEGER
        )""",
    )

    def scope(self, item: Item) -> Scope:
        letter = item.event
        if letter is None:  # a malformed dead letter is itself recorded, under its own position
            return ("?", -item.seq, _consumer_of(item.subject))
        return (letter.stream, letter.seq, letter.consumer)

    def evolve(self, rows: list[Row], item: Item) -> list[Row] | None:
        letter = item.event
        index = None if letter is None else letter.index
        if any(row.get("batch_index") == index for row in rows):
            return None  # the first letter for a message (or a reading of it) wins
        if letter is None:
            return [
                {
                    "stream": "?",
                    "seq": -item.seq,
                    "subject": None,
                    "consumer": _consumer_of(item.subject),
                    "reason": "malformed dead letter (not a DeadLetter JSON body)",
                    "field": None,
                    "time": None,
                    "payload": item.raw,
                    "dlq_subject": item.subject,
                    "dlq_seq": item.seq,
                    "batch_index": None,
                }
            ]
        return [
            *rows,
            {
                "stream": letter.stream,
                "seq": letter.seq,
                "subject": letter.subject,
                "consumer": letter.consumer,
                "reason": letter.reason,
                "field": letter.field,
                "time": utc(letter.time),
                "payload": _payload(letter.payload_b64),
                "dlq_subject": item.subject,
                "dlq_seq": item.seq,
                "batch_index": index,
            },
        ]


def _consumer_of(subject: str) -> str:
    parts = subject.split(".")
    return parts[2] if len(parts) > 2 else "?"


def _payload(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return text.encode()
