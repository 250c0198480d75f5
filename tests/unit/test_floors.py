"""The floors of the code (CLAUDE.md, DESIGN.md's layout): ``edge/`` and ``projections/`` run on
nodes and in the projector process without the faces above them, so they never import
``hivebus.cli``, ``hivebus.web`` or the package root's names (``from hivebus import ...``).
A static check of every module's imports, nested imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "hivebus"
FLOORS = ("edge", "projections")
ABOVE = ("hivebus.cli", "hivebus.web")


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, what) for each import in ``path``; ``from hivebus import x`` is ``hivebus:x``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "hivebus":
                found += [(node.lineno, f"hivebus:{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def breaches(path: Path, root: Path = SRC.parent) -> list[str]:
    return [f"{path.relative_to(root)}:{line} imports {name}" for line, name in imported(path)
            if (name.startswith("hivebus:") and name != "hivebus:version")
            or any(name == above or name.startswith(above + ".") for above in ABOVE)]


@pytest.mark.parametrize("floor", FLOORS)
def test_a_floor_imports_nothing_above_it(floor: str) -> None:
    modules = sorted((SRC / floor).rglob("*.py"))
    assert modules, f"no modules under {SRC / floor}"
    assert [b for m in modules for b in breaches(m)] == []


def test_the_check_sees_a_breach(tmp_path: Path) -> None:
    module = tmp_path / "probe.py"
    module.write_text("from hivebus.version import __version__\nfrom hivebus import version\n\n"
                      "def f():\n    from hivebus.cli.app import app\n    from hivebus import connect\n")
    assert breaches(module, tmp_path) == ["probe.py:5 imports hivebus.cli.app", "probe.py:6 imports hivebus:connect"]
