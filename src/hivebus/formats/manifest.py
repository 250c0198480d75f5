"""``node.yaml``: a node's manifest, with ``8Gi``/``200Gi``/``120s`` turned into numbers."""

from __future__ import annotations

from hivebus.formats.quantities import parse_bytes, parse_duration
from hivebus.formats.reading import Source, read_document
from hivebus.formats.validation import Problems, convert, validate
from hivebus.schemas.node import NodeManifest


def load_manifest(source: Source, *, name: str = "node.yaml") -> NodeManifest:
    """A ``NodeManifest`` from node.yaml, with ``8Gi``/``200Gi``/``120s`` turned into numbers."""
    file, doc, _ = read_document(source, name)
    problems: Problems = []
    convert(doc, ("hardware", "memory"), parse_bytes, problems)
    convert(doc, ("hardware", "disk"), parse_bytes, problems)
    convert(doc, ("sensors", "*", "max_silence"), parse_duration, problems)
    return validate(NodeManifest, file, doc, problems)


__all__ = ["load_manifest"]
