"""The web dashboard in headless Chromium against ``hivebus up --virtual-nodes 2 --demo``.

What the pages show is compared with the views themselves (``POST /api/v1/sql``), read again
until both agree (the page follows the log live, so a heartbeat may land in between). The last
test SIGKILLs virtual node V002's agent: its heartbeats stop, the hub's health timer declares it
offline, and the open page shows it from the event stream, without a reload.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import DEMO_JOB, NODES, REPO, Up, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

WAIT = 60_000  # ms: playwright's waits; generous, nothing is timed
PAGES = {
    "nodes": ("#/nodes", "#nodes tbody tr[data-node]"),
    "node": ("#/nodes/V001", '.plot[data-name="env.temperature"] svg.chart'),
    "jobs": ("#/jobs", f'#jobs tr[data-job="{DEMO_JOB}"]'),
    "job": (f"#/jobs/{DEMO_JOB}", "#goals tr[data-goal]"),
    "apps": ("#/apps", "#apps"),
    "data": ("#/data", "#count"),
    "dead-letters": ("#/dead-letters", ".error"),  # anonymous: the API says admins only
}


def clock(iso: str | None) -> str:
    """A view's timestamp as the dashboard prints it (UTC, to the second)."""
    return "—" if iso is None else iso.replace("T", " ").split(".")[0].rstrip("Z")


def goto(page: Any, up: Up, route: str) -> None:
    page.goto(f"{up.url}/{route}")


def test_each_page_loads(up: Up, page: Any, screenshots: Path) -> None:
    for name, (route, ready) in PAGES.items():
        goto(page, up, route)
        page.locator(ready).first.wait_for(timeout=WAIT)
        if name != "dead-letters":
            assert page.locator(".error").count() == 0, page.locator(".error").first.inner_text()
        page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)
    # a file the dashboard does not ship is a JSON 404, not a path into the package
    answer = page.request.get(f"{up.url}/ui/dashboard.py")
    assert answer.status == 404 and "no file" in answer.json()["error"]
    assert page.request.get(f"{up.url}/ui/..%2Fdashboard.py").status == 404


def shown_nodes(page: Any) -> list[dict[str, Any]]:
    return page.eval_on_selector_all("#nodes tbody tr[data-node]", """rows => rows.map(r => ({
        node_id: r.dataset.node, status: r.dataset.status,
        heartbeat: r.querySelector('td.heartbeat').firstChild.textContent,
        sensors: [...r.querySelectorAll('[data-sensor]')].map(s => [s.dataset.sensor, s.dataset.lost === 'true']),
        backlog: r.querySelector('td.backlog').firstChild.textContent,
        executors: r.querySelector('td.executors').textContent}))""")


def viewed_nodes(up: Up) -> list[dict[str, Any]]:
    nodes = up.sql("select node_id, status, last_heartbeat, backlog_messages, executors from nodes order by node_id")
    sensors = up.sql("select node, sensor, status from node_sensors order by node, sensor")
    return [{
        "node_id": n["node_id"], "status": n["status"], "heartbeat": clock(n["last_heartbeat"]),
        "sensors": [[s["sensor"], s["status"] == "lost"] for s in sensors if s["node"] == n["node_id"]],
        "backlog": f"{n['backlog_messages'] or 0} msgs", "executors": ", ".join(n["executors"] or []) or "—",
    } for n in nodes]  # fmt: skip


def test_the_nodes_shown_equal_the_view(up: Up, page: Any, screenshots: Path) -> None:
    goto(page, up, "#/nodes")
    page.locator("#nodes tbody tr[data-node]").nth(len(NODES) - 1).wait_for(timeout=WAIT)

    def same() -> list[dict[str, Any]]:
        shown, viewed = shown_nodes(page), viewed_nodes(up)
        assert shown == viewed, (shown, viewed)
        assert {n["status"] for n in shown} == {"online"}, shown  # both nodes beat
        return shown

    shown = eventually(same, 60, "the nodes table to equal the nodes view, both online")
    assert [n["node_id"] for n in shown] == list(NODES)
    assert all(n["sensors"] == [["bme680", False]] for n in shown)
    shot = screenshots / "dashboard.png"
    page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": 1280, "height": 400})
    if os.environ.get("HIVEBUS_UPDATE_SCREENSHOT") == "1":  # `make screenshot`: the README shows it
        (REPO / "docs" / "img").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / "img" / "dashboard.png")


