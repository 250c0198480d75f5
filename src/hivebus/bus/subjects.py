"""Subjects: where each event travels, and how keys become subject tokens.

| route   | subject                         | who publishes                      |
|---------|---------------------------------|------------------------------------|
| evt     | ``evt.<type>.<key>``            | the hub: users, handlers           |
| toedge  | ``toedge.<node>.<type>``        | the hub, for one node              |
| fromedge| ``fromedge.<node>.<type>``      | a node (``source`` = ``node/<id>``)|
| data    | ``data.<node>.<reading name>``  | a node                             |

Subjects carry the node id so NATS permissions can confine a node to its own subjects.
A key may contain characters a subject token cannot (``.``, ``*``, ``>``, white space); they
are percent-encoded, reversibly, into one token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from hivebus.errors import SchemaError
from hivebus.schemas.envelope import Event

Route = Literal["evt", "toedge", "fromedge", "data"]

EVENTS_SUBJECTS = ("evt.>", "toedge.>", "fromedge.>")
DATA_SUBJECTS = ("data.>",)
DLQ_SUBJECTS = ("dlq.>",)

_UNSAFE = re.compile(r"[%.*>\s\x00-\x1f\x7f]")
_ESCAPES = re.compile(r"(?:%[0-9A-F]{2})+")


def encode_token(key: str) -> str:
    """One subject token for ``key``; ``decode_token`` gives the key back."""
    if not key:
        raise SchemaError("an empty key cannot be a subject token")
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), key)


def decode_token(token: str) -> str:
    return _ESCAPES.sub(lambda m: bytes.fromhex(m.group().replace("%", "")).decode("utf-8", "replace"), token)


def subject_for(event: Event) -> str:
    """The subject ``event`` is published on.

    Events a node emits (``source`` = ``node/<id>``) go from-edge (readings to ``data.``);
    hub events whose payload is addressed to a node go to-edge; the rest go on ``evt.``.
    """
    node = event.node
    route = type(event.data).route
    if node is not None:
        if route == "data":
            return f"data.{encode_token(node)}.{event.data.name}"
        return f"fromedge.{encode_token(node)}.{event.type}"
    if route == "toedge":
        return f"toedge.{encode_token(event.data.node)}.{event.type}"
    if route == "data":
        raise SchemaError(f"{event.type} is node data: its source must be node/<id>, not {event.source!r}")
    return f"evt.{event.type}.{encode_token(event.subject)}"


@dataclass(frozen=True)
class SubjectParts:
    route: Route
    node: str | None = None
    type: str | None = None  # event type (evt/toedge/fromedge)
    key: str | None = None  # aggregate key (evt) or reading name (data)


def parse_subject(subject: str) -> SubjectParts:
    """The inverse of ``subject_for``; raises ``SchemaError`` for a subject hivebus does not use."""
    head, _, rest = subject.partition(".")
    if head == "evt":
        type_, _, key = rest.rpartition(".")
        if type_ and key:
            return SubjectParts("evt", type=type_, key=decode_token(key))
    elif head in ("toedge", "fromedge"):
        node, _, type_ = rest.partition(".")
        if node and type_:
            return SubjectParts(head, node=decode_token(node), type=type_)  # type: ignore[arg-type]
    elif head == "data":
        node, _, name = rest.partition(".")
        if node and name:
            return SubjectParts("data", node=decode_token(node), key=name)
    raise SchemaError(f"{subject!r} is not a hivebus subject")


def toedge_filter(node: str) -> str:
    return f"toedge.{encode_token(node)}.>"


def fromedge_filter(node: str = "*") -> str:
    return f"fromedge.{node if node == '*' else encode_token(node)}.>"


def data_filter(node: str = "*", name: str = ">") -> str:
    return f"data.{node if node == '*' else encode_token(node)}.{name}"


def evt_filter(type_glob: str = ">", key: str | None = None) -> str:
    """``evt.ecr.>`` style filters; with ``key``, the events of one aggregate of one type."""
    if key is None:
        return f"evt.{type_glob}"
    return f"evt.{type_glob}.{encode_token(key)}"


def dlq_subject(stream: str, consumer: str) -> str:
    """Where ``consumer``'s dead letters of ``stream`` go: one subject per letter below it
    (``dlq_letter_subject``); older logs hold letters on this subject itself."""
    return f"dlq.{encode_token(stream)}.{encode_token(consumer)}"


def dlq_letter_subject(stream: str, consumer: str, seq: int, index: int | None = None) -> str:
    """The one subject of the dead letter of message ``seq`` (or of its reading ``index``):
    a letter's own subject lets the stream refuse it a second time, whenever it comes."""
    return f"{dlq_subject(stream, consumer)}.{seq}" + ("" if index is None else f".{index}")


def dlq_filters(stream: str, consumer: str) -> list[str]:
    """Every dead letter of ``consumer`` on ``stream``, old logs' and new."""
    return [dlq_subject(stream, consumer), f"{dlq_subject(stream, consumer)}.>"]
