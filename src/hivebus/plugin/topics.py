"""pywaggle's topics on the node-local bus: AMQP topic rules mapped onto NATS subjects.

A topic is matched as RabbitMQ's topic exchange matches a binding key: parts split on ``.``,
``*`` is exactly one part, ``#`` any number of parts including none (``env.#`` matches
``env``). pywaggle passes topics to RabbitMQ unchecked, so a topic no reading name can match
(``Env.T``, ``""``) is accepted here too and simply delivers nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from hivebus.plugin.checks import NAME_PART, decode_value

READINGS_PREFIX: Final = "readings."


class Message(NamedTuple):
    """A reading received by ``get()``; the fields of pywaggle's ``wagglemsg.Message``."""

    name: str
    value: Any
    timestamp: int
    meta: dict[str, str]


def topic_matcher(topic: str) -> Callable[[str], bool]:
    """``name -> bool`` for a pywaggle topic: ``*`` is one part, ``#`` any number (or none)."""
    pattern = _topic_parts(topic)
    if not can_match(topic):
        return lambda name: False

    def matches(pat: tuple[str, ...], name: tuple[str, ...]) -> bool:
        if not pat:
            return not name
        head, rest = pat[0], pat[1:]
        if head == "#":
            return any(matches(rest, name[i:]) for i in range(len(name) + 1))
        return bool(name) and head in ("*", name[0]) and matches(rest, name[1:])

    return lambda name: matches(pattern, tuple(name.split(".")))


def topic_subjects(*topics: str) -> list[str]:
    """The local-bus subjects to subscribe so that every reading ``topics`` match arrives.

    ``*`` maps to ``*``, ``#`` to ``>``; but NATS orders messages only within one
    subscription (pywaggle's one AMQP queue kept them in order), and ``>`` is one or more
    parts, only last. So the topics share one subscription on their common prefix (plus the
    prefix itself when a ``#`` may match zero parts) and the matchers filter:
    ``env.temperature, env.relative_humidity`` -> ``readings.env.>``; ``env.#`` ->
    ``readings.env``, ``readings.env.>``; one exact name -> that name.
    """
    topics = tuple(t for t in topics if can_match(t))
    if not topics:
        return []
    parts = [_topic_parts(t) for t in topics]
    wildcard_free = not any({"*", "#"} & set(p) for p in parts)
    if wildcard_free and len(set(topics)) == 1:
        return [READINGS_PREFIX + topics[0]]
    literal = [p[: next((i for i, x in enumerate(p) if x in ("*", "#")), len(p))] for p in parts]
    common: list[str] = []
    for column in zip(*literal, strict=False):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    if not common:
        return [READINGS_PREFIX + ">"]
    head = READINGS_PREFIX + ".".join(common)
    subjects = [head] if any(topic_matcher(t)(".".join(common)) for t in topics) else []
    lengths = {len(p) for p in parts}
    if any("#" in p for p in parts) or len(lengths) > 1:
        subjects.append(head + ".>")
    elif (n := lengths.pop()) > len(common):
        subjects.append(head + ".*" * (n - len(common)))
    return subjects


def subject_covers(pattern: str, subject: str) -> bool:
    """Whether NATS subject ``pattern`` (with ``*`` / ``>``) matches ``subject``."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or token not in ("*", have[i]):
            return False
    return len(have) == len(want)


def _topic_parts(topic: object) -> tuple[str, ...]:
    if not isinstance(topic, str):
        raise TypeError(f"topic must be a string: {topic!r}")
    return tuple(topic.split("."))


def can_match(topic: str) -> bool:
    """False for a topic no reading name can match (pywaggle takes it and delivers nothing)."""
    return all(part in ("*", "#") or NAME_PART.match(part) for part in _topic_parts(topic))


def message_of(body: bytes) -> Message | None:
    """A ``Message`` from a ``readings.<name>`` body; None if it is not a reading.

    What hivebus encoded on the way in (bytes, a bool, NaN, the infinities) comes back as the
    plugin published it, with the ``enc`` marker removed, as wagglemsg decodes bytes.
    """
    try:
        data = json.loads(body)
        name, value, timestamp = data["name"], data["value"], data["timestamp"]
        meta = dict(data.get("meta") or {})
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    value, decoded = decode_value(value, meta)
    if decoded:
        del meta["enc"]
    return Message(name=name, value=value, timestamp=timestamp, meta=meta)
