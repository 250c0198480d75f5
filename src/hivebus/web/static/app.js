/* hivebus dashboard: vanilla JavaScript and SVG, no build step.
 *
 * Pages (hash routes): #/nodes, #/nodes/<node>, #/jobs, #/jobs/<job>, #/apps,
 * #/apps/<namespace>/<name>, #/data. Data comes from the JSON API (/api/v1/...): the read
 * API (GET /api/v1/nodes...) where the server has it, else SQL on the views (POST
 * /api/v1/sql); readings from the Sage data API (POST /api/v1/query). Live updates follow
 * /api/v1/stream (Server-Sent Events). A user token (Sign in) is kept in localStorage and
 * sent as "Authorization: sage <token>".
 */
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "hivebus.token";
const COLORS = ["#0b5fa5", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#5f3dc4", "#0c8599", "#e67700"];
const WINDOWS = ["5m", "15m", "1h", "6h", "24h"];
const JSON_COLUMNS = new Set(["attributes", "spec", "inputs", "metadata", "artifacts", "provenance", "data"]);

// --- the hub's clock: the Date header of the latest API answer ---------------------------
const hubClock = { date: null, at: 0 };
function hubNow() {
  return hubClock.date === null ? null : hubClock.date + (performance.now() - hubClock.at);
}

// --- API -----------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, error, hint) {
    super(hint ? `${error} (${hint})` : error);
    this.status = status;
    this.error = error;
    this.routeMissing = (status === 404 || status === 405) && (error === "Not Found" || error === "Method Not Allowed");
  }
}

function token() { return localStorage.getItem(TOKEN_KEY) || ""; }

async function call(method, path, body) {
  const headers = {};
  if (token()) headers["Authorization"] = `sage ${token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let answer;
  try {
    answer = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (exc) {
    throw new ApiError(0, `the hub's web API cannot be reached (${exc.message})`, "is hivebus up / hivebus web running?");
  }
  const date = answer.headers.get("Date");
  if (date) { hubClock.date = Date.parse(date); hubClock.at = performance.now(); }
  if (!answer.ok) {
    let error = answer.statusText, hint = null;
    try { const b = await answer.json(); error = b.error || error; hint = b.hint || null; } catch (_) { /* not JSON */ }
    throw new ApiError(answer.status, error, hint);
  }
  return answer;
}

function plain(row) {
  for (const key of Object.keys(row)) {
    const v = row[key];
    if (JSON_COLUMNS.has(key) && typeof v === "string" && (v.startsWith("{") || v.startsWith("["))) {
      try { row[key] = JSON.parse(v); } catch (_) { /* leave the text */ }
    }
  }
  return row;
}

/** Rows of one read-only statement on the views (POST /api/v1/sql), as objects. */
async function sql(statement, params, minSeq) {
  const body = { sql: statement };
  if (params !== undefined) body.params = params;
  if (minSeq) body.min_seq = minSeq;
  const answer = await (await call("POST", "/sql", body)).json();
  return answer.rows.map((r) => plain(Object.fromEntries(answer.columns.map((c, i) => [c, r[i]]))));
}

async function getJSON(path) { return (await call("GET", path)).json(); }

