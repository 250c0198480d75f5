"""Loaders for the files Sage users write: ``sage.yaml``, the scheduler's job YAML, ``node.yaml``.

Each loader reads YAML (refusing duplicate keys, which PyYAML would silently collapse), turns
human quantities (``128Mi``, ``250m``, ``120s``) into numbers, and validates against the
payload-ready model (``AppSpec``, ``JobSpec``, ``NodeManifest``). Every problem found is
reported at once in a ``FormatError`` naming the file and the field, in the user's spelling:
``sage.yaml: source.architectures[1]: unknown architecture 'amd65'``.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Callable, Mapping
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any, Final, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from hivebus.errors import FormatError
from hivebus.schemas.ecr import AppSpec
from hivebus.schemas.node import NodeManifest
from hivebus.schemas.ses import JobSpec

__all__ = [
    "load_app",
    "load_job",
    "load_manifest",
    "parse_bytes",
    "parse_cpu",
    "parse_duration",
]

Source = str | os.PathLike[str] | Mapping[str, Any]
M = TypeVar("M", bound=BaseModel)
Problems = list[tuple[str | None, str]]

# --- quantities -----------------------------------------------------------------------------

_BYTE_UNITS: Final = {
    "": 1,
    "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip
_BYTES_RE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kKMGTPE]i?)?B?\s*")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_bytes(value: object) -> int:
    """``8Gi`` -> 8589934592, ``128Mi``, ``1.5G``, ``512`` (k8s quantities; a trailing ``B``
    is allowed). Fractions round up to a whole byte. ValueError on anything else."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 8Gi, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size {value} is negative")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    match = _BYTES_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a size such as 512, 128Mi or 8Gi, got {value!r}")
    number = Decimal(match.group(1)) * _BYTE_UNITS[match.group(2) or ""]
    return int(number.to_integral_value(rounding=ROUND_CEILING))


def parse_cpu(value: object) -> float:
    """Cores: ``2``, ``0.25``, ``"0.25"``, ``250m`` (millicores) -> 0.25. ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected cores such as 0.5 or 500m, got {value!r}")
    if isinstance(value, int | float):
        cores = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            cores = float(Decimal(text[:-1]) / 1000) if text.endswith("m") else float(Decimal(text))
        except InvalidOperation:
            raise ValueError(f"expected cores such as 0.5 or 500m, got {value!r}") from None
    else:
        raise ValueError(f"expected cores such as 0.5 or 500m, got {value!r}")
    if not cores >= 0 or cores == float("inf"):
        raise ValueError(f"cores must be a finite number >= 0, got {value!r}")
    return cores


def parse_duration(value: object) -> float:
    """Seconds: ``120s``, ``5m``, ``1h30m``, ``7d``, ``250ms``, or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 120s or 5m, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return float(text)
        if text and re.fullmatch(rf"(?:{_DURATION_PART.pattern})+", text):
            return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    raise ValueError(f"expected a duration such as 120s, 5m or 1h30m, got {value!r}")


# --- reading YAML ---------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _mapping_without_duplicates,
)


MAX_FILE_BYTES: Final = 1024 * 1024
MAX_VALUES: Final = 100_000
"""Values in a document once YAML aliases are expanded: a few hundred bytes of nested aliases
(a "billion laughs") would otherwise make validation walk 10^9 values."""
MAX_DEPTH: Final = 64


def _read(source: Source, default_name: str) -> tuple[str, Any]:
    """(name to report, parsed document). A str with a newline is YAML text; else a path."""
    if isinstance(source, Mapping):
        _check_shape(default_name, source)
        return default_name, copy.deepcopy(dict(source))
    if isinstance(source, str) and "\n" in source:
        name, text = default_name, source
    else:
        name = os.fspath(source)
        text = _read_file(name)
    if len(text) > MAX_FILE_BYTES:
        raise FormatError(name, [(None, f"the file is {len(text)} characters, more than {MAX_FILE_BYTES}")])
    try:
        doc = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
        raise FormatError(name, [(None, _one_line(f"{where}{problem}"))]) from None
    except RecursionError:
        raise FormatError(name, [(None, f"values nest more than {MAX_DEPTH} levels deep")]) from None
    except Exception as exc:  # PyYAML's constructors fail on odd values (`!!int ""`, `!!bool x`,
        # a 5000-digit int, 2024-02-30) with assorted exceptions, not YAMLError
        raise FormatError(name, [(None, _one_line(f"unreadable value: {type(exc).__name__}: {exc}"))]) from None
    if not isinstance(doc, dict):
        raise FormatError(name, [(None, f"expected a mapping of fields, got {type(doc).__name__}")])
    _check_shape(name, doc)
    return name, doc


