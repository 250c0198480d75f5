"""`make bench` rewrites bench/RESULTS.md from its runs and keeps the sections written by hand."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH_RUN = Path(__file__).resolve().parents[2] / "bench" / "run.py"


def load_run():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_run", BENCH_RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH_RUN.parent))  # run.py imports its neighbours, as `python bench/run.py` does
    sys.modules[spec.name] = module  # (its dataclasses look their module up there)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH_RUN.parent))
    return module


def test_the_issue_sections_written_by_hand_are_kept_and_the_generated_ones_are_not() -> None:
    earlier = (
        "# Benchmark results\n\n## Summary\n\nold table\n\n## publish\n\nold output\n\n"
        "## issue 18: readings\n\nmeasured by hand\n\n| a | b |\n\n"
        "## project\n\nold\n\n## issue 16: objects\n\n1 GiB"
    )
    kept = load_run().kept_sections(earlier)
    assert kept == "## issue 18: readings\n\nmeasured by hand\n\n| a | b |\n\n## issue 16: objects\n\n1 GiB\n"
    assert load_run().kept_sections("") == ""