const missingRoutes = new Set();
/** Every item of a paged read-API list, or, while the server has no such route, the SQL rows. */
async function listing(path, fallbackSql, params) {
  if (!missingRoutes.has(path)) {
    try {
      const items = [];
      let cursor = null;
      do {
        const page = await getJSON(`${path}${path.includes("?") ? "&" : "?"}limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
        items.push(...page.items);
        cursor = page.next;
      } while (cursor);
      return items;
    } catch (exc) {
      if (!(exc instanceof ApiError && exc.routeMissing)) throw exc;
      missingRoutes.add(path);
    }
  }
  return sql(fallbackSql, params);
}

/** Readings of the Sage data API (POST /api/v1/query, newline-delimited JSON records). */
async function dataQuery(body) {
  const text = await (await call("POST", "/query", body)).text();
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
}

// --- DOM -----------------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) node.setAttribute(k, String(v));
  for (const child of children.flat(Infinity)) if (child !== null && child !== undefined) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}
function badge(text, title) { return el("span", { class: `badge ${text}`, title }, text ?? "—"); }
function link(href, text) { return el("a", { href }, text); }
function table(headers, rows, attrs) {
  return el("table", attrs || {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))), el("tbody", {}, rows));
}
function empty(cols, text) { return el("tr", {}, el("td", { colspan: cols, class: "muted" }, text)); }
function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "—")]));
}

// --- formats -------------------------------------------------------------------------------
function when(iso) { return iso ? String(iso).replace("T", " ").replace(/\.\d+/, "").replace("Z", "") : "—"; }
function ms(iso) { return iso ? Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`) : null; }
function ago(iso) {
  const now = hubNow(), t = ms(iso);
  if (now === null || t === null) return "";
  return `${duration(Math.max(0, (now - t) / 1000))} ago`;
}
function duration(s) {
  if (s === null || s === undefined) return "—";
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.round((s % 86400) / 3600)} h`;
}
function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0, v = Number(n);
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}
function num(v, digits = 3) {
  if (v === null || v === undefined) return "—";
  return Number.isInteger(v) ? String(v) : Number(v).toPrecision(digits);
}
function compact(v) {
  const a = Math.abs(v);
  if (a >= 1e12) return `${(v / 1e12).toPrecision(3)}T`;
  if (a >= 1e9) return `${(v / 1e9).toPrecision(3)}G`;
  if (a >= 1e6) return `${(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${(v / 1e3).toPrecision(3)}k`;
  return num(v, 4);
}
function list(v) { return Array.isArray(v) && v.length ? v.join(", ") : "—"; }
function windowSeconds(w) { const m = /^(\d+)([smhd])$/.exec(w); return m ? Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[m[2]] : 3600; }

// --- charts (SVG) --------------------------------------------------------------------------
function niceTicks(lo, hi, count) {
  if (!(hi > lo)) { const d = Math.abs(lo) > 0 ? Math.abs(lo) * 0.05 : 1; lo -= d; hi += d; }
  const raw = (hi - lo) / count, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  const first = Math.floor(lo / step) * step, last = Math.ceil(hi / step) * step;
  for (let t = first; t <= last + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return { lo: first, hi: last, ticks };
}
function clock(t) { return new Date(t).toISOString().slice(11, 19); }

/** A line chart of series [{label, points: [[ms, value]...]}] over [x0, x1] (ms). */
function lineChart(series, { x0, x1, name, width = 520, height = 190 } = {}) {
  const pad = { l: 52, r: 10, t: 8, b: 22 };
  const all = series.flatMap((s) => s.points);
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const lo = x0 ?? Math.min(...xs), hi = Math.max(x1 ?? -Infinity, ...xs);
  const y = niceTicks(ys.length ? Math.min(...ys) : 0, ys.length ? Math.max(...ys) : 1, 4);
  const X = (t) => pad.l + ((t - lo) / Math.max(hi - lo, 1)) * (width - pad.l - pad.r);
  const Y = (v) => height - pad.b - ((v - y.lo) / (y.hi - y.lo || 1)) * (height - pad.t - pad.b);
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "data-name": name, "data-points": all.length, "aria-label": `${name}: ${all.length} points` });
  for (const t of y.ticks) {
    root.append(svg("line", { class: "grid", x1: pad.l, x2: width - pad.r, y1: Y(t), y2: Y(t) }));
    root.append(svg("text", { x: pad.l - 4, y: Y(t) + 3, "text-anchor": "end" }, compact(t)));
  }
  for (let i = 0; i <= 4; i++) {
    const t = lo + ((hi - lo) * i) / 4;
    root.append(svg("text", { x: X(t), y: height - 6, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" }, clock(t)));
  }
  root.append(svg("line", { class: "axis", x1: pad.l, x2: pad.l, y1: pad.t, y2: height - pad.b }));
  root.append(svg("line", { class: "axis", x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b }));
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
    root.append(svg("path", { class: "line", d, stroke: COLORS[i % COLORS.length] }, svg("title", {}, s.label)));
    if (s.points.length === 1) root.append(svg("circle", { cx: X(s.points[0][0]), cy: Y(s.points[0][1]), r: 2.5, fill: COLORS[i % COLORS.length] }));
  });
  if (!all.length) root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no readings in this window"));
  return root;
}
function legend(series) {
  return el("div", { class: "legend" }, series.map((s, i) => el("span", {}, el("i", { style: `background:${COLORS[i % COLORS.length]}` }), s.label)));
}

/** Grouped bars: groups [{label, values: {bar: number}}], bars [names]. */
function barChart(groups, bars, { name, format = num, width = 520 } = {}) {
  const pad = { l: 64, r: 10, t: 8, b: 36 }, height = 200;
  const values = groups.flatMap((g) => bars.map((b) => g.values[b])).filter((v) => v !== null && v !== undefined);
  const y = niceTicks(0, values.length ? Math.max(...values) : 1, 4);
  const Y = (v) => height - pad.b - (v / (y.hi || 1)) * (height - pad.t - pad.b);
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "data-name": name, "data-bars": values.length, "aria-label": name });
  for (const t of y.ticks) {
    root.append(svg("line", { class: "grid", x1: pad.l, x2: width - pad.r, y1: Y(t), y2: Y(t) }));
    root.append(svg("text", { x: pad.l - 4, y: Y(t) + 3, "text-anchor": "end" }, format(t)));
  }
  const gw = (width - pad.l - pad.r) / Math.max(groups.length, 1), bw = Math.min(28, (gw * 0.8) / bars.length);
  groups.forEach((g, gi) => {
    const x0 = pad.l + gi * gw + (gw - bw * bars.length) / 2;
    bars.forEach((b, bi) => {
      const v = g.values[b];
      if (v === null || v === undefined) return;
      root.append(svg("rect", { x: x0 + bi * bw, y: Y(v), width: bw - 2, height: Math.max(0, Y(0) - Y(v)), fill: COLORS[bi % COLORS.length] },
        svg("title", {}, `${g.label} ${b}: ${format(v)}`)));
    });
    root.append(svg("text", { x: pad.l + gi * gw + gw / 2, y: height - 20, "text-anchor": "middle" }, g.label));
  });
  root.append(svg("line", { class: "axis", x1: pad.l, x2: width - pad.r, y1: Y(0), y2: Y(0) }));
  bars.forEach((b, bi) => root.append(svg("text", { x: pad.l + bi * 60, y: height - 4, fill: COLORS[bi % COLORS.length] }, `■ ${b}`)));
  return root;
}

// --- live: one EventSource on /api/v1/stream for the whole app -----------------------------
const live = { source: null, listeners: new Set(), seen: 0, recent: [] };
window.hivebusLive = live; // what the page has heard (the browser tests read it)
function startLive() {
  const indicator = document.getElementById("live");
  const source = new EventSource(`${API}/stream?type=*`);
  live.source = source;
  source.onopen = () => { indicator.textContent = "live"; indicator.className = "live on"; };
  source.onerror = () => { indicator.textContent = "live: reconnecting"; indicator.className = "live off"; };
  source.onmessage = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (_) { return; }
    live.seen++;
    indicator.dataset.seen = String(live.seen);
    live.recent.push({ seq: event.seq, type: event.type, subject: event.subject });
    if (live.recent.length > 200) live.recent.shift();
    for (const listener of live.listeners) listener(event);
  };
}

// --- the router ------------------------------------------------------------------------------
const page = { id: 0, cleanups: [] };
function onLeave(fn) { page.cleanups.push(fn); }
function current(id) { return id === page.id; }
function view() { return document.getElementById("view"); }
/** Replace ``node``'s children (null and false children are left out). */
function fill(node, ...children) { node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false)); }
function show(...children) { fill(view(), ...children); }
function showError(exc) {
  show(el("p", { class: "error", role: "alert" }, exc instanceof Error ? exc.message : String(exc)));
}
function parseHash() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(query || "") };
}

async function route() {
  for (const fn of page.cleanups.splice(0)) fn();
  const id = ++page.id;
  const { parts, query } = parseHash();
  const section = parts[0] || "nodes";
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === section));
  const pages = {
    nodes: () => (parts[1] ? nodePage(id, parts[1], query) : nodesPage(id)),
    jobs: () => (parts[1] ? jobPage(id, parts[1]) : jobsPage(id, query)),
    "dead-letters": () => deadLettersPage(id),
    apps: () => (parts[2] ? appPage(id, parts[1], parts[2]) : appsPage(id)),
    data: () => dataPage(id, query),
  };
  const render = pages[section];
  if (!render) { show(el("p", { class: "error" }, `no page ${section}: see the menu`)); return; }
  document.title = `hivebus · ${section}`;
  try {
    await render();
  } catch (exc) {
    if (current(id)) showError(exc);
  }
}

/** Re-run ``refresh`` on live events ``wanted`` (debounced) and every ``every`` s; off on leave. */
function keepFresh(id, wanted, refresh, every = 30) {
  let timer = null, minSeq = 0;
  const run = (how) => {
    timer = null;
    if (!current(id)) return;
    refresh(how, minSeq).catch((exc) => console.warn("refresh failed", exc));
  };
  const listener = (event) => {
    if (!wanted(event)) return;
    minSeq = Math.max(minSeq, event.seq || 0);
    if (timer === null) timer = setTimeout(() => run("stream"), 500);
  };
  live.listeners.add(listener);
  const poll = setInterval(() => run("poll"), every * 1000);
  onLeave(() => { live.listeners.delete(listener); clearInterval(poll); if (timer) clearTimeout(timer); });
}

// --- nodes -----------------------------------------------------------------------------------
const NODES_SQL = "select * from nodes order by node_id";

async function loadNodes(minSeq) {
  const nodes = minSeq ? await sql(NODES_SQL, undefined, { EVENTS: minSeq }) : await listing("/nodes", NODES_SQL);
  const sensors = await sql("select * from node_sensors order by node, sensor");
  return { nodes, sensors };
}

function sensorBadges(sensors) {
  if (!sensors.length) return "—";
  return sensors.map((s) => el("span", { class: `badge ${s.status === "lost" ? "lost" : "ok"}`, "data-sensor": s.sensor, "data-lost": s.status === "lost" ? "true" : "false", title: s.status === "lost" ? `lost since ${when(s.since)}: ${s.reason || ""}` : `expects ${list(s.expects)}` }, s.status === "lost" ? `${s.sensor} (lost)` : s.sensor));
}

function nodeRow(n, sensors, how) {
  return el("tr", { "data-node": n.node_id, "data-status": n.status, "data-updated-by": how },
    el("td", {}, link(`#/nodes/${encodeURIComponent(n.node_id)}`, n.node_id), n.vsn && n.vsn !== n.node_id ? el("div", { class: "muted" }, n.vsn) : null),
    el("td", { class: "status" }, badge(n.status, n.offline_reason || undefined), el("div", { class: "muted" }, `since ${when(n.status_since)}`), n.offline_reason ? el("div", { class: "muted" }, n.offline_reason) : null),
    el("td", { class: "heartbeat" }, when(n.last_heartbeat), el("div", { class: "muted", "data-age": n.last_heartbeat || "" }, ago(n.last_heartbeat))),
    el("td", {}, `${n.cpus ?? "?"} cpu · load ${num(n.load1)}`, el("div", { class: "muted" }, `mem ${bytes(n.mem_avail)} free of ${bytes(n.mem_total ?? n.memory)}`), el("div", { class: "muted" }, `disk ${bytes(n.disk_avail)} free of ${bytes(n.disk_total ?? n.disk)}`), n.gpu ? el("div", {}, `gpu ${n.gpu}`) : null),
    el("td", { class: "sensors" }, sensorBadges(sensors)),
    el("td", { class: "backlog num" }, `${n.backlog_messages ?? 0} msgs`, el("div", { class: "muted" }, bytes(n.backlog_bytes)), n.backlog_oldest_age_seconds ? el("div", { class: "muted" }, `oldest ${duration(n.backlog_oldest_age_seconds)}`) : null),
    el("td", { class: "executors" }, list(n.executors)),
    el("td", {}, list(n.tags), el("div", { class: "muted" }, n.arch || "")));
}

async function nodesPage(id) {
  const body = el("tbody", {});
  const summary = el("p", { class: "muted" });
  const render = async (how, minSeq) => {
    const { nodes, sensors } = await loadNodes(how === "stream" ? minSeq : 0);
    if (!current(id)) return;
    const online = nodes.filter((n) => n.status === "online").length;
    summary.textContent = `${online} of ${nodes.length} nodes online · updated ${when(new Date(hubNow() ?? Date.now()).toISOString())} (${how})`;
    body.replaceChildren(...(nodes.length ? nodes.map((n) => nodeRow(n, sensors.filter((s) => s.node === n.node_id), how)) : [empty(8, "no node has registered yet")]));
  };
  await render("load", 0);
  if (!current(id)) return;
  show(el("h1", {}, "Nodes"), summary,
    el("table", { id: "nodes" }, el("thead", {}, el("tr", {}, ["Node", "Status", "Last heartbeat", "Resources", "Sensors", "Outbox backlog", "Executors", "Tags"].map((h) => el("th", {}, h)))), body));
  keepFresh(id, (e) => e.type && e.type.startsWith("node."), render);
  const ages = setInterval(() => document.querySelectorAll("[data-age]").forEach((d) => { d.textContent = ago(d.dataset.age); }), 1000);
  onLeave(() => clearInterval(ages));
}

async function nodeDetail(node) {
  try {
    return await getJSON(`/nodes/${encodeURIComponent(node)}`);
  } catch (exc) {
    if (!(exc instanceof ApiError && exc.routeMissing)) throw exc;
  }
  const found = await sql("select * from nodes where node_id = ?", [node]);
  if (!found.length) throw new ApiError(404, `no node ${node}`, "the Nodes page lists the nodes the hub knows");
  return {
    node: found[0],
    sensors: await sql("select * from node_sensors where node = ? order by sensor", [node]),
    runs: await sql("select * from plugin_runs where node = ? order by updated_at desc, run_id limit 20", [node]),
  };
}

const SAME_FOR_A_NODE = new Set(["node", "vsn", "host", "job", "plugin", "units", "simulated"]);
/** A series is a name plus its meta: the label is what tells one series of a node from another. */
function seriesKey(r) {
  return Object.entries(r.meta || {}).filter(([k]) => !SAME_FOR_A_NODE.has(k)).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k}=${v}`).join(" ");
}

function runsTable(runs, withNode) {
  const head = ["Run", ...(withNode ? ["Node"] : []), "Job", "Plugin", "State", "Exit", "CPU s", "Max RSS", "Wall s", "Started", "Ended", "Log"];
  return table(head, runs.length ? runs.map((r) => el("tr", { "data-run": r.run_id, "data-state": r.state },
    el("td", {}, el("code", {}, r.run_id)), withNode ? el("td", {}, link(`#/nodes/${encodeURIComponent(r.node)}`, r.node)) : null,
    el("td", {}, r.job_id ? link(`#/jobs/${encodeURIComponent(r.job_id)}`, r.job_id) : "—"), el("td", {}, r.plugin, el("div", { class: "muted" }, r.bundle_id || "")),
    el("td", {}, badge(r.state, r.reason || undefined), r.reason ? el("div", { class: "muted" }, r.reason) : null), el("td", { class: "num" }, r.exit_code ?? "—"),
    el("td", { class: "num" }, num(r.cpu_seconds)), el("td", { class: "num" }, bytes(r.max_rss_bytes)), el("td", { class: "num" }, num(r.wall_seconds)),
    el("td", {}, when(r.started_at)), el("td", {}, when(r.ended_at)),
    el("td", {}, r.log_tail && r.log_tail.length ? el("details", {}, el("summary", {}, `${r.log_tail.length} lines`), el("pre", {}, r.log_tail.join("\n"))) : "—"))) : [empty(head.length, "no plugin runs yet")], { class: "runs" });
}

