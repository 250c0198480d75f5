"""``hivebus node (run, list, outbox)``: run a node's agent (WES), see the nodes, see a backlog."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hivebus.bus.client import Bus
from hivebus.cli.app import Hub, app, err, out, run, settings
from hivebus.config import parse_duration
from hivebus.edge import refusal
from hivebus.edge.agent import AgentConfig, NodeAgent
from hivebus.edge.outbox import OutboxLimits
from hivebus.errors import SetupError
from hivebus.formats import load_manifest, parse_bytes

node_app = typer.Typer(
    help="Edge nodes: run a node agent, list the nodes, inspect a node's outbox.",
    no_args_is_help=True,
)
app.add_typer(node_app, name="node")

LIST_COLUMNS = (
    "node_id", "vsn", "status", "status_since", "tags", "arch", "cpus", "load1",
    "mem_avail", "disk_avail", "backlog_messages", "dropped", "last_heartbeat", "devices",
    "refusal", "refusal_reason", "refused_since", "refused_until",
)  # fmt: skip


@node_app.command("run")
def run_node(
    node_id: Annotated[
        str, typer.Option("--node-id", help="This node's id, e.g. W012 (must match the manifest).")
    ],
    hub: Hub = None,
    manifest: Annotated[
        Path | None, typer.Option(help="node.yaml; default: describe this machine.")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Outbox, state and the local bus (default: <HIVEBUS_DATA_DIR>/nodes/<id>)."
        ),
    ] = None,
    virtual: Annotated[
        bool, typer.Option(help="Simulated BME680 sensor; the manifest is tagged 'virtual'.")
    ] = False,
    executor: Annotated[
        str,
        typer.Option(
            help="How plugins run: process or docker. WASM plugins run with wasm as well "
            "(docs/executors.md)."
        ),
    ] = "process",
    wasm: Annotated[
        bool,
        typer.Option(
            help="Run WASM plugins too (wasmtime), and advertise the wasm executor so the "
            "scheduler places wasm builds here."
        ),
    ] = True,
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats.")] = 30.0,
    metrics: Annotated[float, typer.Option(help="Seconds between sys.* readings.")] = 60.0,
    virtual_interval: Annotated[
        float, typer.Option(help="Seconds between virtual sensor readings.")
    ] = 10.0,
    virtual_rate: Annotated[
        float | None,
        typer.Option(
            help="Load: virtual readings per second, spread over each --virtual-interval "
            "(default: one sample of three readings per interval)."
        ),
    ] = None,
    outbox_max_bytes: Annotated[
        str, typer.Option(help="Outbox cap (readings are dropped oldest-first beyond it).")
    ] = "1Gi",
    outbox_max_age: Annotated[
        str, typer.Option(help="Readings older than this are dropped from the outbox.")
    ] = "7d",
    local_port: Annotated[
        int, typer.Option(help="Port of the node-local bus (0: the previous one, or any free).")
    ] = 0,
    credentials: Annotated[
        Path | None,
        typer.Option(
            envvar="HIVEBUS_NATS_CREDENTIALS",
            help="This node's hub credential (`hivebus node add ID --out FILE` on the hub).",
        ),
    ] = None,
) -> None:
    """Run the agent of one edge node until Ctrl-C or SIGTERM.

    The hub may be down: the node works offline, buffers what it produces and sends it when
    the hub is back.
    """
    s = settings(hub, nats_credentials=credentials)
    try:
        limits = OutboxLimits(
            max_bytes=parse_bytes(outbox_max_bytes),
            max_age_seconds=parse_duration(outbox_max_age, name="--outbox-max-age").total_seconds(),
        )
    except ValueError as exc:
        raise SetupError(f"--outbox-max-bytes: {exc}") from None
    config = AgentConfig.build(
        node_id,
        s.nats_url,
        data_dir=data_dir or s.data_dir / "nodes" / node_id,
        manifest=load_manifest(manifest) if manifest is not None else None,
        virtual=virtual,
        executor=executor,
        optional_executors=("wasm",) if wasm else (),
        heartbeat_seconds=heartbeat,
        metrics_seconds=metrics,
        virtual_interval_seconds=virtual_interval,
        virtual_rate=virtual_rate,
        outbox=limits,
        local_port=local_port,
        settings=s,
    )
    run(_run_agent(config))


async def _run_agent(config: AgentConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    agent = NodeAgent(config)
    task = asyncio.create_task(agent.run(stop))
    ready = asyncio.create_task(agent.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if agent.ready.is_set():
        out.print(
            f"node {config.node_id} running: local bus {agent.local.url}, data in {config.data_dir}, "
            f"hub {config.hub_url} ({'virtual, ' if config.virtual else ''}{len(agent.runner.goals)} goal(s) on disk)",
            highlight=False,
        )
    ready.cancel()
    await task
    out.print(
        f"node {config.node_id} stopped; {agent.outbox.backlog_now()[0]} event(s) wait in the outbox",
        highlight=False,
    )


@node_app.command("list")
def list_nodes(
    hub: Hub = None,
    tag: Annotated[str | None, typer.Option(help="Only nodes with this tag.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print rows as JSON.")] = False,
) -> None:
    """The nodes the hub knows (the nodes view, through the query service)."""
    sql = f"SELECT {', '.join(LIST_COLUMNS)} FROM nodes"
    params: list[Any] = []
    if tag:
        sql += " WHERE list_contains(tags, ?)"
        params.append(tag)
    sql += " ORDER BY node_id"

    async def go() -> list[dict[str, Any]]:
        from hivebus.projections.client import query

        async with await Bus.connect(settings(hub).nats_url) as bus:
            return (await query(bus, sql, params, limit=100_000)).records()

    records = run(go())
    for r in records:  # a JSON column arrives as its text
        r["devices"] = json.loads(r["devices"]) if isinstance(r["devices"], str) else r["devices"]
    if as_json:
        out.print_json(json.dumps(records, default=str))
        return
    table = Table("node", "status", "tags", "load", "mem", "disk", "queued", "dropped", "seen", "devices",
                  "refused by the hub")
    for r in records:
        table.add_row(
            r["node_id"], r["status"], ",".join(r["tags"] or []), _num(r["load1"]),
            _size(r["mem_avail"]), _size(r["disk_avail"]), str(r["backlog_messages"] or 0),
            str(sum((r["dropped"] or {}).values())), _clock(r["last_heartbeat"]),
            _devices(r["devices"]), _refused(r),
        )  # fmt: skip
    out.print(table)
    out.print(f"{len(records)} node(s)", highlight=False)


@node_app.command("outbox")
def outbox(
    data_dir: Annotated[Path, typer.Option(help="The node's data directory.")],
) -> None:
    """What a node holds for the hub (works while the agent runs, or not)."""
    path = data_dir / "node.db"
    if not path.is_file():
        raise SetupError(
            f"no node database at {path}", hint="pass the --data-dir the agent runs with"
        )
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        counts = {
            t: conn.execute(f"SELECT count(*), total(size) FROM {t}").fetchone()
            for t in ("readings", "lifecycle")
        }
        drops = dict(conn.execute("SELECT reason, n FROM drop_counters").fetchall())
        meta = dict(conn.execute("SELECT key, value FROM outbox_meta").fetchall())
        goals = [row[0] for row in conn.execute("SELECT job_id FROM goals")]
    except sqlite3.Error as exc:
        raise SetupError(f"{path} is not a node database: {exc}") from None
    finally:
        conn.close()
    for table, (n, size) in counts.items():
        out.print(f"{table:10} {n:>10,} events  {_size(int(size))}", highlight=False)
    out.print(f"dropped    {drops or 'nothing'}", highlight=False)
    out.print(
        f"next nodeseq {meta.get('next_nodeseq')}; hub positions "
        f"{ {k[4:]: v for k, v in meta.items() if k.startswith('pos.')} }",
        highlight=False,
    )
    out.print(f"goals      {', '.join(goals) or 'none'}", highlight=False)
    refused = refusal.read(data_dir)
    if refused is not None:
        kind = "its credential" if refused.what == "credential" else "its events"
        if refused.ongoing:
            err.print(f"[bold red]the hub refuses {kind}[/] since {refused.since}: {refused.error}", highlight=False, soft_wrap=True)
            err.print(f"what to do: {refused.hint}", highlight=False, soft_wrap=True)
        else:
            out.print(f"the hub refused {kind} from {refused.since} until {refused.until} ({refused.error}); "
                      "the node's next heartbeat reports it to the hub", highlight=False, soft_wrap=True)


def _refused(r: dict[str, Any]) -> str:
    """``events since 12-03 13:04`` while the node reports it, ``credential 12-03 13:04 to 16:05``
    once ended (UTC; the date again when it ended on another day)."""
    if not r.get("refused_since"):
        return ""
    since, until = str(r["refused_since"]).replace("T", " "), r.get("refused_until")
    if not until:
        return f"{r['refusal']} since {since[5:16]}"
    until = str(until).replace("T", " ")
    return f"{r['refusal']} {since[5:16]} to {until[11:16] if until[:10] == since[:10] else until[5:16]}"


def _devices(devices: list[dict[str, Any]] | None) -> str:
    """``top_camera,mic (shared)``: names, a shared (non-exclusive) one marked."""
    return ",".join(
        d["name"] + ("" if d.get("exclusive", True) else " (shared)") for d in devices or []
    )


def _size(n: int | None) -> str:
    """Bytes, compactly: ``512B``, ``3.4M``, ``22.9G``."""
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _clock(ts: str | None) -> str:
    """The time of day of ``2026-11-21T23:41:05.123`` (UTC): ``23:41:05``."""
    return "" if not ts else str(ts)[11:19]
