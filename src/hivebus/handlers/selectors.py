"""Plugin selectors (``pluginSpec.selector``): which nodes a plugin may run on.

Keys, as Sage writes node labels: ``arch: linux/arm64``, ``gpu: true`` (or ``resource.gpu``),
``resource.<sensor>: true`` (a sensor of that name or kind in the manifest and not reported
lost, or a device of that name or type: a filter, not a claim, see ``devices``), ``node_class: <class>``, ``executor: docker``, ``vsn: W012``, ``tag: <tag>`` or
``tag.<tag>: true``, ``zone: core`` (Sage's compute unit of a node: a hivebus node is one
unit, ``core`` unless its setting ``zone`` says otherwise). An unknown key is refused at submit time rather than matching nothing.
"""

from __future__ import annotations

from typing import Final

from hivebus.handlers.nodes import NodeView

_EXACT: Final = ("arch", "node_class", "executor", "vsn", "tag", "zone")
_TRUTH: Final = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def selector_problem(key: str, value: str) -> str | None:
    """Why a selector entry can never be evaluated, or None."""
    boolean = key in ("gpu", "resource.gpu") or key.startswith(("resource.", "tag."))
    if boolean:
        if value.strip().lower() not in _TRUTH:
            return f"selector {key}: {value!r} is not true or false"
        return None
    if key in _EXACT:
        return None
    return f"unknown selector key {key!r} (known: arch, gpu, resource.<sensor>, node_class, executor, vsn, tag, tag.<tag>, zone)"


def selector_mismatch(selector: dict[str, str], node: NodeView) -> str | None:
    """The first selector entry ``node`` does not satisfy, as a sentence, or None."""
    manifest = node.manifest
    for key, value in sorted(selector.items()):
        truth = _TRUTH.get(value.strip().lower(), False)
        if key in ("gpu", "resource.gpu"):
            ok = node.has_gpu == truth
        elif key.startswith("resource."):
            wanted = key.removeprefix("resource.")
            ok = (wanted in node.sensors_working() or wanted in node.device_names()) == truth
        elif key.startswith("tag."):
            ok = (key.removeprefix("tag.") in node.tags) == truth
        elif key == "tag":
            ok = value in node.tags
        elif key == "arch":
            ok = node.arch == value
        elif key == "node_class":
            ok = manifest is not None and manifest.node_class == value
        elif key == "executor":
            ok = manifest is not None and value in manifest.executors
        elif key == "zone":
            ok = node.settings.get("zone", "core") == value
        elif key == "vsn":
            ok = manifest is not None and manifest.vsn == value
        else:
            ok = False
        if not ok:
            return f"selector {key}={value} does not match"
    return None
