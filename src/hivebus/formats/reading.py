"""Reading a Sage file: YAML (or JSON) text, a path or a parsed mapping, into a plain document.

Duplicate keys are refused (PyYAML would silently keep the last), and so are documents that
would cost more to validate than they weigh (alias bombs, deep nesting, huge files).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any, Final

import yaml

from hivebus.errors import FormatError

Source = str | os.PathLike[str] | Mapping[str, Any]


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""


def _mapping_without_duplicates(loader: StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
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


StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _mapping_without_duplicates,
)


MAX_FILE_BYTES: Final = 1024 * 1024
MAX_VALUES: Final = 100_000
"""Values in a document once YAML aliases are expanded: a few hundred bytes of nested aliases
(a "billion laughs") would otherwise make validation walk 10^9 values."""
MAX_DEPTH: Final = 64


def read_document(source: Source, default_name: str) -> tuple[str, Any, str | None]:
    """(name to report, parsed document, the text it was read from: None for a mapping).
    A str with a newline is YAML text; else a path."""
    if isinstance(source, Mapping):
        _check_shape(default_name, source)
        return default_name, copy.deepcopy(dict(source)), None
    if isinstance(source, str) and "\n" in source:
        name, text = default_name, source
    else:
        name = os.fspath(source)
        text = _read_file(name)
    if len(text) > MAX_FILE_BYTES:
        raise FormatError(
            name, [(None, f"the file is {len(text)} characters, more than {MAX_FILE_BYTES}")]
        )
    try:
        doc = yaml.load(text, Loader=StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
        raise FormatError(name, [(None, one_line(f"{where}{problem}"))]) from None
    except RecursionError:
        raise FormatError(
            name, [(None, f"values nest more than {MAX_DEPTH} levels deep")]
        ) from None
    except Exception as exc:  # PyYAML's constructors fail on odd values (`!!int ""`, `!!bool x`,
        # a 5000-digit int, 2024-02-30) with assorted exceptions, not YAMLError
        raise FormatError(
            name, [(None, one_line(f"unreadable value: {type(exc).__name__}: {exc}"))]
        ) from None
    if not isinstance(doc, dict):
        raise FormatError(name, [(None, f"expected a mapping of fields, got {type(doc).__name__}")])
    _check_shape(name, doc)
    return name, doc, text


def one_line(text: str) -> str:
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
        raise FormatError(
            name, [(None, f"cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})")]
        ) from None


def _check_shape(name: str, doc: Any) -> None:
    """Refuse documents that would cost more to validate than they weigh: too many values once
    aliases are expanded (each visit counts), or nested deeper than ``MAX_DEPTH``."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise FormatError(
                name,
                [
                    (
                        None,
                        f"the document expands to more than {MAX_VALUES} values "
                        "(YAML aliases?): write the values out",
                    )
                ],
            )
        if depth > MAX_DEPTH:
            raise FormatError(name, [(None, f"values nest more than {MAX_DEPTH} levels deep")])
        if isinstance(node, Mapping):
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list | tuple | set | frozenset):
            stack.extend((value, depth + 1) for value in node)
