"""What ``hivebus up --demo`` (``make run``) does once the platform runs: push the example
BME680 plugin, approve it, make it public (AllUsers may READ it, as Waggle's plugins are in
Sage's app store, so the dashboard shows it to anyone), and submit a job that runs it every
minute on the virtual nodes.

Each step is an ordinary event a user could publish, answered by the handlers. Running the
demo again after a restart is harmless: the bundle is already registered (the ECR answers
with the same decision) and a job with the same id is already scheduled.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import structlog

from hivebus.bootstrap import PlatformInfo
from hivebus.bus.client import Bus
from hivebus.errors import HivebusError, QueryError, RequestTimeout
from hivebus.formats import load_app, load_job
from hivebus.schemas import Event
from hivebus.schemas.ecr import ALL_USERS, BundleApproved, BundlePushed, PermissionGranted
from hivebus.schemas.ses import JobSubmitted
from hivebus.services.requests import request

log = structlog.get_logger()

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEMO_APP = EXAMPLES / "plugins" / "plugin-bme680" / "sage.yaml"
DEMO_JOB = EXAMPLES / "job-demo.yaml"
DEMO_USER = "waggle"  # the namespace owner: the Waggle team publishes waggle/ plugins
REVIEWER = "admin"


async def start_demo(bus: Bus, info: PlatformInfo, *, timeout: float = 30.0) -> str:
    """Push, approve, submit; returns the job id. Raises a HivebusError naming the step."""
    if not DEMO_APP.is_file():
        raise HivebusError(f"the demo needs {DEMO_APP} (run from a hivebus checkout)")
    app = load_app(DEMO_APP)
    job_id = "demo-bme680"
    if await _already_running(bus, job_id):
        log.info("demo.resumed", job=job_id)  # started by an earlier `hivebus up` on this data dir
        return job_id
    pushed = Event.new(BundlePushed(app=app, pusher=DEMO_USER), source=f"user/{DEMO_USER}", subject=app.bundle_id)
    answer = await request(bus, pushed, handler="ecr", answers=["evt.ecr.bundle.registered.>", "evt.ecr.bundle.rejected.>"], timeout=timeout)
    rejected = answer.of_type("ecr.bundle.rejected")
    if rejected and not any("already" in r for r in rejected[0].data.reasons):
        raise HivebusError(f"demo: {app.bundle_id} was rejected: {'; '.join(rejected[0].data.reasons)}")
    approved = Event.new(BundleApproved(bundle_id=app.bundle_id, by=REVIEWER), source=f"user/{REVIEWER}", subject=app.bundle_id)
    await request(bus, approved, handler="ecr", answers=["evt.ecr.bundle.approved.>"], timeout=timeout)
    public = Event.new(PermissionGranted(resource=app.bundle_id, grantee_type="group", grantee=ALL_USERS,
                                         permission="READ", by=DEMO_USER), source=f"user/{DEMO_USER}", subject=app.bundle_id)
    answer = await request(bus, public, handler="ecr", answers=["evt.ecr.command.rejected.>"], timeout=timeout)
    if answer.reasons:
        raise HivebusError(f"demo: {app.bundle_id} could not be made public: {'; '.join(answer.reasons)}")
    await wait_for_nodes(bus, info.nodes, timeout=timeout * 2)
    spec = load_job(DEMO_JOB)
    submitted = Event.new(JobSubmitted(job_id=job_id, user=DEMO_USER, spec=spec), source=f"user/{DEMO_USER}", subject=job_id)
    answer = await request(bus, submitted, handler="ses", answers=["evt.ses.job.scheduled.>", "evt.ses.job.rejected.>"], timeout=timeout)
    rejected = answer.of_type("ses.job.rejected")
    if rejected and all("already used" in r for r in rejected[0].data.reasons):
        log.info("demo.resumed", job=job_id)  # started by an earlier `hivebus up` on this data dir
    elif rejected:
        raise HivebusError(f"demo: job {job_id} was rejected: {'; '.join(rejected[0].data.reasons)}")
    log.info("demo.started", bundle=app.bundle_id, job=job_id, nodes=info.nodes)
    return job_id


async def wait_for_nodes(bus: Bus, nodes: list[str], *, timeout: float) -> None:
    """Wait until the scheduler can see ``nodes`` (they registered and the views show them
    online): a job submitted before its nodes registered is rejected, rightly."""
    from hivebus.projections.client import query

    if not nodes:
        return
    deadline = time.monotonic() + timeout
    online = 0
    while time.monotonic() < deadline:
        try:
            result = await query(bus, "select count(*) from nodes where status = 'online' and node_id in (select unnest($1))", [nodes], timeout=5)
            online = result.rows[0][0]
        except (QueryError, RequestTimeout):  # the projector may still be starting
            online = 0
        if online >= len(nodes):
            return
        await asyncio.sleep(0.5)
    raise HivebusError(f"demo: only {online} of the {len(nodes)} virtual nodes came online within {timeout:g}s", hint="see the node logs")


async def _already_running(bus: Bus, job_id: str) -> bool:
    """Whether an earlier ``hivebus up`` on this data dir started the demo job (it resumes)."""
    from hivebus.projections.client import query

    deadline = time.monotonic() + 30
    while True:
        try:
            result = await query(bus, "select state from jobs where job_id = $1", [job_id], timeout=5)
            return bool(result.rows) and result.rows[0][0] in ("Submitted", "Running", "Suspended")
        except (QueryError, RequestTimeout):  # the projector may still be starting
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