def test_the_node_page_plots_its_readings_and_the_temperature_plot_grows(up: Up, page: Any) -> None:
    goto(page, up, "#/nodes/V001?window=15m")
    chart = page.locator('.plot[data-name="env.temperature"] svg.chart')
    chart.wait_for(timeout=WAIT)
    page.evaluate("window.__not_reloaded = true")
    before = int(chart.get_attribute("data-points"))
    assert before > 0
    # one plot per reading name the node sent in the window
    names = {r["name"] for r in up.sql("select distinct name from readings where node = 'V001' and value is not null "
                                       "and timestamp > (now() - interval 15 minute)::timestamp")}  # fmt: skip
    shown = set(page.eval_on_selector_all(".plot[data-name]", "ps => ps.map(p => p.dataset.name)"))
    assert {"env.temperature", "env.pressure", "env.relative_humidity"} <= shown <= names | {"env.temperature"}
    # the virtual sensor samples every 10 s: new points arrive from the stream, no reload
    page.wait_for_function(
        f"""() => Number(document.querySelector('.plot[data-name="env.temperature"] svg.chart')
               ?.dataset.points) > {before}""",
        timeout=WAIT,
    )
    assert page.evaluate("window.__not_reloaded") is True
    # its plugin runs are the view's latest runs of the node
    runs = page.eval_on_selector_all("table.runs tr[data-run]", "rs => rs.map(r => r.dataset.run)")
    viewed = [r["run_id"] for r in up.sql("select run_id from plugin_runs where node = 'V001'")]
    assert runs and set(runs) <= set(viewed)
    # another window is another query
    page.select_option("#window", "5m")
    page.wait_for_function("() => location.hash.endsWith('window=5m')")
    chart.wait_for(timeout=WAIT)


def shown_jobs(page: Any) -> list[dict[str, Any]]:
    return page.eval_on_selector_all("#jobs tbody tr[data-job]", """rows => rows.map(r => ({
        job_id: r.dataset.job, state: r.dataset.state,
        goals: [...r.querySelectorAll('[data-goal]')].map(g => g.dataset.goal)}))""")


def test_the_jobs_shown_equal_the_view(up: Up, page: Any) -> None:
    goto(page, up, "#/jobs")
    page.locator(f'#jobs tr[data-job="{DEMO_JOB}"]').wait_for(timeout=WAIT)

    def same() -> bool:
        jobs = up.sql("select job_id, state from jobs order by job_id")
        goals = up.sql("select job_id, node, plugin from assignments order by job_id, node, plugin")
        viewed = [{"job_id": j["job_id"], "state": j["state"],
                   "goals": [f"{g['node']}/{g['plugin']}" for g in goals if g["job_id"] == j["job_id"]]} for j in jobs]
        assert shown_jobs(page) == viewed, (shown_jobs(page), viewed)
        return True

    eventually(same, 60, "the jobs table to equal the jobs and assignments views")
    demo = next(j for j in shown_jobs(page) if j["job_id"] == DEMO_JOB)
    assert demo["state"] == "Running" and demo["goals"] == [f"{n}/bme680" for n in NODES]

    # a user's jobs
    goto(page, up, "#/jobs?user=waggle")
    page.wait_for_function("() => document.querySelector('#jobs-user')?.value === 'waggle'", timeout=WAIT)
    page.locator(f'#jobs tr[data-job="{DEMO_JOB}"]').wait_for(timeout=WAIT)
    assert [j["job_id"] for j in shown_jobs(page)] == [r["job_id"] for r in up.sql("select job_id from jobs where user = 'waggle' order by job_id")]
    page.fill("#jobs-user", "nobody")
    page.press("#jobs-user", "Enter")
    page.get_by_text("no jobs of nobody").wait_for(timeout=WAIT)

    goto(page, up, "#/jobs")
    page.click(f'#jobs a[href="#/jobs/{DEMO_JOB}"]')
    page.locator("#rules li").first.wait_for(timeout=WAIT)
    job = up.sql(f"select science_rules from jobs where job_id = '{DEMO_JOB}'")[0]
    assert page.locator("#rules li").all_inner_texts() == job["science_rules"]
    goals = page.eval_on_selector_all("#goals tr[data-goal]", "rs => rs.map(r => r.dataset.goal)")
    assert goals == [f"{n}/bme680" for n in NODES]
    assert page.locator("table.runs tr[data-run]").count() > 0  # the demo's plugin runs
    assert page.locator("#triggers").is_visible()


