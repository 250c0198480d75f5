"""What a run executes: a job's command, or a bundle's entry found on the plugin path.

``RunSpec.command`` (+ ``args``) when the job gives one; otherwise the bundle's ``main.py``
found on the plugin path (``HIVEBUS_PLUGIN_PATH``, then the repository's ``examples/plugins``)
as ``<name>/main.py`` or ``<namespace>/<name>/main.py``, run with the agent's Python and the
defaults of the inputs its ``sage.yaml`` declares. A leading ``python`` / ``python3`` means
that interpreter, so the plugin imports the SDK it was written against. Nothing found raises
:class:`NotRunnable`, reported as ``not_found`` before anything starts. The wasm executor
looks for its modules with the same :func:`find_bundle`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from hivebus.edge.executors.base import RunSpec, input_args
from hivebus.errors import FormatError
from hivebus.schemas.ecr import AppInput

log = structlog.get_logger()

PLUGIN_PATH_ENV: Final = "HIVEBUS_PLUGIN_PATH"


def default_plugin_path() -> list[Path]:
    """``HIVEBUS_PLUGIN_PATH`` (colon-separated), then the repository's ``examples/plugins``."""
    paths = [Path(p) for p in os.environ.get(PLUGIN_PATH_ENV, "").split(os.pathsep) if p]
    examples = Path(__file__).resolve().parents[4] / "examples" / "plugins"
    if examples.is_dir():
        paths.append(examples)
    return paths


@dataclass(frozen=True)
class Resolved:
    """What to execute for a spec: argv, working directory, and where it came from."""

    argv: tuple[str, ...]
    cwd: Path | None
    origin: str


class NotRunnable(Exception):
    """The spec names no command or bundle that exists here (reported as ``not_found``)."""


def resolve(spec: RunSpec, python: str, plugin_path: Sequence[Path] | None) -> Resolved:
    """The argv to run for ``spec`` (``python`` for a leading python/python3 and for bundles;
    ``plugin_path`` None means :func:`default_plugin_path`); ``NotRunnable`` says what is missing."""
    if spec.workdir is not None and not spec.workdir.is_dir():
        raise NotRunnable(f"working directory {spec.workdir} does not exist")
    if spec.command:
        program, *rest = spec.command
        if program in ("python", "python3"):
            program = python
        elif "/" in program:
            path = Path(program) if Path(program).is_absolute() else (spec.workdir or Path.cwd()) / program
            if not path.is_file():
                raise NotRunnable(f"command {program!r} does not exist (looked at {path})")
            program = str(path)
        else:
            found = shutil.which(program, path=os.environ.get("PATH", os.defpath))
            if found is None:
                raise NotRunnable(f"command {program!r} is not on PATH")
            program = found
        return Resolved((program, *rest, *spec.args), spec.workdir, "command")
    roots = plugin_path if plugin_path is not None else default_plugin_path()
    bundle_dir, inputs = find_bundle(roots, spec.bundle_id, ("main.py",))
    argv = (python, str(bundle_dir / "main.py"), *input_args(inputs, spec.args))
    return Resolved(argv, spec.workdir or bundle_dir, str(bundle_dir))


def find_bundle(
    roots: Sequence[Path], bundle_id: str, entries: Sequence[str]
) -> tuple[Path, list[AppInput]]:
    """The first ``<root>/[<namespace>/]<name>`` holding one of ``entries`` whose sage.yaml (if
    any) is that very bundle, and its declared inputs; ``NotRunnable`` says where it looked.

    A directory whose sage.yaml names another namespace, name or version is skipped (a run
    must execute the version it reports), and the error lists what was found instead.
    """
    namespace, _, rest = bundle_id.partition("/")
    name, _, version = rest.partition(":")
    if not (namespace and name and version):
        raise NotRunnable(f"{bundle_id!r} is not a bundle id (namespace/name:version)")
    mismatches: list[str] = []
    for root in roots:
        for candidate in (root / namespace / name, root / name):
            if not any((candidate / entry).is_file() for entry in entries):
                continue
            problem, inputs = _read_metadata(candidate, namespace, name, version)
            if problem is None:
                return candidate, inputs
            mismatches.append(problem)
    searched = ", ".join(str(r) for r in roots) or "an empty plugin path"
    found = f"; found only {', '.join(mismatches)}" if mismatches else ""
    wanted = " or ".join(f"{name}/{entry}" for entry in entries)
    raise NotRunnable(
        f"bundle {bundle_id}: no {wanted} on the plugin path ({searched}){found}"
        f" (set {PLUGIN_PATH_ENV} or give the job a pluginSpec entrypoint)"
    )


def _read_metadata(directory: Path, namespace: str, name: str, version: str) -> tuple[str | None, list[AppInput]]:
    """(why ``directory`` is not that bundle, or None; its declared inputs) from its sage.yaml."""
    manifest = directory / "sage.yaml"
    if not manifest.is_file():
        return None, []
    from hivebus.formats import load_app

    try:
        app = load_app(manifest, namespace=namespace)
    except FormatError as exc:
        log.warning("executor.bad_sage_yaml", path=str(manifest), error=str(exc))
        return None, []
    if (app.namespace, app.name, app.version) != (namespace, name, version):
        return f"{app.bundle_id} in {directory}", []
    return None, list(app.inputs)
