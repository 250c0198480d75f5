"""Fuzz ``codec.decode``, the one door every event comes in through (bus, outbox, replay).

Whatever the bytes, ``decode`` returns an ``Event`` or raises ``DecodeError`` whose ``field``
names the offending field (and the message says it); never any other exception. Mutations
start from valid events of every registered type, change one thing (a value replaced with
junk of another kind, a key dropped, an unknown key added, an envelope attribute broken) and
check that the field reported is the one that was broken. Readings, the hot path, are also
checked against an independent oracle of pywaggle's rules. An event that decodes must encode
again and decode to the same event: what was accepted can be stored and replayed.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

import hivebus.schemas  # noqa: F401 - registers the catalogue
from hivebus.edge.goals import Goal
from hivebus.edge.intake import PUBLISH_PREFIX, Intake
from hivebus.errors import DecodeError, RuleSyntaxError
from hivebus.schemas import codec
from hivebus.schemas.data import MIN_TIMESTAMP_NS
from hivebus.schemas.envelope import Event
from tests.fuzz import fuzz
from tests.unit.test_schemas import STRATEGIES, envelope

TYPES = sorted(STRATEGIES)  # every registered type (tests/unit/test_schemas checks none is missing)
READING_NAME = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*")

# Junk of every JSON kind, with the values that tend to slip through loose checks.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 2**63 - 1, 2**63, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, -0.0, 1e300, 1.7e18]),
    st.text(max_size=30),
    st.sampled_from(["", " ", "x" * 300, "\x00", "\n", "..", "a.b", "2024-05-01T12:00:00Z", "sha256:"]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def decoded_or_error(raw: bytes | str) -> Event | DecodeError:
    """The event, or the DecodeError, after checking the error names a field; anything else
    escapes and fails the test."""
    try:
        decoded = codec.decode(raw)
    except DecodeError as exc:
        assert exc.field, f"DecodeError without a field: {exc}"
        assert repr(exc.field) in str(exc), f"the message does not name the field: {exc}"
        event("refused")
        return exc
    again = codec.encode(decoded)  # what was accepted can be sent and stored again...
    assert codec.decode(again) == decoded  # ...and reads back the same
    event("accepted")
    return decoded


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += paths(value, (*prefix, i))
    return out


def replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy: Any = dict(node) if isinstance(node, dict) else list(node)
    copy[path[0]] = replace(node[path[0]], path[1:], value) if len(path) > 1 else value
    return copy


def delete(node: Any, path: tuple[Any, ...]) -> Any:
    if len(path) == 1:
        return {k: v for k, v in node.items() if k != path[0]}
    copy: Any = dict(node) if isinstance(node, dict) else list(node)
    copy[path[0]] = delete(node[path[0]], path[1:])
    return copy


def dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def related(field: str, path: tuple[Any, ...]) -> bool:
    """The reported field is the broken one, inside it, or its parent object."""
    broken = dotted(path)
    return field == broken or field.startswith(broken + ".") or broken.startswith(field + ".")


def event_objects(type_: str) -> st.SearchStrategy[dict[str, Any]]:
    return STRATEGIES[type_].flatmap(envelope).map(lambda e: json.loads(codec.encode(e)))


# --- arbitrary bytes ------------------------------------------------------------------------

_FRAGMENTS = ['{', '}', '[', ']', ',', ':', '"type"', '"data"', '"data.reading"', '"id"',
              '"time"', '"1.0"', '"specversion"', 'null', 'true', '1e999', '-0', '"\\ud800"',
              '"\\u0000"', '9' * 30, '"', '\\', ' ', 'NaN', 'Infinity']  # fmt: skip


@fuzz(400)
@given(st.binary(max_size=512) | st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map(lambda f: "".join(f).encode()))
@example(b"")
@example(b"\xff\xfe{")
@example(b'{"type": "data.reading", "data": ' * 2000)
def test_any_bytes_decode_or_raise_decode_error(raw: bytes) -> None:
    assert isinstance(decoded_or_error(raw), DecodeError)


@fuzz(200)
@given(st.text(max_size=200))
@example("\ud800")  # a lone surrogate: no UTF-8 form
@example('{"type": "\udcff"}')
def test_any_text_decodes_or_raises_decode_error(text: str) -> None:
    assert isinstance(decoded_or_error(text), DecodeError)


def test_a_body_past_the_size_limit_is_refused_before_parsing() -> None:
    raw = b'{"pad": "' + b"x" * codec.MAX_EVENT_BYTES + b'"}'
    with pytest.raises(DecodeError, match="bytes, more than") as error:
        codec.decode(raw)
    assert error.value.field == "<body>"


# --- structured but wrong: every registered type ----------------------------------------------


@fuzz(150)
@given(type_=st.sampled_from(TYPES), data=st.data())
def test_a_value_replaced_with_junk_is_named(type_: str, data: st.DataObject) -> None:
    obj = data.draw(event_objects(type_))
    path = data.draw(st.sampled_from(paths(obj["data"], ("data",))[1:] or [("data",)]))
    bad = data.draw(junk)
    result = decoded_or_error(json.dumps(replace(obj, path, bad)))
    if isinstance(result, DecodeError):
        assert related(result.field or "", path), (path, bad, str(result))


@fuzz(120)
@given(type_=st.sampled_from(TYPES), data=st.data())
def test_a_dropped_key_is_named(type_: str, data: st.DataObject) -> None:
    obj = data.draw(event_objects(type_))
    keyed = [p for p in paths(obj["data"], ("data",))[1:] if isinstance(p[-1], str)]
    if not keyed:
        return
    path = data.draw(st.sampled_from(keyed))
    result = decoded_or_error(json.dumps(delete(obj, path)))
    if isinstance(result, DecodeError):
        assert related(result.field or "", path), (path, str(result))


@fuzz(120)
@given(type_=st.sampled_from(TYPES), data=st.data())
def test_an_unknown_key_is_named(type_: str, data: st.DataObject) -> None:
    obj = data.draw(event_objects(type_))
    objects = [p for p in paths(obj["data"], ("data",)) if isinstance(_at(obj, p), dict)]
    where = data.draw(st.sampled_from(objects))
    key = data.draw(st.from_regex(r"zz[a-z_]{0,6}", fullmatch=True))
    result = decoded_or_error(json.dumps(replace(obj, (*where, key), data.draw(junk))))
    if isinstance(result, DecodeError):  # free-form maps (meta, metadata, settings) accept any key
        assert related(result.field or "", (*where, key)), (where, key, str(result))


def _at(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


ENVELOPE = ["specversion", "id", "type", "dataversion", "source", "subject", "time",
            "correlationid", "causationid", "nodeseq"]  # fmt: skip


@fuzz(150)
@given(type_=st.sampled_from(TYPES), data=st.data())
def test_a_broken_envelope_attribute_is_named(type_: str, data: st.DataObject) -> None:
    obj = data.draw(event_objects(type_))
    attribute = data.draw(st.sampled_from(ENVELOPE))
    if data.draw(st.booleans()):
        mutated = {k: v for k, v in obj.items() if k != attribute}
    else:
        mutated = {**obj, attribute: data.draw(junk)}
    result = decoded_or_error(json.dumps(mutated))
    if isinstance(result, DecodeError):
        if attribute == "type" and isinstance(mutated.get("type"), str):
            return  # another type: its payload is judged by that type's model
        assert result.field == attribute or (
            attribute == "dataversion" and result.field == "data"
        ), (attribute, mutated.get(attribute), str(result))


@fuzz(120)
@given(type_=st.sampled_from(TYPES), other=st.sampled_from(TYPES), data=st.data())
def test_a_payload_under_another_type_is_refused_or_valid_for_it(type_: str, other: str, data: st.DataObject) -> None:
    obj = data.draw(event_objects(type_))
    result = decoded_or_error(json.dumps({**obj, "type": other}))
    if isinstance(result, DecodeError):
        assert result.field.startswith("data") or result.field == "dataversion", str(result)  # type: ignore[union-attr]
    else:
        assert result.type == other


# --- readings against an oracle ---------------------------------------------------------------

MISSING = object()


def mostly(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Three draws in four from ``valid``, so a third of the readings are valid in every field."""
    return st.integers(0, 3).flatmap(lambda n: invalid if n == 0 else valid)


