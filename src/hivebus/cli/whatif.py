"""``hivebus replay what-if``: the recorded submissions decided again by another policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hivebus.api import parse_since
from hivebus.bus.client import Bus
from hivebus.cli.app import Hub, err, out, run, settings
from hivebus.cli.replay import replay_app
from hivebus.handlers.placement import POLICIES
from hivebus.replay.whatif import WhatIf

SHOWN = 30


@replay_app.command("what-if")
def what_if(
    policy: Annotated[str, typer.Option(help=f"The placement policy to try: {', '.join(POLICIES)}")],
    since: Annotated[str | None, typer.Option(help="Decide again from this time (-1h, ISO); earlier history is folded as recorded")] = None,
    until: Annotated[str | None, typer.Option(help="Stop at this time (-10m, ISO; default: the end of the log)")] = None,
    out_path: Annotated[Path, typer.Option("--out", help="DuckDB file for the decisions (replaced)")] = Path(".hivebus/what-if.duckdb"),
    hub: Hub = None,
) -> None:
    """Run the scheduler's decider with POLICY over the recorded history, without publishing,
    and compare its placements with what happened."""
    from hivebus.replay.whatif_run import run_what_if, write_tables

    start = parse_since(since) if since else None  # bad input fails before connecting
    end = parse_since(until) if until else None
    WhatIf(policy)  # an unknown policy fails before connecting, naming the known ones
    config = settings(hub)

    async def go() -> Any:
        async with await Bus.connect(config.nats_url, name="hivebus-what-if") as bus:
            columns = (TextColumn("EVENTS"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=err, transient=True) as bar:
                task = bar.add_task("read", total=None)

                def progress(read: int, total: int) -> None:
                    bar.update(task, completed=read, total=max(total, 1))

                return await run_what_if(bus, policy, since=start, until=end, progress=progress)

    engine, span = run(go())
    write_tables(engine, span, out_path)
    print_comparison(engine)
    out.print(f"decisions in {out_path} (tables whatif_decisions, whatif_node_load, whatif_summary); "
              f"query with `hivebus query --db {out_path} \"select * from whatif_decisions\"`")


def print_comparison(engine: WhatIf) -> None:
    s = engine.summary()
    out.print(f"[bold]what-if {s.policy}[/]: {s.events} events, {s.submissions} submissions, "
              f"{s.differ} decided differently")
    out.print(f"fit rejections: {s.fit_rejections_actual} recorded, {s.fit_rejections_whatif} what-if "
              f"({s.avoided} avoided, {s.caused} caused); over-committed nodes by the latest profiles: "
              f"{s.overcommitted_actual} recorded, {s.overcommitted_whatif} what-if")
    differing = [r for r in engine.rows() if r.differs]
    if differing:
        table = Table("seq", "job", "recorded", "what-if", title="placements that differ")
        for row in differing[:SHOWN]:
            table.add_row(str(row.seq), row.job_id, _outcome(row.actual), _outcome(row.whatif))
        out.print(table)
        if len(differing) > SHOWN:
            out.print(f"... and {len(differing) - SHOWN} more (see whatif_decisions)")
    loads = Table("node", "placements", "goals", "cpu", "memory", "over", title="per-node load at the end")
    by_node: dict[str, dict[str, Any]] = {}
    for load in engine.loads():
        by_node.setdefault(load.node, {})[load.world] = load
    for node, worlds in sorted(by_node.items()):
        a, w = worlds.get("actual"), worlds.get("whatif")
        loads.add_row(
            node,
            f"{_n(a, 'placements')} -> {_n(w, 'placements')}",
            f"{_n(a, 'goals')} -> {_n(w, 'goals')}",
            f"{_n(a, 'cpu'):g} -> {_n(w, 'cpu'):g} of {_n(a or w, 'capacity_cpu'):g}",
            f"{_mib(_n(a, 'memory'))} -> {_mib(_n(w, 'memory'))}",
            "; ".join([*(f"recorded {o}" for o in (a.over if a else [])),
                       *(f"what-if {o}" for o in (w.over if w else []))]) or "-",
        )
    out.print(loads)


def _outcome(outcome: Any) -> str:
    if outcome.decision == "scheduled":
        return ", ".join(f"{n}" + (f" ({s:g})" if (s := outcome.scores.get(n)) is not None else "")
                         for n in sorted(outcome.nodes))
    if outcome.decision == "rejected":
        first = outcome.reasons[0] if outcome.reasons else ""
        return f"rejected: {first[:90]}" + (f" (+{len(outcome.reasons) - 1})" if len(outcome.reasons) > 1 else "")
    return outcome.decision


def _n(load: Any, name: str) -> Any:
    return getattr(load, name) if load is not None else 0


def _mib(value: int) -> str:
    return f"{value / 2**20:.0f}Mi"
