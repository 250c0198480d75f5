"""The scheduler's job YAML, read as Sage's scheduler reads it.

The scheduler decodes a job into Go structs: ``args`` is a ``[]string``, so an unquoted
``- 30`` or ``- 0.50`` is the string ``"30"`` / ``"0.50"``, exactly as written (not the number
PyYAML makes of it, whose text could differ: ``0.50`` -> ``0.5``, ``0x1F`` -> ``31``). The
loader keeps the written text of every plain scalar in ``plugins[].pluginSpec.args``.
"""

from __future__ import annotations

from typing import Any

import yaml

from hivebus.errors import FormatError
from hivebus.formats.reading import Source, StrictLoader, read_document
from hivebus.formats.validation import Problems, validate
from hivebus.schemas.ses import JobSpec, plugin_name_problem

_NULLS = frozenset({"", "~", "null", "Null", "NULL"})


def _mapping_value(node: yaml.Node, *keys: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value in keys:
            return value
    return None


def written_args(text: str) -> dict[int, list[str | None]]:
    """For each plugin (by index), the written text of each plain scalar of its ``args``
    (None for an item that is not a plain scalar, or a null)."""
    try:
        root = yaml.compose(text, Loader=StrictLoader)
    except yaml.YAMLError:
        return {}  # read_document reported it
    plugins = _mapping_value(root, "plugins") if root is not None else None
    if not isinstance(plugins, yaml.SequenceNode):
        return {}
    found: dict[int, list[str | None]] = {}
    for index, plugin in enumerate(plugins.value):
        spec = _mapping_value(plugin, "pluginSpec", "plugin_spec")
        args = _mapping_value(spec, "args") if spec is not None else None
        if not isinstance(args, yaml.SequenceNode):
            continue
        found[index] = [
            item.value
            if isinstance(item, yaml.ScalarNode) and item.style is None and item.value not in _NULLS
            else None
            for item in args.value
        ]
    return found


def _args_as_written(doc: dict[str, Any], text: str | None) -> None:
    if text is None:
        return
    plugins = doc.get("plugins")
    if not isinstance(plugins, list):
        return
    for index, words in written_args(text).items():
        plugin = plugins[index] if index < len(plugins) else None
        spec = None
        if isinstance(plugin, dict):
            spec = plugin.get("pluginSpec", plugin.get("plugin_spec"))
        args = spec.get("args") if isinstance(spec, dict) else None
        if not isinstance(args, list) or len(args) != len(words):
            continue
        for i, word in enumerate(words):
            if word is not None and not isinstance(args[i], str):
                args[i] = word


def load_job(source: Source, *, name: str = "job.yaml") -> JobSpec:
    """A ``JobSpec`` from the scheduler's job YAML (``nodes`` map or ``nodeTags``, rules)."""
    file, doc, text = read_document(source, name)
    _args_as_written(doc, text)
    job = validate(JobSpec, file, doc, [])
    problems: Problems = [
        (f"plugins[{i}].name", problem)
        for i, plugin in enumerate(job.plugins)
        if (problem := plugin_name_problem(plugin.name)) is not None
    ]
    if problems:
        raise FormatError(file, problems)
    return job


__all__ = ["load_job", "written_args"]
