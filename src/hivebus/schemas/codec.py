"""Bytes <-> Event. CloudEvents 1.0 structured mode: the JSON envelope is the body.

``decode`` never lets a third-party exception out: malformed JSON, a missing attribute,
an unknown type or an invalid payload all raise ``DecodeError`` naming the field.
"""

from __future__ import annotations

from typing import Any

import pydantic_core
from pydantic import ValidationError, create_model

from hivebus.errors import DecodeError
from hivebus.schemas.envelope import SPECVERSION, Event, Payload
from hivebus.schemas.registry import Registry, registry

MAX_EVENT_BYTES = 1024 * 1024  # nats-server's default max_payload

_typed_models: dict[type[Payload], type[Event]] = {}


def _typed(model: type[Payload]) -> type[Event]:
    """``Event`` with ``data`` typed as ``model``, so one validation pass checks it all."""
    typed = _typed_models.get(model)
    if typed is None:
        typed = create_model(f"Event[{model.__name__}]", __base__=Event, data=(model, ...))
        _typed_models[model] = typed
    return typed


def typed_model(model: type[Payload]) -> type[Event]:
    """``Event`` with ``data`` typed as ``model`` (what ``decode`` validates against)."""
    return _typed(model)


def encode(event: Event) -> bytes:
    """The wire form: CloudEvents structured JSON."""
    body = event.model_dump_json(exclude_none=True, round_trip=True).encode()
    # specversion is constant; splice it in rather than carry it on every model.
    return b'{"specversion":"' + SPECVERSION.encode() + b'",' + body[1:]


def to_dict(event: Event) -> dict[str, Any]:
    out = event.model_dump(mode="json", exclude_none=True)
    out["specversion"] = SPECVERSION
    return out


def decode(raw: bytes | bytearray | memoryview | str, *, reg: Registry = registry) -> Event:
    """Parse and validate one event, lifting old payload versions. Raises ``DecodeError``."""
    if isinstance(raw, str):
        try:
            raw = raw.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 form: no wire body has it
            raise DecodeError(f"body is not valid text ({exc.reason} at {exc.start})", field="<body>") from None
    size = len(raw)
    if size > MAX_EVENT_BYTES:
        raise DecodeError(f"event is {size} bytes, more than {MAX_EVENT_BYTES}", field="<body>")
    try:
        obj = pydantic_core.from_json(bytes(raw) if isinstance(raw, memoryview) else raw)
    except ValueError as exc:
        raise DecodeError(f"body is not JSON ({exc})", field="<body>") from None
    return from_dict(obj, reg=reg)


def from_dict(obj: Any, *, reg: Registry = registry) -> Event:
    if not isinstance(obj, dict):
        raise DecodeError(f"body must be a JSON object, got {type(obj).__name__}", field="<body>")
    type_ = obj.get("type")
    if not isinstance(type_, str):
        raise DecodeError("missing or non-string event type", field="type")
    spec = reg.spec(type_)
    obj = dict(obj)  # never change the caller's dict
    specversion = obj.pop("specversion", SPECVERSION)
    if specversion != SPECVERSION:
        raise DecodeError(f"unsupported specversion {specversion!r}", field="specversion", event_type=type_)
    version = obj.get("dataversion", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1 or version > spec.version:
        raise DecodeError(
            f"dataversion {version!r} is not between 1 and {spec.version}", field="dataversion", event_type=type_
        )
    if version < spec.version:
        data = obj.get("data")
        if not isinstance(data, dict):
            raise DecodeError("payload must be an object", field="data", event_type=type_)
        obj = {**obj, "data": spec.upcast(data, version), "dataversion": spec.version}
    try:
        return _typed(spec.model).model_validate(obj)
    except ValidationError as exc:
        raise _decode_error(exc, type_) from None


def validate_payload(model: type[Payload], data: Any) -> Payload:
    """Validate a payload dict for ``model``; errors name the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _decode_error(exc, model.event_type, prefix=()) from None


def _decode_error(exc: ValidationError, type_: str, prefix: tuple[str, ...] | None = None) -> DecodeError:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    field = ".".join(str(p) for p in first["loc"]) or "<body>"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return DecodeError(f"{first['msg']}{more}", field=field, event_type=type_)