def test_the_app_store_shows_the_demo_app_and_its_grants_after_sign_in(up: Up, page: Any, tmp_path: Path) -> None:
    bundle = up.sql("select bundle_id, version, state, public from bundles")[0]
    assert bundle["public"] is True  # the demo makes it public: anyone sees it
    goto(page, up, "#/apps")
    page.locator('#apps tr[data-app="waggle/plugin-bme680"]').wait_for(timeout=WAIT)
    page.click('#apps a[href="#/apps/waggle/plugin-bme680"]')
    page.locator("#versions tr[data-version]").first.wait_for(timeout=WAIT)
    versions = page.eval_on_selector_all("#versions tr[data-version]", "rs => rs.map(r => [r.dataset.version, r.dataset.state])")
    assert versions == [[bundle["version"], bundle["state"]]]
    for metric in ("cpu_seconds", "mem_bytes", "wall_seconds"):
        bars = page.locator(f'#profiles [data-metric="{metric}"] svg.chart')
        assert int(bars.get_attribute("data-bars")) >= 3, metric  # p50, p95, max of >= 1 class
    shown = int(page.locator("tr[data-profile]").first.get_attribute("data-runs"))
    assert 0 < shown <= up.sql("select sum(runs) as n from profiles")[0]["n"]
    # anonymous may not read the grants; the owner, signed in, may
    assert page.locator("p#permissions").is_visible()

    # a private app of waggle's (its homepage a script: shown as text, never a link)
    app = tmp_path / "plugin-heat-index"
    shutil.copytree(REPO / "examples/plugins/plugin-heat-index", app)
    manifest = (app / "sage.yaml").read_text()
    (app / "sage.yaml").write_text(manifest.replace("homepage: https://github.com/example/plugin-heat-index",
                                                    "homepage: javascript:alert(document.domain)"))
    pushed = up.cli("ecr", "push", str(app / "sage.yaml"), "--user", "waggle")
    assert "registered waggle/plugin-heat-index:0.1.0" in pushed
    token = up.cli("user", "add", "waggle").strip().splitlines()[-1]
    page.fill("#token", token)
    with page.expect_request(lambda r: r.url.endswith("/api/v1/apps/waggle/plugin-bme680")) as sent:
        page.click("#signin-save")
    assert sent.value.headers.get("authorization") == f"sage {token}"
    assert page.evaluate("localStorage.getItem('hivebus.token')") == token
    grants = page.locator("table#permissions tbody tr")
    grants.first.wait_for(timeout=WAIT)
    viewed = up.sql("select resource, grantee_type, grantee, permission from bundle_permissions order by all")
    assert [[c.strip() for c in row[1:4]] for row in page.eval_on_selector_all(
        "table#permissions tbody tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))")] == [
        [v["resource"], f"{v['grantee_type']} {v['grantee']}", v["permission"]] for v in viewed]
    assert viewed and viewed[0]["grantee"] == "AllUsers"
    # signed in, the store lists waggle's private app too; signed out, only the public one
    goto(page, up, "#/apps")
    page.locator('#apps tr[data-app="waggle/plugin-heat-index"]').wait_for(timeout=WAIT)
    goto(page, up, "#/apps/waggle/plugin-heat-index")
    page.get_by_text("javascript:alert(document.domain)").wait_for(timeout=WAIT)
    assert page.locator('a[href^="javascript:"]').count() == 0
    goto(page, up, "#/apps")
    page.locator('#apps tr[data-app="waggle/plugin-heat-index"]').wait_for(timeout=WAIT)
    page.click("#signout")
    page.wait_for_function("() => !document.querySelector('#apps tr[data-app=\"waggle/plugin-heat-index\"]')"
                           " && document.querySelector('#apps tr[data-app=\"waggle/plugin-bme680\"]')", timeout=WAIT)
    page.locator("#token").wait_for(state="visible", timeout=WAIT)
    assert page.evaluate("localStorage.getItem('hivebus.token')") is None


