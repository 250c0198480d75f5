"""``hivebus data query``: readings as sage-data-client returns them (see ``hivebus.data``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hivebus.cli.app import Hub, app, err, out
from hivebus.errors import QueryError

data_app = typer.Typer(name="data", help="Sensor data (readings), queried like sage-data-client.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("query")
def data_query(
    start: Annotated[str, typer.Option(help='Start (inclusive): relative ("-1h", "-30min", "-1h30m") or ISO 8601')],
    end: Annotated[str | None, typer.Option(help="End (exclusive), relative or ISO 8601; default: now")] = None,
    head: Annotated[int | None, typer.Option(help="Keep the earliest N readings of each series")] = None,
    tail: Annotated[int | None, typer.Option(help="Keep the latest N readings of each series")] = None,
    filter: Annotated[list[str] | None, typer.Option(
        "--filter", help="KEY=VALUE on name or a meta key (vsn, node, plugin...); a VALUE with * or | is a "
        "regular expression matched whole (name=env.*, vsn='W0.*|W1.*'), else exact; repeatable")] = None,
    experimental_func: Annotated[str | None, typer.Option(
        help="Aggregate each series: mean, min, max, sum or count")] = None,
    experimental_window: Annotated[str | None, typer.Option(
        help='Window of the aggregation, e.g. "1m", "10s" (default: the whole range)')] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json (an array of objects)")] = "table",
    limit: Annotated[int, typer.Option(help="Most readings returned")] = 1_000_000,
    rows: Annotated[int, typer.Option(help="Rows shown by --format table")] = 40,
    db: Annotated[Path | None, typer.Option(help="Read this DuckDB file instead of asking the hub")] = None,
    hub: Hub = None,
) -> None:
    """Readings between --start and --end, e.g. `hivebus data query --start -1h --filter 'name=env.*'`."""
    import hivebus.data

    if fmt not in ("table", "csv", "json"):
        raise QueryError(f"--format {fmt!r}: choose table, csv or json")
    frame = hivebus.data.query(start, end, head=head, tail=tail, filter=_filters(filter or []), hub=hub,
                               db=db, limit=limit, experimental_func=experimental_func,
                               experimental_window=experimental_window)
    if fmt in ("csv", "json"):
        frame = frame.assign(timestamp=_iso(frame["timestamp"]))
    if fmt == "csv":
        frame.to_csv(sys.stdout, index=False)
        return
    if fmt == "json":
        records = [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
        sys.stdout.write(json.dumps(records, ensure_ascii=False) + "\n")
        return
    table = Table(header_style="bold")
    for column in frame.columns:
        table.add_column(str(column), overflow="fold")
    for row in frame.head(rows).itertuples(index=False):
        table.add_row(*["" if _missing(v) else str(v) for v in row])
    out.print(table)
    series = frame.drop(columns=["timestamp", "value"]).astype(str).drop_duplicates().shape[0] if len(frame) else 0
    err.print(f"[dim]{len(frame)} reading(s) in {series} series; showing {min(rows, len(frame))}[/]")


def _iso(timestamps: Any) -> Any:
    """UTC times as ISO 8601 text with every nanosecond (``2025-05-01T10:30:00.123456789Z``)."""
    import numpy as np

    naive = timestamps.dt.tz_convert(None).to_numpy(dtype="datetime64[ns]")
    return np.char.add(np.datetime_as_string(naive, unit="ns"), "Z")


def _filters(items: list[str]) -> dict[str, str]:
    filters: dict[str, str] = {}
    for item in items:
        key, sep, pattern = item.partition("=")
        if not sep or not key.strip():
            raise QueryError(f"--filter {item!r}: write KEY=VALUE, e.g. name=env.temperature or 'vsn=W0.*'")
        filters[key.strip()] = pattern
    return filters


def _missing(value: Any) -> bool:
    try:
        return value is None or value != value  # None or NaN
    except (TypeError, ValueError):
        return False


def _plain(value: Any) -> Any:
    if _missing(value):
        return None
    if hasattr(value, "isoformat"):
        text = value.isoformat()
        return text.replace("+00:00", "Z")
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value