async function nodePage(id, node, query) {
  const win = WINDOWS.includes(query.get("window")) ? query.get("window") : "15m";
  const detail = await nodeDetail(node);
  if (!current(id)) return;
  const n = detail.node;
  const picker = el("select", { id: "window", "aria-label": "window", onchange: (e) => { location.hash = `#/nodes/${encodeURIComponent(node)}?window=${e.target.value}`; } },
    WINDOWS.map((w) => el("option", { value: w, selected: w === win }, `last ${w}`)));
  const plots = el("div", { class: "plots", id: "plots" }, el("p", { class: "muted" }, "loading readings…"));
  const runsBox = el("div", {}, runsTable(detail.runs, false));
  show(el("h1", {}, "Node ", n.node_id, " ", badge(n.status)),
    facts([["VSN", n.vsn], ["status", el("span", { id: "node-status", "data-status": n.status }, `${n.status} since ${when(n.status_since)}${n.offline_reason ? ` (${n.offline_reason})` : ""}`)],
      ["last heartbeat", `${when(n.last_heartbeat)} (${ago(n.last_heartbeat)})`], ["registered", when(n.registered_at)],
      ["hardware", `${n.arch || "?"} · ${n.cpus ?? "?"} cpu · ${bytes(n.memory)} memory · ${bytes(n.disk)} disk${n.gpu ? ` · gpu ${n.gpu}` : ""}`],
      ["free", `mem ${bytes(n.mem_avail)} · disk ${bytes(n.disk_avail)} · load ${num(n.load1)}`],
      ["outbox backlog", `${n.backlog_messages ?? 0} messages, ${bytes(n.backlog_bytes)}`], ["executors", list(n.executors)], ["tags", list(n.tags)], ["agent", n.agent_version]]),
    el("h2", {}, "Sensors"),
    table(["Sensor", "Kind", "Expects", "Status", "Since", "Lost"], detail.sensors.length ? detail.sensors.map((s) => el("tr", { "data-sensor": s.sensor }, el("td", {}, s.sensor), el("td", {}, s.kind || "—"), el("td", {}, list(s.expects)), el("td", {}, badge(s.status === "lost" ? "lost" : "ok"), s.reason ? el("div", { class: "muted" }, s.reason) : null), el("td", {}, when(s.since)), el("td", { class: "num" }, s.lost_count ?? 0))) : [empty(6, "no sensors in the manifest")]),
    el("h2", {}, "Recent readings"), el("div", { class: "toolbar" }, picker, link(`#/data?node=${encodeURIComponent(node)}&start=-${win}`, "query these readings")), plots,
    el("h2", {}, "Plugin runs"), runsBox);

  // Readings: the window from the data API, then live from the stream.
  const span = windowSeconds(win) * 1000;
  const byName = new Map();
  const add = (r) => {
    const t = ms(r.timestamp), v = typeof r.value === "number" ? r.value : null;
    if (t === null || v === null) return;
    if (!byName.has(r.name)) byName.set(r.name, new Map());
    const series = byName.get(r.name), key = seriesKey(r);
    if (!series.has(key)) series.set(key, []);
    series.get(key).push([t, v]);
  };
  const records = await dataQuery({ start: `-${win}`, filter: { node } });
  if (!current(id)) return;
  records.forEach(add);
  let drawTimer = null;
  const draw = () => {
    drawTimer = null;
    if (!current(id)) return;
    const end = hubNow() ?? Date.now();
    const names = [...byName.keys()].sort((a, b) => (a.startsWith("env.") ? 0 : 1) - (b.startsWith("env.") ? 0 : 1) || a.localeCompare(b));
    if (!names.length) { plots.replaceChildren(el("p", { class: "muted" }, `no readings from ${node} in the last ${win}`)); return; }
    plots.replaceChildren(...names.map((name) => {
      const series = [...byName.get(name).entries()].map(([label, points]) => {
        const kept = points.filter((p) => p[0] >= end - span).sort((a, b) => a[0] - b[0]);
        byName.get(name).set(label, kept);
        return { label: label || name, points: kept };
      });
      return el("div", { class: "plot", "data-name": name }, el("h3", {}, name), lineChart(series, { x0: end - span, x1: end, name }), legend(series));
    }));
  };
  draw();
  const readings = new EventSource(`${API}/stream?kind=readings&node=${encodeURIComponent(node)}`);
  readings.onmessage = (m) => {
    try { add(JSON.parse(m.data)); } catch (_) { return; }
    if (drawTimer === null) drawTimer = setTimeout(draw, 500);
  };
  onLeave(() => { readings.close(); if (drawTimer) clearTimeout(drawTimer); });

  keepFresh(id, (e) => e.subject === node || e.node === node || (e.data && e.data.node === node), async (how, minSeq) => {
    const fresh = how === "stream" && minSeq ? { node: (await sql("select * from nodes where node_id = ?", [node], { EVENTS: minSeq }))[0], runs: await sql("select * from plugin_runs where node = ? order by updated_at desc, run_id limit 20", [node]) } : await nodeDetail(node);
    if (!current(id) || !fresh.node) return;
    const status = document.getElementById("node-status");
    status.dataset.status = fresh.node.status;
    status.textContent = `${fresh.node.status} since ${when(fresh.node.status_since)}${fresh.node.offline_reason ? ` (${fresh.node.offline_reason})` : ""}`;
    runsBox.replaceChildren(runsTable(fresh.runs, false));
  });
}

