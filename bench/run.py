"""Run every benchmark and rewrite bench/RESULTS.md with what they printed.

Each benchmark measures hivebus against a raw baseline in the same process run on the
same server and prints both rates and the ratio; this script only runs them in turn,
records the machine and the exact commands, and keeps their output verbatim.

    python bench/run.py            # full sizes (the issue targets), ~15 min on 2 cores
    python bench/run.py --quick    # smaller sizes, under ~2 min
    python bench/run.py --only publish,project
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from common import machine

HERE = Path(__file__).resolve().parent

# name -> (script, full args, quick args)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "publish": ("publish.py", ["-n", "100000"], ["-n", "20000"]),
    "fsync": ("fsync.py", ["-n", "20000"], ["-n", "5000", "--rounds", "1"]),
    "project": ("project.py", [], ["--quick"]),
    "outbox": ("outbox.py", [], ["--quick"]),
    "compare": ("compare.py", [], ["--quick"]),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    chosen = [n for n in BENCHMARKS if not args.only or n in args.only.split(",")]
    sections = []
    for name in chosen:
        script, full, quick = BENCHMARKS[name]
        if not (HERE / script).exists():
            sections.append(f"## {name}\n\n`bench/{script}` does not exist yet.\n")
            continue
        argv = [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        command = "python " + " ".join(["bench/" + script, *argv[2:]])
        print(f"== {command}", flush=True)
        started = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=HERE.parent)
        took = time.perf_counter() - started
        output = proc.stdout.strip() or "(no output)"
        print(output, flush=True)
        status = "" if proc.returncode == 0 else f"\n**failed (exit {proc.returncode})**:\n```\n{proc.stderr[-3000:]}\n```\n"
        sections.append(f"## {name}\n\nCommand: `{command}` ({took:.0f} s)\n\n```\n{output}\n```\n{status}")
    mode = "--quick" if args.quick else "full"
    header = (
        "# Benchmark results\n\n"
        f"Written by `python bench/run.py{' --quick' if args.quick else ''}` (`make bench{'-quick' if args.quick else ''}`) "
        f"on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, mode {mode}.\n\n"
        f"Machine: {machine()}.\n\n"
        "Every ratio compares hivebus with a raw baseline measured in the same process run on the "
        "same server; absolute rates move with the machine's load, ratios much less.\n"
    )
    (HERE / "RESULTS.md").write_text(header + "\n" + "\n".join(sections))
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