def _one_line(text: str) -> str:
    """A message on one line (every line of a FormatError is ``file: field: message``)."""
    return " ".join(text.split())


def _read_file(name: str) -> str:
    try:
        with open(name, "rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise FormatError(name, [(None, "no such file")]) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise FormatError(name, [(None, f"cannot read: {exc}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise FormatError(name, [(None, f"the file is larger than {MAX_FILE_BYTES} bytes")])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(name, [(None, f"cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None


def _check_shape(name: str, doc: Any) -> None:
    """Refuse documents that would cost more to validate than they weigh: too many values once
    aliases are expanded (each visit counts), or nested deeper than ``MAX_DEPTH``."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise FormatError(name, [(None, f"the document expands to more than {MAX_VALUES} values "
                                            "(YAML aliases?): write the values out")])
        if depth > MAX_DEPTH:
            raise FormatError(name, [(None, f"values nest more than {MAX_DEPTH} levels deep")])
        if isinstance(node, Mapping):
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list | tuple | set | frozenset):
            stack.extend((value, depth + 1) for value in node)


# --- conversions and validation -------------------------------------------------------------


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


def _convert(
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


def _message(error: Any, known: set[str]) -> str:
    kind, msg, given = error["type"], error["msg"], error.get("input")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        field = str(error["loc"][-1]) if error["loc"] else ""
        close = difflib.get_close_matches(field, sorted(known), n=1)
        return "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind == "string_type" and isinstance(given, bool | int | float):
        return f"expected a string, got {given!r} (quote it in YAML: '{given}')"
    if kind in ("value_error", "assertion_error"):
        return msg.split(", ", 1)[1] if ", " in msg else msg
    return msg


def _validate(model: type[M], name: str, doc: dict[str, Any], problems: Problems) -> M:
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


# --- the three files ------------------------------------------------------------------------


def _gpu_count(value: object) -> object:
    return int(value) if isinstance(value, bool) else value


def load_app(source: Source, *, name: str = "sage.yaml", namespace: str | None = None) -> AppSpec:
    """An ``AppSpec`` from a sage.yaml (path, YAML text or parsed mapping).

    ``namespace`` fills in a file that does not name one (the ECR uses the pusher's).
    """
    file, doc = _read(source, name)
    if namespace is not None:
        doc.setdefault("namespace", namespace)
    problems: Problems = []
    _convert(doc, ("resources", "cpu"), parse_cpu, problems)
    _convert(doc, ("resources", "memory"), parse_bytes, problems)
    _convert(doc, ("resources", "gpu"), _gpu_count, problems)
    return _validate(AppSpec, file, doc, problems)


def load_job(source: Source, *, name: str = "job.yaml") -> JobSpec:
    """A ``JobSpec`` from the scheduler's job YAML (``nodes`` map or ``nodeTags``, rules)."""
    file, doc = _read(source, name)
    return _validate(JobSpec, file, doc, [])


def load_manifest(source: Source, *, name: str = "node.yaml") -> NodeManifest:
    """A ``NodeManifest`` from node.yaml, with ``8Gi``/``200Gi``/``120s`` turned into numbers."""
    file, doc = _read(source, name)
    problems: Problems = []
    _convert(doc, ("hardware", "memory"), parse_bytes, problems)
    _convert(doc, ("hardware", "disk"), parse_bytes, problems)
    _convert(doc, ("sensors", "*", "max_silence"), parse_duration, problems)
    return _validate(NodeManifest, file, doc, problems)