// --- jobs --------------------------------------------------------------------------------------
const JOBS_SQL = "select * from jobs order by job_id";

function goalsCell(assignments) {
  if (!assignments.length) return "—";
  return el("ul", { class: "plain" }, assignments.map((a) => el("li", { "data-goal": `${a.node}/${a.plugin}` },
    link(`#/nodes/${encodeURIComponent(a.node)}`, a.node), ` ${a.plugin}: `, badge(a.state, a.reason || undefined),
    a.plugin_state ? [" last run ", badge(a.plugin_state)] : null, a.reason ? el("span", { class: "muted" }, ` ${a.reason}`) : null)));
}

function rejectionsTable(rows) {
  return table(["Time", "Command", "Target", "By", "Reasons"], rows.length ? rows.map((r) => el("tr", { "data-rejection": r.command_id },
    el("td", {}, when(r.time)), el("td", {}, r.command), el("td", {}, r.target || "—"), el("td", {}, r.requested_by || "—"),
    el("td", {}, el("ul", { class: "plain" }, (r.reasons || []).map((x) => el("li", {}, x)))))) : [empty(5, "none")], { class: "rejections" });
}

async function jobsPage(id, query) {
  const box = el("div", {});
  const user = (query.get("user") || "").trim();
  const who = el("input", { id: "jobs-user", value: user, placeholder: "every user", "aria-label": "jobs of user" });
  const filter = el("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); location.hash = who.value.trim() ? `#/jobs?user=${encodeURIComponent(who.value.trim())}` : "#/jobs"; } },
    el("label", {}, "jobs of user ", who), el("button", { type: "submit" }, "Show"));
  const render = async () => {
    const jobs = user ? await listing(`/jobs?user=${encodeURIComponent(user)}`, "select * from jobs where user = ? order by job_id", [user]) : await listing("/jobs", JOBS_SQL);
    const [assignments, rejections] = await Promise.all([sql("select * from assignments order by job_id, node, plugin"),
      sql("select * from rejections where decider = 'ses' order by time desc limit 200")]);
    if (!current(id)) return;
    box.replaceChildren(
      el("table", { id: "jobs" }, el("thead", {}, el("tr", {}, ["Job", "User", "State", "Plugins", "Goals per node (last plugin state)", "Reasons", "Updated"].map((h) => el("th", {}, h)))),
        el("tbody", {}, jobs.length ? jobs.map((j) => el("tr", { "data-job": j.job_id, "data-state": j.state },
          el("td", {}, link(`#/jobs/${encodeURIComponent(j.job_id)}`, j.job_id), j.name && j.name !== j.job_id ? el("div", { class: "muted" }, j.name) : null),
          el("td", {}, j.user || "—"), el("td", {}, badge(j.state)), el("td", {}, list(j.plugins), el("div", { class: "muted" }, list(j.bundles))),
          el("td", {}, goalsCell(assignments.filter((a) => a.job_id === j.job_id))),
          el("td", {}, j.reasons && j.reasons.length ? el("ul", { class: "plain" }, j.reasons.map((x) => el("li", {}, x))) : "—"),
          el("td", {}, when(j.updated_at)))) : [empty(7, user ? `no jobs of ${user}` : "no jobs yet (hivebus job submit)")])),
      el("h2", {}, "Refused job commands"), rejectionsTable(rejections));
  };
  await render();
  if (!current(id)) return;
  show(el("h1", {}, "Jobs"), filter, box);
  keepFresh(id, (e) => /^(ses|plugin)\./.test(e.type || ""), render, 15);
}

