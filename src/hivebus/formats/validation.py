"""Validating a document against its model, every problem reported at once in the user's
spelling (``source.architectures[1]: unknown architecture 'amd65'``)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from hivebus.errors import FormatError

M = TypeVar("M", bound=BaseModel)
Problems = list[tuple[str | None, str]]


def _field_path(loc: tuple[int | str, ...]) -> str:
    """``("source", "architectures", 1)`` -> ``source.architectures[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part:  # a union/validator tag pydantic adds, not a field
            continue
        else:
            shown = part if part.isprintable() and part.strip() == part and part else repr(part)
            out += f".{shown}" if out else shown
    return out


def convert(
    doc: dict[str, Any], path: tuple[str, ...], fn: Callable[[object], object], problems: Problems
) -> None:
    """Apply ``fn`` at ``path`` (``"*"`` = every list item) where the shape allows; record failures."""

    def walk(node: Any, rest: tuple[str, ...], loc: tuple[int | str, ...]) -> None:
        head, tail = rest[0], rest[1:]
        if head == "*":
            if isinstance(node, list):
                for i, item in enumerate(node):
                    walk(item, tail, (*loc, i))
            return
        if not isinstance(node, dict) or head not in node or node[head] is None:
            return  # missing or mis-shaped: the model reports it
        if tail:
            walk(node[head], tail, (*loc, head))
            return
        try:
            node[head] = fn(node[head])
        except ValueError as exc:
            problems.append((_field_path((*loc, head)), str(exc)))

    walk(doc, path, ())


def _field_names(model: type[BaseModel], into: set[str]) -> set[str]:
    """Every field name and alias reachable from ``model`` (for did-you-mean hints)."""
    for name, info in model.model_fields.items():
        if name in into:
            continue
        into.add(name)
        alias = info.validation_alias
        for choice in getattr(alias, "choices", [alias] if isinstance(alias, str) else []):
            if isinstance(choice, str):
                into.add(choice)
        for sub in _nested_models(info.annotation):
            _field_names(sub, into)
    return into


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _nested_models(arg)]


def _closest(field: str, known: set[str]) -> str | None:
    """The known name ``field`` is closest to, ignoring case, in the spelling files use: of
    ``node_tags`` and its alias ``nodeTags``, ``nodetags`` gets ``nodeTags``."""
    spelled: dict[str, str] = {}
    for name in sorted(known, key=lambda n: (n == n.lower(), n)):  # camelCase aliases first
        spelled.setdefault(name.lower(), name)
    close = difflib.get_close_matches(field.lower(), sorted(spelled), n=1)
    return spelled[close[0]] if close else None


def _message(error: Any, known: set[str]) -> str:
    kind, msg, given = error["type"], error["msg"], error.get("input")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        field = str(error["loc"][-1]) if error["loc"] else ""
        close = _closest(field, known)
        return "unknown field" + (f" (did you mean {close!r}?)" if close else "")
    if kind == "string_type" and isinstance(given, bool | int | float):
        return f"expected a string, got {given!r} (quote it in YAML: '{given}')"
    if kind in ("value_error", "assertion_error"):
        return msg.split(", ", 1)[1] if ", " in msg else msg
    return msg


def validate(model: type[M], name: str, doc: dict[str, Any], problems: Problems) -> M:
    try:
        result = model.model_validate(doc)
    except ValidationError as exc:
        known = _field_names(model, set())
        reported = {field for field, _ in problems}
        for error in exc.errors(include_url=False):
            field = _field_path(error["loc"]) or None
            if field not in reported:  # a failed conversion already explains this one
                problems.append((field, _message(error, known)))
        raise FormatError(name, problems) from None
    if problems:
        raise FormatError(name, problems)
    return result
