"""Run every benchmark and rewrite bench/RESULTS.md with what they printed.

Each benchmark measures hivebus against a baseline in the same process run on the same
server and prints both figures and the ratio, plus ``RESULT`` lines (``common.result``);
this script runs them in turn, gathers the ``RESULT`` lines into the summary table at the top
of RESULTS.md, records the machine and the exact commands, and keeps each one's output
verbatim below. bench/batches.py also draws bench/projection_batch.png in the same run.

    python bench/run.py            # full sizes (the issue's targets), under 15 min on 2 cores
    python bench/run.py --quick    # smaller sizes, under 2 min
    python bench/run.py --only publish,project
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from common import machine, parse_result

HERE = Path(__file__).resolve().parent
PLOT = "projection_batch.png"

# name -> (script, full args, quick args, what it compares)
BENCHMARKS: dict[str, tuple[str, list[str], list[str], str]] = {
    "publish": ("publish.py", ["-n", "100000"], ["-n", "20000"],
                "hivebus `publish_many` vs raw nats-py `publish_async` (publish path)"),
    "fsync": ("fsync.py", ["-n", "10000"], ["-n", "3000", "--rounds", "1"],
              "what `fsync=always` (the platform default) costs against nats-server's lazy default"),
    "project": ("project.py", ["-n", "100000"], ["--quick"],
                "projector vs raw nats-py drain, replay, data query over 10M readings vs plain DuckDB"),
    "outbox": ("outbox.py", ["-n", "50000"], ["--quick"],
               "edge outbox append and drain vs raw sqlite3 / publish_async, agent RSS offline"),
    "compare": ("compare.py", [], ["--quick"],
                "projector vs raw DuckDB Arrow insert, FastStream + DuckDB per message, eventsourcing"),
    "latency": ("latency.py", [], ["--quick"],
                "publish -> queryable at a steady 2k events/s; peak RSS of projector and agent processes"),
    "batches": ("batches.py", [], ["--quick"], f"projector batch size sweep; draws `{PLOT}`"),
    "ingest": ("ingest.py", ["-n", "50000", "-p", "200000", "--replay", "1000000"], ["--quick"],
               "readings at fleet scale (issue 18): hub ingest with fsync=always batched vs one message per "
               "reading, projection vs raw DuckDB Arrow insert, replay of readings"),
    "objects": ("objects.py", [], ["--mib", "128", "--rounds", "1"],
                "the SAGE object store over HTTP (issue 16): 1 GiB up and down through `hivebus web` vs nats-py "
                "ObjectStore put/get, the web process's peak RSS"),
    "restart": ("restart.py", ["--sizes", "10000,1000000"], ["--sizes", "10000,100000"],
                "scheduler start from a snapshot vs folding the whole log"),
}


@dataclass
class Ran:
    name: str
    command: str
    seconds: float
    output: str
    failed: str = ""
    results: list[dict[str, str]] = field(default_factory=list)


def run_one(name: str, quick: bool) -> Ran:
    script, full, short, _ = BENCHMARKS[name]
    argv = [sys.executable, str(HERE / script), *(short if quick else full)]
    command = "python " + " ".join(["bench/" + script, *argv[2:]])
    print(f"== {command}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=HERE.parent)
    took = time.perf_counter() - started
    lines = proc.stdout.strip().splitlines()
    results = [parse_result(line) for line in lines if line.startswith("RESULT ")]
    output = "\n".join(line for line in lines if not line.startswith("RESULT ")) or "(no output)"
    print(output, flush=True)
    failed = "" if proc.returncode == 0 else f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    if failed:
        print(f"FAILED ({failed})", file=sys.stderr, flush=True)
    print(f"({took:.0f} s)", flush=True)
    return Ran(name, command, took, output, failed, results)


def number(text: str) -> str:
    value = float(text)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def summary(ran: list[Ran]) -> str:
    rows = [
        "| metric | hivebus | baseline | ratio (> 1: hivebus better) |",
        "|---|---:|---|---:|",
    ]
    for r in ran:
        for res in r.results:
            unit = res.get("unit", "")
            ours = f"{number(res['hivebus'])} {unit}"
            base = f"{number(res['baseline'])} {unit} ({res.get('against', '')})" if "baseline" in res else "—"
            ratio = f"{float(res['ratio']):.3g}" if "ratio" in res else "—"
            rows.append(f"| {res['metric']} | {ours} | {base} | {ratio} |")
        if r.failed:
            rows.append(f"| {r.name} | **failed**, see below | | |")
    return "\n".join(rows)


def write(ran: list[Ran], quick: bool, wall: float, skipped: list[str], load: tuple[float, float]) -> Path:
    mode = "quick" if quick else "full"
    make = "make bench-quick" if quick else "make bench"
    facts = machine()
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python bench/run.py{' --quick' if quick else ''}` (`{make}`) on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC: mode {mode}, {wall / 60:.1f} min wall time in all.",
        "",
        "Every ratio compares hivebus with a baseline measured in the same process run on the same "
        "server (or file), alternating sides where a benchmark repeats. Absolute rates move with the "
        "machine's load (the load average at the start and end is in the machine table), the "
        "ratios much less. Each benchmark's section below says exactly what each side does.",
        "",
        "## Summary",
        "",
        summary(ran),
        "",
        f"![projection throughput and time per batch vs batch size]({PLOT})",
        "",
        f"[`{PLOT}`]({PLOT}): projection throughput and time per batch against the projector's batch "
        "size, from the `batches` run below.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in facts.items()),
        f"| load average (1 min) | {load[0]:.1f} at the start, {load[1]:.1f} at the end |",
        "",
    ]
    for r in ran:
        what = BENCHMARKS[r.name][3]
        lines += [f"## {r.name}", "", f"{what}.", "", f"Command: `{r.command}` ({r.seconds:.0f} s)", "",
                  "```", r.output, "```", ""]
        if r.failed:
            lines += [f"**failed** ({r.failed.splitlines()[0]}):", "", "```", r.failed, "```", ""]
    lines += [f"## {name}\n\n`bench/{BENCHMARKS[name][0]}` does not exist yet.\n" for name in skipped]
    path = HERE / "RESULTS.md"
    kept = kept_sections(path.read_text() if path.exists() else "")
    path.write_text("\n".join(lines) + ("\n" + kept if kept else ""))
    return path


def kept_sections(text: str) -> str:
    """The sections of an earlier RESULTS.md written by hand (``## issue ...``: an issue's
    measurements, with their own commands), kept as they are: this run rewrites only its own."""
    sections = re.split(r"(?m)^(?=## )", text)
    return "".join(s if s.endswith("\n") else s + "\n" for s in sections if s.startswith("## issue"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    chosen = [n for n in BENCHMARKS if not args.only or n in args.only.split(",")]
    unknown = set(filter(None, args.only.split(","))) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(BENCHMARKS)}")
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    ran, skipped = [], []
    for name in chosen:
        if not (HERE / BENCHMARKS[name][0]).exists():
            skipped.append(name)
            continue
        ran.append(run_one(name, args.quick))
    wall = time.perf_counter() - started
    path = write(ran, args.quick, wall, skipped, (load_before, os.getloadavg()[0]))
    print(f"wrote {path} ({wall:.0f} s in all)")
    if any(r.failed for r in ran):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