async function jobDetail(job) {
  try {
    return await getJSON(`/jobs/${encodeURIComponent(job)}`);
  } catch (exc) {
    if (!(exc instanceof ApiError && exc.routeMissing)) throw exc;
  }
  const found = await sql("select * from jobs where job_id = ?", [job]);
  const [goals, runs, rejections, triggers] = await Promise.all([
    sql("select * from assignments where job_id = ? order by node, plugin", [job]),
    sql("select * from plugin_runs where job_id = ? order by updated_at desc, run_id limit 20", [job]),
    sql("select * from rejections where decider = 'ses' and target = ? order by seq", [job]),
    sql("select * from triggers where job_id = ? order by seq desc limit 20", [job]),
  ]);
  if (!found.length && !rejections.length) throw new ApiError(404, `no job ${job}`, "the Jobs page lists the jobs");
  return { job: found[0] || null, goals, runs, rejections, triggers };
}

async function jobPage(id, job) {
  await renderJob(id, job);
  // live: the job's own events (ses.*, plugin states and triggers of its runs)
  keepFresh(id, (e) => e.subject === job || (e.data && e.data.job_id === job), () => renderJob(id, job), 30);
}

async function renderJob(id, job) {
  const detail = await jobDetail(job);
  const { goals: assignments, runs, rejections, triggers } = detail;
  if (!current(id)) return;
  if (!detail.job) {
    show(el("h1", {}, "Job ", job, " ", badge("Rejected")), el("p", {}, "The scheduler refused this job:"), rejectionsTable(rejections));
    return;
  }
  const j = detail.job;
  show(el("h1", {}, "Job ", j.job_id, " ", badge(j.state)),
    facts([["name", j.name], ["user", j.user], ["state", j.state], ["plugins", list(j.plugins)], ["bundles", list(j.bundles)],
      ["targets", `nodes ${list(j.nodes)} · tags ${list(j.node_tags)}`], ["policy", j.policy], ["placed on", list(j.placed_nodes)],
      ["success criteria", list(j.success_criteria)], ["submitted", when(j.submitted_at)], ["scheduled", when(j.scheduled_at)],
      ["reasons", list(j.reasons)]]),
    el("h2", {}, "Science rules"),
    j.science_rules && j.science_rules.length ? el("ul", { id: "rules" }, j.science_rules.map((r) => el("li", {}, el("code", {}, r)))) : el("p", { class: "muted" }, "none"),
    el("h2", {}, "Goals per node"),
    table(["Node", "Plugin", "Bundle", "Goal", "Last plugin state", "Score", "Assigned", "Accepted"], assignments.length ? assignments.map((a) => el("tr", { "data-goal": `${a.node}/${a.plugin}` },
      el("td", {}, link(`#/nodes/${encodeURIComponent(a.node)}`, a.node), a.node_status ? [" ", badge(a.node_status)] : null), el("td", {}, a.plugin), el("td", {}, a.bundle_id), el("td", {}, badge(a.state), a.reason ? el("div", { class: "muted" }, a.reason) : null),
      el("td", {}, a.plugin_state ? badge(a.plugin_state) : "—"), el("td", { class: "num" }, num(a.score)), el("td", {}, when(a.assigned_at)), el("td", {}, when(a.accepted_at)))) : [empty(8, "not placed")], { id: "goals" }),
    el("h2", {}, `Triggers fired (latest ${triggers.length})`),
    table(["Fired", "Node", "Rule", "Reading", "Value"], triggers.length ? triggers.map((t) => el("tr", {}, el("td", {}, when(t.fired_at)), el("td", {}, t.node), el("td", {}, el("code", {}, t.rule)), el("td", {}, t.name), el("td", { class: "num" }, t.value ?? t.value_text ?? "—"))) : [empty(5, "no trigger has fired")], { id: "triggers" }),
    el("h2", {}, "Plugin runs"), runsTable(runs, true),
    el("h2", {}, "Refused commands about this job"), rejectionsTable(rejections));
}