def test_dead_letters_are_shown_to_admins_only(up: Up, page: Any) -> None:
    goto(page, up, "#/dead-letters")
    page.get_by_text("dead letters are for admins").wait_for(timeout=WAIT)  # the API's own words
    token = up.cli("user", "add", "ops", "--role", "admin").strip().splitlines()[-1]
    page.fill("#token", token)
    page.click("#signin-save")
    page.locator("#dead-letters").wait_for(timeout=WAIT)
    shown = page.eval_on_selector_all("#dead-letters tr[data-letter]", "rs => rs.map(r => r.dataset.letter)")
    viewed = up.sql("select stream, seq, consumer from dead_letters order by stream, seq, consumer")
    assert shown == [f"{d['stream']}/{d['seq']}/{d['consumer']}" for d in viewed]


def test_a_data_query_plots_and_downloads_csv(up: Up, page: Any, tmp_path: Path) -> None:
    last = up.sql("select max(timestamp) as t from readings where name = 'env.temperature' and node = 'V001'")[0]["t"]
    end = datetime.fromisoformat(last.replace("Z", "+00:00")) + timedelta(microseconds=1)
    start = end - timedelta(minutes=10)
    fields = {"start": start.isoformat().replace("+00:00", "Z"), "end": end.isoformat().replace("+00:00", "Z")}
    body = {**fields, "filter": {"name": "env.temperature", "node": "V001"}}
    expected = [json.loads(line) for line in up.post("/api/v1/query", body).decode().splitlines() if line.strip()]
    assert expected

    goto(page, up, "#/data?run=0")
    page.fill('input[name="start"]', fields["start"])
    page.fill('input[name="end"]', fields["end"])
    page.fill('input[name="filter.name"]', "env.temperature")
    page.fill('input[name="filter.node"]', "V001")
    page.click("#run")
    page.wait_for_function(f"() => document.querySelector('#count')?.dataset.count === '{len(expected)}'", timeout=WAIT)
    assert int(page.locator('#result svg.chart').get_attribute("data-points")) == len(expected)
    with page.expect_download() as download:
        page.click("#csv")
    saved = tmp_path / "readings.csv"
    download.value.save_as(saved)
    rows = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert [(r["timestamp"], r["name"], float(r["value"]), r["meta.node"]) for r in rows] == [
        (e["timestamp"], e["name"], e["value"], e["meta"]["node"]) for e in expected
    ]


def test_a_node_going_offline_shows_without_a_reload(up: Up, page: Any, screenshots: Path) -> None:
    """Last: it stops V002 for good."""
    goto(page, up, "#/nodes")
    row = page.locator('#nodes tr[data-node="V002"]')
    row.wait_for(timeout=WAIT)
    page.wait_for_selector("#live.on", timeout=WAIT)  # the event stream is open
    page.evaluate("window.__not_reloaded = true")
    up.kill_node("V002")  # SIGKILL: no more heartbeats; health declares it offline after OFFLINE_AFTER
    page.wait_for_selector('#nodes tr[data-node="V002"][data-status="offline"]', timeout=150_000)
    assert page.evaluate("window.__not_reloaded") is True
    heard = page.evaluate("window.hivebusLive.recent")
    assert {"type": "node.offline", "subject": "V002"} in [{"type": e["type"], "subject": e["subject"]} for e in heard]
    # it stays offline (a node whose beat came late would be back at once): the view agrees
    eventually(lambda: up.sql("select status from nodes where node_id = 'V002'")[0]["status"] == "offline"
               and "no heartbeat" in row.inner_text() and row.get_attribute("data-status") == "offline",
               60, "V002 offline in the view and on the page")  # fmt: skip
    page.screenshot(path=str(screenshots / "node-offline.png"))
    # V001 beat all along (every OFFLINE_AFTER / 3 s): it never went offline
    assert up.sql("select count(*) as n from events where type = 'node.offline' and subject = 'V001'")[0]["n"] == 0