names = mostly(
    st.from_regex(r"[a-z0-9_]{1,10}(\.[a-z0-9_]{1,10}){0,3}", fullmatch=True),
    st.text(alphabet="az09_.-A ZÅ\n\t", max_size=12)
    | st.sampled_from(["a" * 128, "a" * 129, "env.t\n", "\nenv.t", "env..t", ".", "", "é"])
    | junk
    | st.just(MISSING),
)
values = mostly(
    st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    junk | st.just(MISSING),
)
timestamps = mostly(
    st.integers(MIN_TIMESTAMP_NS, 2**63 - 1) | st.sampled_from([MIN_TIMESTAMP_NS, 2**63 - 1]),
    st.integers(MIN_TIMESTAMP_NS - 5, MIN_TIMESTAMP_NS - 1)
    | st.integers(2**63, 2**63 + 5)
    | st.integers()
    | st.sampled_from([1_700_000_000, 1.7e18, 1_700_000_000_000_000_000.0, True, MISSING])
    | junk,
)
metas = mostly(
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), junk, min_size=1, max_size=3) | junk,
)


def reading_problem(data: dict[str, Any]) -> str | None:
    """The first field of a reading that breaks pywaggle's rules (model order), or None."""
    name, value, ts = data.get("name", MISSING), data.get("value", MISSING), data.get("timestamp", MISSING)
    if not (isinstance(name, str) and len(name) <= 128 and READING_NAME.fullmatch(name)):
        return "name"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return "value"
    if not (isinstance(ts, int) and not isinstance(ts, bool) and MIN_TIMESTAMP_NS <= ts < 2**63):
        return "timestamp"
    meta = data.get("meta", {})
    if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        return "meta"
    if data.get("scope", "all") not in ("node", "beehive", "all"):
        return "scope"
    return None


