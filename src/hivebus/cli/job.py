"""``hivebus job``: submit (or dry-run) a job, see its status, suspend, resume, remove it;
``hivebus handlers``: run the platform handlers (ECR, scheduler, node health) on their own.

``submit`` sends the ``ses.submit`` command and prints where each plugin runs, or every
reason it was refused (science-rule errors with their position); suspend/resume/rm send their
commands. Nothing is published before the scheduler decides: a refusal is one
``ses.command.rejected`` fact, which ``status`` lists. ``--dry-run`` asks the running scheduler
what it would decide, publishing nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hivebus.bus.client import Bus
from hivebus.cli.app import Hub, app, err, out, run, settings
from hivebus.cli.ecr import AsJson, Timeout, User, whoami
from hivebus.errors import RequestRejected, RuleSyntaxError
from hivebus.formats import load_job
from hivebus.rules import parse_rule
from hivebus.schemas.envelope import Event, Payload
from hivebus.schemas.ids import new_ulid
from hivebus.schemas.ses import JobRemoved, JobResumed, JobSubmitted, JobSuspended
from hivebus.services.requests import Answer, request_at

job_app = typer.Typer(
    help="Scheduler jobs: submit, status, suspend, resume, remove.", no_args_is_help=True
)
app.add_typer(job_app, name="job")

Policy = Annotated[
    str | None,
    typer.Option(
        "--policy", help="Placement policy: fit (most headroom), score (Home Edge), roundrobin."
    ),
]


def new_job_id(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:48] or "job"
    return f"{slug}-{new_ulid()[-6:].lower()}"


def rule_errors(rules: list[str]) -> list[str]:
    """Every science rule that does not parse, with a pointer at the error; the warnings of
    those that parse (the older form, a condition that cannot fire...) are printed."""
    problems = []
    for i, text in enumerate(rules):
        try:
            rule = parse_rule(text)
        except RuleSyntaxError as exc:
            problems.append(f"scienceRules[{i}]: {exc}")
            continue
        for warning in rule.warnings:
            err.print(f"warning: scienceRules[{i}] {text!r}: {warning}", markup=False)
    return problems


def _print_plan(placements: list[dict[str, Any]], notes: list[str]) -> None:
    with_devices = any(p.get("devices") for p in placements)
    table = Table("node", "plugin", "bundle", "score", *(["devices"] if with_devices else []))
    for p in placements:
        table.add_row(
            p["node"],
            p["plugin"],
            p["bundle_id"],
            "" if p.get("score") is None else f"{p['score']:g}",
            *([", ".join(p.get("devices") or [])] if with_devices else []),
        )
    out.print(table)
    for note in notes:
        out.print(f"  note: {note}")


@job_app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="The job YAML.")],
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Ask what the scheduler would decide; publish nothing."),
    ] = False,
    policy: Policy = None,
    max_nodes: Annotated[
        int | None,
        typer.Option("--max-nodes", min=1, help="Run on at most N of the matching nodes."),
    ] = None,
    job_id: Annotated[
        str | None,
        typer.Option("--id", help="Job id (default: the job's name and a random suffix)."),
    ] = None,
    user: User = None,
    timeout: Timeout = 15.0,
    hub: Hub = None,
    as_json: AsJson = False,
) -> None:
    """Submit a job; prints its placements, or every reason it was rejected."""
    who = whoami(user)
    spec = load_job(file, name=str(file))
    problems = rule_errors(spec.science_rules)
    if problems:
        raise RequestRejected(f"{file}: bad science rules:\n" + "\n".join(problems), problems)
    identifier = job_id or new_job_id(spec.name)
    if dry_run:
        from hivebus.services.dryrun import DRYRUN_SUBJECT

        body = {
            "user": who,
            "spec": spec.model_dump(mode="json"),
            "job_id": identifier,
            "policy": policy,
            "max_nodes": max_nodes,
        }

        async def ask() -> dict[str, Any]:
            async with await Bus.connect(settings(hub).nats_url) as bus:
                return json.loads(await bus.request(DRYRUN_SUBJECT, body, timeout=timeout))

        plan = run(ask())
        if "error" in plan:
            raise RequestRejected(f"dry run failed: {plan['error']}", [plan["error"]])
        if as_json:
            out.print_json(json.dumps(plan))
            return
        if plan["decision"] == "rejected":
            out.print(f"[bold]dry run[/]: {identifier} would be rejected:")
            for reason in plan["reasons"]:
                out.print(f"  - {reason}")
            raise typer.Exit(1)
        out.print(f"[bold]dry run[/]: {identifier} would be scheduled ({plan['policy']}):")
        _print_plan(plan["placements"], plan["notes"])
        return
    payload = JobSubmitted(
        job_id=identifier, user=who, spec=spec, policy=policy, max_nodes=max_nodes
    )
    event = Event.new(payload, source=f"user/{who}", subject=identifier)
    answer = run(_ask(hub, event, [], timeout))
    if answer.rejection is not None:
        reasons = answer.reasons
        raise RequestRejected(
            f"job {identifier} rejected:\n" + "\n".join(f"  - {r}" for r in reasons), reasons
        )
    scheduled = answer.of_type("ses.job.scheduled")
    if not scheduled:
        raise RequestRejected(
            f"job {identifier}: the scheduler gave no answer (sequence {answer.seq})"
        )
    placements = [p.model_dump(mode="json") for p in scheduled[0].data.placements]
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "job_id": identifier,
                    "state": "scheduled",
                    "policy": scheduled[0].data.policy,
                    "placements": placements,
                    "seq": answer.seq,
                }
            )
        )
        return
    goals = answer.of_type("ses.goal.assigned")
    out.print(
        f"scheduled {identifier} ({scheduled[0].data.policy}); goals sent to {', '.join(g.data.node for g in goals)}"
    )
    _print_plan(placements, [])


def _lifecycle(
    hub: str | None, payload: Payload, who: str, job_id: str, timeout: float, done: str
) -> Answer:
    event = Event.new(payload, source=f"user/{who}", subject=job_id)
    answer = run(_ask(hub, event, [], timeout))
    if answer.rejection is not None:
        reasons = answer.reasons
        raise RequestRejected(
            f"{answer.rejection.data.command} {job_id} refused:\n" + "\n".join(f"  - {r}" for r in reasons), reasons
        )
    nodes = sorted({e.data.node for e in answer.events if e.type.startswith("ses.goal.")})
    out.print(done + (f" (nodes: {', '.join(nodes)})" if nodes else ""))
    return answer


@job_app.command()
def suspend(
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str, typer.Option(help="Why.")] = "",
    user: User = None,
    timeout: Timeout = 15.0,
    hub: Hub = None,
) -> None:
    """Suspend a job: its goals are withdrawn from the nodes until it is resumed."""
    who = whoami(user)
    _lifecycle(
        hub,
        JobSuspended(job_id=job_id, by=who, reason=reason),
        who,
        job_id,
        timeout,
        f"suspended {job_id}",
    )


@job_app.command()
def resume(
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    user: User = None,
    timeout: Timeout = 15.0,
    hub: Hub = None,
) -> None:
    """Resume a suspended job: its goals go back to the nodes if they still fit."""
    who = whoami(user)
    _lifecycle(hub, JobResumed(job_id=job_id, by=who), who, job_id, timeout, f"resumed {job_id}")


@job_app.command("rm")
def remove(
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    reason: Annotated[str, typer.Option(help="Why.")] = "",
    user: User = None,
    timeout: Timeout = 15.0,
    hub: Hub = None,
) -> None:
    """Remove a job for good: its goals are withdrawn from the nodes."""
    who = whoami(user)
    _lifecycle(
        hub,
        JobRemoved(job_id=job_id, by=who, reason=reason),
        who,
        job_id,
        timeout,
        f"removed {job_id}",
    )


@job_app.command()
def status(
    job_id: Annotated[str, typer.Argument(metavar="ID")], hub: Hub = None, as_json: AsJson = False
) -> None:
    """A job's state, and for each node and plugin: the goal, the plugin's last state, the node's;
    then the commands about it the scheduler refused, with their reasons."""

    async def fetch() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        from hivebus.projections.client import query

        async with await Bus.connect(settings(hub).nats_url) as bus:
            jobs = (await query(bus, "SELECT * FROM jobs WHERE job_id = ?", [job_id])).records()
            rows = (
                await query(
                    bus,
                    "SELECT a.node, a.plugin, a.bundle_id, a.state AS goal, a.plugin_state, a.reason, "
                    "n.status AS node_status, n.status_since "
                    "FROM assignments a LEFT JOIN nodes n ON n.node_id = a.node "
                    "WHERE a.job_id = ? ORDER BY a.node, a.plugin",
                    [job_id],
                )
            ).records()
            refused = (
                await query(
                    bus,
                    "SELECT time, command, requested_by, reasons FROM rejections "
                    "WHERE decider = 'ses' AND target = ? ORDER BY seq",
                    [job_id],
                )
            ).records()
        return jobs, rows, refused

    jobs, rows, refused = run(fetch())
    if not jobs and not refused:
        raise RequestRejected(
            f"no job {job_id}", ["check the id, or wait a moment: views follow the log"]
        )
    if as_json:
        out.print_json(
            json.dumps({"job": jobs[0] if jobs else None, "assignments": rows, "rejections": refused}, default=str)
        )
        return
    if not jobs:
        out.print(f"[bold]{job_id}[/]: no such job (the scheduler refused it)")
        _print_rejections(refused)
        return
    job = jobs[0]
    out.print(f"[bold]{job['job_id']}[/] ({job.get('name')}) by {job.get('user')}: {job['state']}")
    for reason in job.get("reasons") or []:
        out.print(f"  - {reason}")
    table = Table("node", "node status", "plugin", "bundle", "goal", "plugin state")
    for row in rows:
        table.add_row(
            row["node"],
            row.get("node_status") or "",
            row["plugin"],
            row.get("bundle_id") or "",
            row["goal"],
            row.get("plugin_state") or "",
        )
    if rows:
        out.print(table)
    _print_rejections(refused)


def _print_rejections(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        out.print(f"  refused {row['command']} by {row.get('requested_by') or '?'} at {row['time']}:")
        for reason in row["reasons"]:
            out.print(f"    - {reason}")


@app.command()
def handlers(
    hub: Hub = None,
    only: Annotated[
        str | None,
        typer.Option(help="Comma list of handlers to run: ecr, ses, health (default: all)."),
    ] = None,
    instance: Annotated[
        str | None,
        typer.Option(
            help="A replica's name: its deciders also answer on hivebus.decide.<handler>.<NAME> "
            "and its consumers are its own (several replicas decide safely side by side)."
        ),
    ] = None,
) -> None:
    """Run the platform handlers (ECR, scheduler with its dry-run endpoint, node health) until stopped."""
    from hivebus.services import HANDLERS, run_handlers

    names = tuple(n.strip() for n in only.split(",")) if only else HANDLERS
    unknown = [n for n in names if n not in HANDLERS]
    if unknown:
        raise RequestRejected(
            f"unknown handler(s) {', '.join(unknown)}", [f"one of {', '.join(HANDLERS)}"]
        )
    config = settings(hub)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with await Bus.connect(
            config.nats_url, name="hivebus-handlers", settings=config
        ) as bus:
            await bus.ensure_streams()
            out.print(
                f"handlers {', '.join(names)} running on {config.nats_url}; Ctrl-C stops them",
                highlight=False,
            )
            await run_handlers(config, bus, stop, only=names, instance=instance)

    run(serve())


def _ask(hub: str | None, event: Event, answers: list[str], timeout: float) -> Coroutine[Any, Any, Answer]:
    return request_at(settings(hub).nats_url, event, handler="ses", answers=answers, timeout=timeout)
