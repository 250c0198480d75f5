"""hivebus.data against sage-data-client 0.9.1: the same readings, the same frames.

The readings are folded by the real ``readings`` view into a real DuckDB file. Two oracles:

* sage-data-client itself, pointed (``endpoint=``) at a tiny HTTP server that answers its
  request body with ``hivebus.data.answer``: the frame sage-data-client builds from hivebus's
  records must equal ``hivebus.data.query``'s frame (``assert_frame_equal``), for every time
  form, filter, head/tail and aggregation below;
* Beehive's selection rules written out plainly here (anchored regex filters, one point per
  series and timestamp with the later write winning, head/tail per series, end = now): the
  frame ``sage_data_client.load`` builds over the records they select must equal hivebus's
  (rows compared series by series, since the API's order of series is its own).
"""

from __future__ import annotations

import io
import json
import math
import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest
import sage_data_client
from pandas.testing import assert_frame_equal

import hivebus.data
from hivebus.errors import QueryError
from hivebus.plugin import reading_body
from hivebus.projections.views.base import Item
from hivebus.projections.views.readings import ReadingsView
from hivebus.schemas import Event
from hivebus.schemas.data import Reading

NOW = time.time_ns()
MIN = 60 * 10**9
W = {"node": "W001", "vsn": "W001", "sensor": "bme680"}
V = {"node": "W097", "vsn": "W097", "sensor": "bme680"}
END = pd.Timestamp(NOW // 1000 * 1000, unit="ns", tz="UTC")  # a window's last point is stamped with the end


def published() -> list[tuple[str, Any, dict[str, str], int]]:
    """(name, value, meta, timestamp) in the order they were written."""
    out: list[tuple[str, Any, dict[str, str], int]] = []
    for i, minutes in enumerate(range(170, 0, -10)):
        ts = NOW - minutes * MIN
        out.append(("env.temperature", 20.0 + i / 4, W, ts))
        out.append(("env.temperature", 10.0 + i, V, ts))
        out.append(("env.pressure", 1000 + i, W, ts))  # ints only: int64
        out.append(("env.temperature", 5.5, {"node": "W001", "vsn": "W001"}, ts + 1))  # another meta set: another series
        out.append(("sys.uptime", i * 60, {"node": "W1", "vsn": "W1"}, ts))
    out.append(("cam.label", "bird", W, NOW - 30 * MIN))
    out.append(("cam.label", 3, W, NOW - 20 * MIN))  # mixed: object
    out.append(("sys.counter", 2**60 + 1, V, NOW - 20 * MIN))  # every digit
    out.append(("env.flag", True, V, NOW - 20 * MIN))
    out.append(("env.flag", False, V, NOW - 10 * MIN))
    out.append(("env.raw", math.nan, V, NOW - 20 * MIN))
    out.append(("env.raw", math.inf, V, NOW - 10 * MIN))
    # written twice: the later write wins
    out.append(("env.pressure", 999_999, W, NOW - 50 * MIN))
    out.append(("env.temperature", 10.0, V, NOW + 10 * MIN))  # in the future: after end=now
    return out


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DuckDB file with the readings above, folded by the real view."""
    view = ReadingsView()
    items = []
    for seq, (name, value, meta, ts) in enumerate(published(), start=1):
        body = reading_body(name, value, meta, ts, "all", {})
        event = Event.new(Reading.model_validate(body), source=f"node/{meta['node']}", subject=meta["node"], nodeseq=seq)
        items.append(Item(seq=seq, subject=f"data.{meta['node']}.{name}", event=event))
    applied = view.apply(items, {})
    assert not applied.failures
    (append,) = applied.changes
    path = tmp_path_factory.mktemp("data") / "views.duckdb"
    con = duckdb.connect(str(path))
    con.execute(view.table.create_sql())
    columns = append.columns
    for row in zip(*columns.values(), strict=True):
        record = dict(zip(columns, row, strict=True))
        keys = [k for k, _ in record["meta"]]
        values = [v for _, v in record["meta"]]
        con.execute(
            "INSERT INTO readings VALUES (make_timestamp_ns(?), ?, ?, ?, ?, MAP(?::VARCHAR[], ?::VARCHAR[]), ?)",
            [record["timestamp"], record["name"], record["value"], record["value_text"], record["node"], keys, values,
             record["seq"]],
        )
    con.close()
    return path


@pytest.fixture(scope="module")
def endpoint(db: Path) -> Iterator[str]:
    """A Sage data API for sage-data-client: its body in, hivebus.data.answer's records out."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            try:
                lines = "".join(json.dumps(hivebus.data.wire_record(r)) + "\n" for r in hivebus.data.answer(body, db=db))
            except QueryError as exc:
                self.send_response(400)
                self.end_headers()
                self.wfile.write(str(exc).encode())
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(lines.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v1/query"
    server.shutdown()


# --- what Beehive selects, written plainly ----------------------------------------------------


def beehive(start_ns: int, end_ns: int | None = None, head: int | None = None, tail: int | None = None,
            filter: dict[str, str] | None = None) -> list[dict[str, Any]]:
    end_ns = time.time_ns() if end_ns is None else end_ns
    points: dict[tuple[Any, ...], dict[str, Any]] = {}
    for name, value, meta, ts in published():
        fields = {"name": name, **meta}
        if not start_ns <= ts < end_ns:
            continue
        ok = True
        for key, want in (filter or {}).items():
            have = fields.get(key)
            if have is None:
                ok = False
            elif "*" in want or "|" in want:
                ok = ok and re.fullmatch(f"^({want})$", have) is not None
            else:
                ok = ok and have == want
        if ok:
            series = (name, tuple(sorted(meta.items())))
            points[(*series, ts)] = {"timestamp": ts, "name": name, "value": value, "meta": dict(sorted(meta.items()))}
    by_series: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for key in sorted(points, key=lambda k: k[2]):
        by_series.setdefault(key[:2], []).append(points[key])
    out = []
    for rows in by_series.values():
        out += rows[:head] if head else rows[-tail:] if tail else rows
    return out


def load(records: list[dict[str, Any]]) -> pd.DataFrame:
    return sage_data_client.load(io.StringIO("".join(json.dumps(r) + "\n" for r in records)))


def by_series(frame: pd.DataFrame) -> pd.DataFrame:
    keys = ["name", *sorted(c for c in frame.columns if c.startswith("meta.")), "timestamp"]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


CASES: list[dict[str, Any]] = [
    {"start": "-1h", "filter": {"name": "env.temperature"}},
    {"start": "-3h", "filter": {"name": "env.*"}},
    {"start": "-3h", "filter": {"vsn": "W0*"}},  # a regex: "W" then zeros, as on Sage (matches nothing here)
    {"start": "-3h", "filter": {"vsn": "W0.*"}},
    {"start": "-3h", "filter": {"vsn": "W001|W097", "name": "env.temp.*"}},
    {"start": "-3h", "filter": {"vsn": "W1"}},
    {"start": "-3h", "filter": {"sensor": "bme680"}, "tail": 2},
    {"start": "-3h", "filter": {"name": "env.pressure"}, "head": 3},
    {"start": "-3h", "filter": {"name": "env.pressure"}},  # int64, the rewritten point once
    {"start": "-3h", "filter": {"name": "cam.label|sys.counter"}},  # object, every digit
    {"start": "-3h", "filter": {"name": "env.flag"}},  # bools, as published
    {"start": "-3h", "filter": {"name": "env.raw"}},  # NaN and inf
    {"start": "-1h30m", "end": "-1h"},
    {"start": "-100min", "end": "-45min", "filter": {"node": "W097"}},
    {"start": timedelta(hours=-2), "filter": {"name": "env.temperature", "vsn": "W097"}},
    {"start": pd.Timestamp(NOW - 95 * MIN, unit="ns", tz="UTC"), "filter": {"name": "sys.uptime"}},
    {"start": pd.Timestamp(NOW - 95 * MIN, unit="ns", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ"), "tail": 1},
    {"start": "-3h", "filter": {"name": "nothing.here"}},  # the empty frame
    {"start": "-3h", "filter": {"name": "env.temperature"}, "experimental_func": "mean", "experimental_window": "1h",
     "end": END},
    {"start": "-3h", "filter": {"name": "env.pressure"}, "experimental_func": "count", "experimental_window": "30m",
     "end": END},
    {"start": "-3h", "filter": {"name": "env.pressure"}, "experimental_func": "max", "end": END},
    {"start": "-3h", "filter": {"name": "sys.uptime"}, "experimental_func": "sum", "experimental_window": "1h",
     "end": END},
    {"start": "-3h", "filter": {"name": "env.temperature", "vsn": "W001"}, "experimental_func": "min",
     "experimental_window": "1h", "tail": 1, "end": END},
]


def case_id(case: dict[str, Any]) -> str:
    """A case's test id without its clock times (they are relative to when it was collected,
    and pytest-xdist's workers must collect the same ids)."""
    text = json.dumps(case, default=lambda v: "<time>" if isinstance(v, pd.Timestamp) else str(v))
    return re.sub(r"\d{4}-\d\d-\d\d[ T][\d:.]+(Z|[+-]\d\d:\d\d)?", "<time>", text)[:80]


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_sage_data_client_over_hivebus_answers_gives_hivebus_frame(case: dict[str, Any], db: Path, endpoint: str) -> None:
    theirs = sage_data_client.query(endpoint=endpoint, **case)
    ours = hivebus.data.query(db=db, **case)
    assert_frame_equal(ours, theirs)


SELECTIONS: list[dict[str, Any]] = [c for c in CASES if "experimental_func" not in c and "end" not in c]


@pytest.mark.parametrize("case", SELECTIONS, ids=[case_id(c) for c in SELECTIONS])
def test_selection_follows_beehive(case: dict[str, Any], db: Path) -> None:
    start_ns = hivebus.data.resolve_time(case["start"])
    expected = load(beehive(start_ns, head=case.get("head"), tail=case.get("tail"), filter=case.get("filter")))
    ours = hivebus.data.query(db=db, **case)
    assert_frame_equal(by_series(ours), by_series(expected), check_like=True)
    if len(ours):
        assert str(ours["value"].dtype) == str(expected["value"].dtype)


def test_dtypes_are_sage_data_clients(db: Path) -> None:
    def dtype(name: str) -> str:
        return str(hivebus.data.query("-3h", filter={"name": name}, db=db)["value"].dtype)

    assert dtype("env.pressure") == "int64"
    assert dtype("env.temperature") == "float64"
    assert dtype("cam.label") == "object"
    frame = hivebus.data.query("-3h", filter={"name": "env.flag|env.raw|sys.counter"}, db=db)
    values = {(row.name, str(row.value)) for row in frame.itertuples()}
    assert values == {("env.flag", "True"), ("env.flag", "False"), ("env.raw", "nan"), ("env.raw", "inf"),
                      ("sys.counter", str(2**60 + 1))}


def test_rows_are_grouped_by_series_and_time_ordered_within(db: Path) -> None:
    frame = hivebus.data.query("-3h", db=db)
    series = frame.drop(columns=["timestamp", "value"]).apply(lambda row: "|".join(map(str, row)), axis=1)
    seen: list[str] = []
    for key in series:
        if not seen or seen[-1] != key:
            assert key not in seen, "a series appears in two runs"
            seen.append(key)
    for _, group in frame.groupby(series, sort=False):
        assert group["timestamp"].is_monotonic_increasing


def test_end_defaults_to_now_and_is_exclusive(db: Path) -> None:
    future = hivebus.data.query("-1h", filter={"name": "env.temperature", "vsn": "W097"}, db=db)
    assert future["timestamp"].max() < pd.Timestamp.now(tz="UTC")
    edge = pd.Timestamp(NOW - 10 * MIN, unit="ns", tz="UTC")
    ending = hivebus.data.query(edge - pd.Timedelta("1min"), edge, filter={"name": "env.pressure"}, db=db)
    starting = hivebus.data.query(edge, edge + pd.Timedelta("1min"), filter={"name": "env.pressure"}, db=db)
    assert len(ending) == 0 and list(starting["timestamp"]) == [edge]


def test_head_with_tail_is_a_value_error_as_in_sage_data_client(db: Path, endpoint: str) -> None:
    with pytest.raises(ValueError, match="only one of") as theirs:
        sage_data_client.query("-1h", head=1, tail=1, endpoint=endpoint)
    with pytest.raises(ValueError, match="only one of") as ours:
        hivebus.data.query("-1h", head=1, tail=1, db=db)
    assert isinstance(ours.value, QueryError) and str(theirs.value) in str(ours.value)


@pytest.mark.parametrize(("key", "hint"), [("meta.vsn", "write 'vsn'"), ("timestamp", "start/end"), ("na me", "meta key")])
def test_bad_filter_keys_are_clear_errors_never_an_empty_frame(key: str, hint: str, db: Path) -> None:
    with pytest.raises(QueryError, match=re.escape(hint)):
        hivebus.data.query("-1h", filter={key: "W001"}, db=db)


def test_a_bad_regex_and_bad_times_say_what_to_write(db: Path) -> None:
    with pytest.raises(QueryError, match="regular expression"):
        hivebus.data.query("-1h", filter={"name": "env.(|"}, db=db)
    with pytest.raises(QueryError, match="not a time"):
        hivebus.data.query("yesterday-ish", db=db)
    with pytest.raises(QueryError, match="experimental_func"):
        hivebus.data.query("-1h", experimental_func="median", db=db)


def test_load_reads_what_sage_data_client_loads(tmp_path: Path) -> None:
    records = beehive(NOW - 200 * MIN)
    path = tmp_path / "saved.ndjson"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert_frame_equal(hivebus.data.load(path), sage_data_client.load(str(path)))
    assert_frame_equal(hivebus.data.load(str(path)), sage_data_client.load(path))
    empty = tmp_path / "empty.ndjson"
    empty.write_text("")
    assert_frame_equal(hivebus.data.load(empty), sage_data_client.load(str(empty)))


def test_a_star_is_a_regex_not_a_glob(db: Path) -> None:
    assert len(hivebus.data.query("-3h", filter={"vsn": "W0*"}, db=db)) == 0  # "W" then zeros
    assert set(hivebus.data.query("-3h", filter={"vsn": "W0.*"}, db=db)["meta.vsn"]) == {"W001", "W097"}
    assert set(hivebus.data.query("-3h", filter={"vsn": "W1*"}, db=db)["meta.vsn"]) == {"W1"}