// --- the app store -----------------------------------------------------------------------------
function hwClass(p) { return [p.arch, p.gpu ? `gpu ${p.gpu}` : null, p.node_class].filter(Boolean).join(" · ") || "any"; }

async function appsPage(id) {
  const apps = await listing("/apps");
  if (!current(id)) return;
  show(el("h1", {}, "App store"),
    el("p", { class: "muted" }, token() ? "The apps your token may read." : "Public apps; sign in with a user token to see the private ones you may read."),
    table(["App", "Versions (review state)", "Description", "Owner", "Visibility", "Architectures"], apps.length ? apps.map((app) => {
      const versions = app.versions, latest = versions[versions.length - 1] || {};
      return el("tr", { "data-app": app.id },
        el("td", {}, link(`#/apps/${encodeURIComponent(app.namespace)}/${encodeURIComponent(app.name)}`, app.id)),
        el("td", {}, versions.map((v) => el("div", { "data-version": v.version }, `${v.version} `, badge(v.state), v.frozen ? " frozen" : ""))),
        el("td", {}, latest.description || "—"), el("td", {}, latest.owner || "—"),
        el("td", {}, latest.public ? "public" : "private"), el("td", {}, list(latest.architectures)));
    }) : [empty(6, token() ? "no app you may read (hivebus ecr push)" : "no public app: sign in to see private ones")], { id: "apps" }));
}

