"""``hivebus query`` (SQL on the views, through the hub or on a file) and ``hivebus projector``."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hivebus.bus.client import Bus
from hivebus.cli.app import Hub, app, err, out, run, settings
from hivebus.errors import QueryError
from hivebus.projections.client import QueryResult
from hivebus.projections.client import query as sql_query
from hivebus.projections.query import DEFAULT_LIMIT, DEFAULT_TIMEOUT
from hivebus.projections.results import json_rows
from hivebus.projections.views.base import STREAMS

Format = Annotated[str, typer.Option("--format", "-f", help="table, json (an array of row objects) or csv")]


@app.command("query")
def query_command(
    sql: Annotated[str, typer.Argument(help="One read-only statement, e.g. \"SELECT * FROM nodes\"")],
    fmt: Format = "table",
    min_seq: Annotated[list[str] | None, typer.Option(
        "--min-seq", help="Wait until the views reach this EVENTS sequence (N) or STREAM=N; repeatable")] = None,
    limit: Annotated[int, typer.Option(help="Most rows returned")] = DEFAULT_LIMIT,
    timeout: Annotated[float, typer.Option(help="Seconds before the query is stopped")] = DEFAULT_TIMEOUT,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="A value for a ? placeholder; repeatable")] = None,
    db: Annotated[Path | None, typer.Option(help="Query this DuckDB file directly instead of the hub")] = None,
    hub: Hub = None,
) -> None:
    """Run SQL on the views (read-only: SELECT, WITH, SHOW, DESCRIBE, EXPLAIN). Tables: docs/views.md."""
    if fmt not in ("table", "json", "csv"):
        raise QueryError(f"--format {fmt!r}: choose table, json or csv")
    params: list[Any] | None = [_param(p) for p in param] if param else None
    if db is not None:
        result = _query_file(db, sql, params, limit, timeout)
    else:
        wanted = _min_seq(min_seq or [])

        async def go() -> QueryResult:
            async with await Bus.connect(settings(hub).nats_url, name="hivebus-query") as bus:
                return await sql_query(bus, sql, params, min_seq=wanted, limit=limit, timeout=timeout)

        result = run(go())
    _print(result, fmt)


def _param(text: str) -> Any:
    """``--param 3`` is the number 3, ``--param '"3"'`` the string; plain text stays text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _min_seq(values: list[str]) -> dict[str, int] | None:
    wanted: dict[str, int] = {}
    for value in values:
        stream, _, number = value.rpartition("=")
        stream = stream.upper() or "EVENTS"
        if stream not in STREAMS or not number.isdigit():
            raise QueryError(f"--min-seq {value!r}: write N (EVENTS) or STREAM=N with STREAM one of {', '.join(STREAMS)}")
        wanted[stream] = int(number)
    return wanted or None


def _query_file(db: Path, sql: str, params: list[Any] | None, limit: int, timeout: float) -> QueryResult:
    from hivebus.projections.duck import connect
    from hivebus.projections.query import QueryEngine

    if not db.exists():
        raise QueryError(f"{db} does not exist")
    con = connect(db, read_only=True)
    engine = QueryEngine(con.cursor, workers=1)
    try:
        result = engine.run_sync(sql, params, limit=limit, timeout=timeout)
    finally:
        engine.close()
        con.close()
    columns, types, rows = json_rows(result.table)
    return QueryResult(columns, rows, result.positions, result.truncated, types)


def _print(result: QueryResult, fmt: str) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(result.records(), ensure_ascii=False) + "\n")
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        for row in result.rows:
            writer.writerow(["" if v is None else json.dumps(v) if isinstance(v, dict | list) else v for v in row])
    else:
        table = Table(show_lines=False, header_style="bold")
        for column in result.columns:
            table.add_column(column, overflow="fold")
        for row in result.rows:
            table.add_row(*["[dim]null[/]" if v is None else json.dumps(v) if isinstance(v, dict | list) else str(v)
                            for v in row])
        out.print(table)
        at = ", ".join(f"{s} {n}" for s, n in result.positions.items())
        err.print(f"[dim]{len(result.rows)} row(s); views at {at}[/]")
    if result.truncated:
        err.print(f"[yellow]result cut at {len(result.rows)} rows[/] (raise --limit or narrow the query)")


@app.command("projector")
def projector_command(
    db: Annotated[Path | None, typer.Option(help="The DuckDB file of the views (default <data_dir>/views.duckdb)")] = None,
    hub: Hub = None,
) -> None:
    """Run the projector alone: project EVENTS, DATA and DEADLETTERS into DuckDB and serve hivebus.query."""
    from hivebus.projections.runner import Projector, run_until_signalled

    def announce(projector: Projector) -> None:
        err.print(f"projector: {projector.db_path} <- {projector.settings.nats_url} (Ctrl-C stops)")

    run(run_until_signalled(settings(hub), db, announce))