@fuzz(400)
@given(
    name=names,
    value=values,
    ts=timestamps,
    meta=mostly(metas, st.just(MISSING)),  # meta and scope may be left out
    scope=mostly(st.sampled_from(["node", "beehive", "all", MISSING]), st.sampled_from(["ALL", "", None])),
)
def test_readings_follow_pywaggles_rules_exactly(name: Any, value: Any, ts: Any, meta: Any, scope: Any) -> None:
    data = {k: v for k, v in {"name": name, "value": value, "timestamp": ts, "meta": meta,
                              "scope": scope}.items() if v is not MISSING}  # fmt: skip
    body = {"specversion": "1.0", "id": "01J00000000000000000000000", "type": "data.reading",
            "source": "node/W012", "subject": "W012", "time": "2025-01-01T00:00:00Z", "data": data}  # fmt: skip
    result = decoded_or_error(json.dumps(body))
    problem = reading_problem(data)
    if problem is None:
        assert isinstance(result, Event), (data, str(result))
        assert result.data.model_dump() == {"meta": {}, "scope": "all", **data}
    else:
        assert isinstance(result, DecodeError), (problem, data)
        assert (result.field or "").startswith(f"data.{problem}"), (problem, data, str(result))


# --- node-side ingress: to-edge goals and plugins' readings ---------------------------------------
# A node consumes ``toedge.<node>.>`` (``ToEdge.apply``, which refuses a goal whose rules raise
# ``RuleSyntaxError`` and would stop on anything else) and plugins' ``local.publish.<name>``
# (``Intake._parse``, which counts a ``ValueError`` as an invalid reading).

rule_texts = st.text(max_size=40) | st.sampled_from([
    "schedule(bme680): cronjob('bme680', '*/5 * * * *')", "publish(heat.alert): v('env.t') > 35",
    "schedule(other): true", "bme680: v('x') > 1", "set(k, value=1): 1", "publish('a\\n'): 1",
])  # fmt: skip


@fuzz(80)
@given(goal=STRATEGIES["ses.goal.assigned"], rules=st.lists(rule_texts, max_size=4))
def test_a_goal_on_the_node_is_held_or_refused_with_a_rule_error(goal: Any, rules: list[str]) -> None:
    event = Event.new(goal.model_copy(update={"science_rules": rules}), source="handler/ses", subject=goal.node)
    try:
        held = Goal.of(codec.decode(codec.encode(event)))
    except RuleSyntaxError as exc:
        assert 0 <= exc.position <= len(exc.rule)
        return
    assert [r.text for r in held.rules] == rules


@fuzz(300)
@given(name=st.from_regex(r"[a-z0-9_]{1,8}(\.[a-z0-9_]{1,8}){0,2}", fullmatch=True),
       body=st.binary(max_size=120) | junk.map(lambda v: json.dumps(v).encode())
       | st.fixed_dictionaries({"name": names, "value": values, "timestamp": timestamps}, optional={"meta": metas})
       .map(lambda d: json.dumps({k: v for k, v in d.items() if v is not MISSING}).encode()))  # fmt: skip
def test_a_plugins_reading_is_taken_or_counted_invalid(name: str, body: bytes) -> None:
    intake = Intake.__new__(Intake)  # _parse reads no state: no outbox or bus needed to judge a body
    try:
        reading = intake._parse(PUBLISH_PREFIX + name, body)
    except ValueError as exc:
        assert str(exc)
        return
    assert reading.name == name
    assert codec.decode(codec.encode(Event.new(reading, source="node/W012", subject="W012"))).data == reading