async function appPage(id, namespace, name) {
  const app = await getJSON(`/apps/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`);
  if (!current(id)) return;
  const versions = app.versions;
  const latest = versions[versions.length - 1];
  const profiles = versions.flatMap((v) => v.profiles || []);
  const rejections = versions.flatMap((v) => v.rejections || []);
  const groups = profiles.map((p) => ({ label: `${p.bundle_id.split(":")[1]} ${hwClass(p)}`, p }));
  const chart = (metric, title, format) => el("div", { class: "plot", "data-metric": metric }, el("h3", {}, title),
    barChart(groups.map((g) => ({ label: g.label, values: { p50: g.p[`${metric}_p50`], p95: g.p[`${metric}_p95`], max: g.p[`${metric}_max`] } })), ["p50", "p95", "max"], { name: metric, format }));
  const grantRows = versions.filter((v) => v.permissions).flatMap((v) => v.permissions.map((g) => el("tr", {}, el("td", {}, v.version), el("td", {}, g.resource), el("td", {}, `${g.grantee_type} ${g.grantee}`), el("td", {}, g.permission), el("td", {}, g.granted_by || "—"), el("td", {}, when(g.granted_at)))));
  const anyVisible = versions.some((v) => v.permissions);
  show(el("h1", {}, app.id),
    facts([["description", latest.description], ["owner", latest.owner], ["authors", list(latest.authors)], ["license", latest.license],
      ["homepage", /^https?:\/\//i.test(latest.homepage || "") ? link(latest.homepage, latest.homepage) : latest.homepage || "—"], ["keywords", list(latest.keywords)],
      ["source", `${latest.source_url || "—"}${latest.source_branch ? ` (${latest.source_branch})` : ""}${latest.source_tag ? ` tag ${latest.source_tag}` : ""}${latest.git_commit ? ` @ ${latest.git_commit}` : ""}`],
      ["architectures", list(latest.architectures)], ["resources", `${latest.resources_cpu ?? "?"} cpu · ${bytes(latest.resources_memory)}${latest.resources_gpu ? ` · ${latest.resources_gpu} gpu` : ""}`],
      ["visibility", latest.public ? "public (AllUsers may read)" : "private"]]),
    el("h2", {}, "Versions and reviews"),
    table(["Version", "State", "Pushed", "By", "Review", "Frozen", "Reasons"], versions.map((v) => el("tr", { "data-version": v.version, "data-state": v.state },
      el("td", {}, v.version), el("td", {}, badge(v.state)), el("td", {}, when(v.pushed_at)), el("td", {}, v.pusher || "—"),
      el("td", {}, v.approved ? `approved by ${v.approved_by || "?"} at ${when(v.approved_at)}` : "not approved"), el("td", {}, v.frozen ? `frozen ${when(v.frozen_at)}` : "no"),
      el("td", {}, list(v.reasons)))), { id: "versions" }),
    el("h2", {}, "Performance profiles (per hardware class)"),
    profiles.length ? el("div", { class: "plots", id: "profiles" }, chart("cpu_seconds", "CPU seconds per run", (v) => num(v)), chart("mem_bytes", "Memory (max RSS)", bytes), chart("wall_seconds", "Wall time per run (s)", (v) => num(v))) : el("p", { class: "muted" }, "no recorded runs yet"),
    profiles.length ? table(["Version", "Hardware class", "Runs", "Failures", "CPU s p50/p95", "Memory p50/p95", "Wall s p50/p95", "Last run"], profiles.map((p) => el("tr", { "data-profile": `${p.bundle_id} ${hwClass(p)}`, "data-runs": p.runs },
      el("td", {}, p.bundle_id), el("td", {}, hwClass(p)), el("td", { class: "num" }, p.runs), el("td", { class: "num" }, p.failures),
      el("td", { class: "num" }, `${num(p.cpu_seconds_p50)} / ${num(p.cpu_seconds_p95)}`), el("td", { class: "num" }, `${bytes(p.mem_bytes_p50)} / ${bytes(p.mem_bytes_p95)}`),
      el("td", { class: "num" }, `${num(p.wall_seconds_p50)} / ${num(p.wall_seconds_p95)}`), el("td", {}, when(p.last_run_at))))) : null,
    el("h2", {}, "Permissions"),
    anyVisible ? table(["Version", "Resource", "Grantee", "Permission", "Granted by", "When"], grantRows.length ? grantRows : [empty(6, `no grants: only the owner (${latest.owner || "?"}) and reviewers`)], { id: "permissions" })
      : el("p", { class: "muted", id: "permissions" }, "The grants are shown to those with READ_ACP on the app (its owner, FULL_CONTROL holders): sign in."),
    el("h2", {}, "Provenance"),
    versions.map((v) => el("div", {}, el("strong", {}, v.version), v.provenance ? el("pre", {}, JSON.stringify(v.provenance, null, 2)) : el("span", { class: "muted" }, " no provenance recorded"),
      v.artifacts && v.artifacts.length ? el("pre", {}, JSON.stringify(v.artifacts, null, 2)) : null)),
    el("h2", {}, "Refused commands"), rejectionsTable(rejections));
}

// --- dead letters (admins) --------------------------------------------------------------------
async function deadLettersPage(id) {
  const letters = await listing("/dead-letters");
  if (!current(id)) return;
  show(el("h1", {}, "Dead letters"), el("p", { class: "muted" }, "Messages a consumer could not use; they stay in their stream."),
    table(["Stream", "Seq", "Subject", "Consumer", "Reason", "Field", "When"], letters.length ? letters.map((d) => el("tr", { "data-letter": `${d.stream}/${d.seq}/${d.consumer}` },
      el("td", {}, d.stream), el("td", { class: "num" }, d.seq), el("td", {}, el("code", {}, d.subject || "")), el("td", {}, d.consumer),
      el("td", {}, d.reason || "—"), el("td", {}, d.field || "—"), el("td", {}, when(d.time)))) : [empty(7, "none: every message was used")], { id: "dead-letters" }));
}

// --- data --------------------------------------------------------------------------------------
const FILTER_FIELDS = ["name", "node", "vsn", "plugin", "task", "sensor"];

function toCSV(records) {
  const metaKeys = [...new Set(records.flatMap((r) => Object.keys(r.meta || {})))].sort();
  const cell = (v) => { const s = v === null || v === undefined ? "" : String(v); return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s; };
  const lines = [["timestamp", "name", "value", ...metaKeys.map((k) => `meta.${k}`)].join(",")];
  for (const r of records) lines.push([r.timestamp, r.name, r.value, ...metaKeys.map((k) => (r.meta || {})[k])].map(cell).join(","));
  return lines.join("\n") + "\n";
}

async function dataPage(id, query) {
  const input = (name, label, value, placeholder) => el("label", {}, label, el("input", { name, value: value ?? "", placeholder }));
  const form = el("form", { class: "query", id: "query" },
    input("start", "start (-1h or an ISO time)", query.get("start") || "-15m", "-1h"), input("end", "end (optional)", query.get("end"), "2025-05-01T10:00:00Z"),
    ...FILTER_FIELDS.map((f) => input(`filter.${f}`, `filter ${f}`, query.get(f) ?? (f === "name" && !query.get("node") ? "env.temperature" : ""), f === "name" ? "env.* or a regexp" : "")),
    el("label", {}, "head / tail", el("select", { name: "limit_kind" }, el("option", { value: "" }, "all"), el("option", { value: "head" }, "head"), el("option", { value: "tail" }, "tail"))),
    input("limit_n", "records per series", "", "e.g. 10"),
    input("experimental_func", "aggregate (mean, min, max, sum, count)", "", ""), input("experimental_window", "window (e.g. 1m)", "", ""),
    el("label", {}, "\u00a0", el("button", { type: "submit", id: "run" }, "Query")));
  const out = el("div", { id: "result" });
  show(el("h1", {}, "Data"), el("p", { class: "muted" }, "The Sage data API (POST /api/v1/query): the body sage-data-client sends."), form, out);
  const run = async () => {
    const f = new FormData(form);
    const body = { start: String(f.get("start") || "-15m").trim() };
    if (String(f.get("end") || "").trim()) body.end = String(f.get("end")).trim();
    const filter = {};
    for (const k of FILTER_FIELDS) { const v = String(f.get(`filter.${k}`) || "").trim(); if (v) filter[k] = v; }
    if (Object.keys(filter).length) body.filter = filter;
    const kind = f.get("limit_kind"), n = parseInt(String(f.get("limit_n") || ""), 10);
    if (kind && n > 0) body[kind] = n;
    for (const k of ["experimental_func", "experimental_window"]) { const v = String(f.get(k) || "").trim(); if (v) body[k] = v; }
    out.replaceChildren(el("p", { class: "muted" }, "querying…"));
    let records;
    try { records = await dataQuery(body); } catch (exc) { out.replaceChildren(el("p", { class: "error", role: "alert" }, exc.message)); return; }
    if (!current(id)) return;
    const groups = new Map();
    for (const r of records) {
      if (typeof r.value !== "number") continue;
      const key = `${r.name} ${(r.meta || {}).vsn || (r.meta || {}).node || ""} ${(r.meta || {}).task || ""}`.trim();
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push([ms(r.timestamp), r.value]);
    }
    const series = [...groups.entries()].map(([label, points]) => ({ label, points: points.sort((a, b) => a[0] - b[0]) }));
    const csv = URL.createObjectURL(new Blob([toCSV(records)], { type: "text/csv" }));
    onLeave(() => URL.revokeObjectURL(csv));
    fill(out,
      el("div", { class: "toolbar" }, el("strong", { id: "count", "data-count": records.length }, `${records.length} records`), el("a", { id: "csv", href: csv, download: "readings.csv" }, "Download CSV"),
        el("code", {}, JSON.stringify(body))),
      el("div", { class: "plot" }, lineChart(series, { name: "query", width: 1000, height: 260 }), legend(series)),
      table(["Timestamp", "Name", "Value", "Meta"], records.slice(0, 100).map((r) => el("tr", {}, el("td", {}, r.timestamp), el("td", {}, r.name), el("td", { class: "num" }, r.value ?? "—"),
        el("td", { class: "muted" }, Object.entries(r.meta || {}).map(([k, v]) => `${k}=${v}`).join(" "))))),
      records.length > 100 ? el("p", { class: "muted" }, `first 100 of ${records.length} shown; the CSV has them all`) : null);
  };
  form.addEventListener("submit", (e) => { e.preventDefault(); run(); });
  if (query.get("run") !== "0") await run();
}

// --- sign-in -----------------------------------------------------------------------------------
function showSignedIn() {
  const signed = Boolean(token());
  document.getElementById("whoami").textContent = signed ? "signed in (token sent as Authorization: sage …)" : "anonymous";
  document.getElementById("signout").hidden = !signed;
  document.getElementById("token").hidden = signed;
  document.getElementById("signin-save").hidden = signed;
}
function setupSignIn() {
  document.getElementById("signin").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = document.getElementById("token").value.trim();
    if (value) localStorage.setItem(TOKEN_KEY, value);
    document.getElementById("token").value = "";
    showSignedIn();
    route();
  });
  document.getElementById("signout").addEventListener("click", () => { localStorage.removeItem(TOKEN_KEY); showSignedIn(); route(); });
  showSignedIn();
}

window.addEventListener("hashchange", route);
setupSignIn();
startLive();
route();
