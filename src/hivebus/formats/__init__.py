"""Loaders for the files Sage users write: ``sage.yaml``, the scheduler's job YAML, ``node.yaml``.

Each loader reads YAML (refusing duplicate keys, which PyYAML would silently collapse), turns
human quantities (``128Mi``, ``250m``, ``120s``) into numbers, and validates against the
payload-ready model (``AppSpec``, ``JobSpec``, ``NodeManifest``). Every problem found is
reported at once in a ``FormatError`` naming the file and the field, in the user's spelling:
``sage.yaml: source.architectures[1]: unknown architecture 'amd65'``. See docs/formats.md for
the fields read and where hivebus differs from Sage on purpose.

Modules: ``quantities`` (sizes, cores, durations), ``reading`` (YAML in, limits), ``validation``
(model errors in the user's words), ``git`` (what a checkout says), ``app`` (sage.yaml),
``job`` (job YAML), ``manifest`` (node.yaml).
"""

from __future__ import annotations

from hivebus.formats.app import load_app
from hivebus.formats.git import Checkout, checkout_of
from hivebus.formats.job import load_job
from hivebus.formats.manifest import load_manifest
from hivebus.formats.quantities import parse_bytes, parse_cpu, parse_duration
from hivebus.formats.reading import MAX_DEPTH, MAX_FILE_BYTES, MAX_VALUES, Source

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_VALUES",
    "Checkout",
    "Source",
    "checkout_of",
    "load_app",
    "load_job",
    "load_manifest",
    "parse_bytes",
    "parse_cpu",
    "parse_duration",
]
