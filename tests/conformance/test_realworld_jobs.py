"""Real job files for Sage's scheduler, taken or refused as the cloud scheduler (SES) takes or
refuses them.

``../shared/realworld/expected.yaml`` (beside the repository; not part of it) gives, for 23
job files from the scheduler's examples and the Sage tutorials, what the real scheduler does
on submission. Every file goes through hivebus's loader (``hivebus.formats.load_job``) and
the scheduler's pure submit decision (``hivebus.handlers.ses`` through ``Log``).

Only the file's own validity is judged, not the state of a hub: before the submission, every
bundle the job's images name is pushed and approved in the ECR (for every architecture), and
every node it names is registered -- carrying the job's ``nodeTags``, a GPU, the sensors and
the policy its plugins ask for -- or, for a job by tags only, one such node. ``DELIBERATE``
lists the only cases where hivebus may differ, with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hivebus.errors import FormatError
from hivebus.formats import load_job
from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.criteria import criterion_problem
from hivebus.handlers.ecr import EcrHandler
from hivebus.handlers.ses import SesHandler
from hivebus.handlers.testing import GiB, Log, app_spec, manifest, resources
from hivebus.rules import parse_rule
from hivebus.schemas.ecr import ALL_USERS, BundleApproved, PermissionGranted
from hivebus.schemas.fields import ARCHITECTURES
from hivebus.schemas.node import NodeConfigUpdated
from hivebus.schemas.ses import JobSpec

REALWORLD = Path(__file__).resolve().parents[2].parent / "shared" / "realworld"
EXPECTED = REALWORLD / "expected.yaml"
ABSENT = (
    f"{EXPECTED} is absent: the real Sage job files live beside the repository "
    "(../shared/realworld/), not in it, and this clone has no copy"
)
SUBMITTER = "scientist"
TAG_NODE = "W0TAG"

LEGACY_FORM = (
    "rules in the older '<plugin>: <condition>' form: Sage's scheduler now refuses them; "
    "hivebus reads each as schedule(<plugin>): <condition> with a warning that shows that "
    "form, so old job files keep working (see tests/conformance/test_realworld_rules.py)"
)
UNKNOWN_CRITERION = (
    "a success criterion hivebus does not know (Walltime(1day)): Sage's scheduler takes any "
    "text there, and a job whose criterion is never met never completes; hivebus refuses it "
    "and says which criterion it knows (did you mean WallClock(1day)?)"
)
DELIBERATE: dict[str, str] = {"legacy form": LEGACY_FORM, "unknown criterion": UNKNOWN_CRITERION}


def job_cases() -> list[dict[str, Any]]:
    if not EXPECTED.is_file():
        return []
    return list(yaml.safe_load(EXPECTED.read_text())["jobs"])


CASES = job_cases()
pytestmark = pytest.mark.skipif(not CASES, reason=ABSENT)


def ids(cases: list[dict[str, Any]]) -> list[str]:
    return [case["file"].removeprefix("jobs/") for case in cases]


def world_for(spec: JobSpec, *, privileged: bool = True) -> Log:
    """ECR + scheduler with what the job names: bundles approved and public, nodes registered
    (allowing privileged plugins when the job has one and ``privileged``)."""
    config = HandlerConfig()
    log = Log([EcrHandler(config), SesHandler(config)])
    for bundle in sorted({p.plugin_spec.bundle_id for p in spec.plugins}):
        log.push(app_spec(bundle, architectures=ARCHITECTURES), "developer")
        log.by("admin", BundleApproved(bundle_id=bundle, by="admin"), bundle)
        public = PermissionGranted(
            resource=bundle, grantee_type="group", grantee=ALL_USERS, permission="READ",
            by="developer",
        )  # fmt: skip
        log.by("developer", public, bundle)
    sensors = sorted(
        {
            key.removeprefix("resource.")
            for p in spec.plugins
            for key in p.plugin_spec.selector
            if key.startswith("resource.") and key != "resource.gpu"
        }
    )
    for node in spec.nodes or [TAG_NODE]:
        log.register_node(
            manifest(
                node, tags=spec.node_tags, cpus=16, memory=64 * GiB, gpu="nvidia",
                sensors=sensors or ["bme680"],
            )
        )  # fmt: skip
        log.heartbeat(node, resources(16, 64 * GiB, gpu=True))
        if privileged and any(p.plugin_spec.privileged for p in spec.plugins):
            log.by("operator", NodeConfigUpdated(node=node, settings={"allow_privileged": "true"}))
    return log


def verdict(case: dict[str, Any]) -> tuple[str, str, JobSpec | None]:
    """``(accept|reject, why, the job as loaded)`` from hivebus's loader and scheduler."""
    try:
        spec = load_job(REALWORLD / case["file"], name=case["file"])
    except FormatError as exc:
        return "reject", str(exc), None
    log = world_for(spec)
    out = log.submit(spec, user=SUBMITTER)
    types = [event.type for event in out]
    if types and types[0] == "ses.job.scheduled":
        return "accept", "scheduled", spec
    assert types == ["ses.command.rejected"], types
    return "reject", "; ".join(out[0].data.reasons), spec


def difference(case: dict[str, Any], got: str, why: str, spec: JobSpec | None) -> str | None:
    """Which deliberate difference explains hivebus's verdict differing (None: they agree)."""
    if got == case["real"]:
        return None
    if got == "reject" and spec is not None and "unknown criterion" in why:
        assert all(
            criterion_problem(c) is None or "did you mean WallClock" in (criterion_problem(c) or "")
            for c in spec.success_criteria
        )
        return "unknown criterion"
    assert got == "accept" and spec is not None, "hivebus refuses what Sage's scheduler takes"
    rules = [parse_rule(text) for text in spec.science_rules]
    assert any(rule.legacy for rule in rules), f"hivebus takes what Sage refuses: {case['reason']}"
    return "legacy form"


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_hivebus_takes_what_the_scheduler_takes_and_refuses_what_it_refuses(
    case: dict[str, Any],
) -> None:
    got, why, spec = verdict(case)
    try:
        explained = difference(case, got, why, spec)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; the real scheduler: {case['real']} ({case['reason']}); hivebus: {why}"
        ) from None
    assert explained is None or explained in DELIBERATE


TAKEN = [case for case in CASES if case["real"] == "accept"]


@pytest.mark.parametrize("case", TAKEN, ids=ids(TAKEN))
def test_the_job_reads_as_the_scheduler_decodes_it(case: dict[str, Any]) -> None:
    """Plugins, images, args (as strings, as written), nodes and rules as the file gives them."""
    doc = yaml.load((REALWORLD / case["file"]).read_text(), Loader=yaml.BaseLoader)  # all str
    spec = load_job(REALWORLD / case["file"])
    assert [p.name for p in spec.plugins] == [p["name"] for p in doc["plugins"]]
    for plugin, written in zip(spec.plugins, doc["plugins"], strict=True):
        assert plugin.plugin_spec.image == written["pluginSpec"]["image"]
        assert plugin.plugin_spec.args == written["pluginSpec"].get("args", [])
        assert plugin.plugin_spec.privileged == (
            written["pluginSpec"].get("privileged", "false") == "true"
        )
    nodes = doc.get("nodes") or {}
    assert spec.nodes == list(nodes)
    assert spec.science_rules == doc.get("scienceRules", [])


def test_unquoted_numbers_in_args_are_the_words_written() -> None:
    """``- 30`` and ``- 0.50`` are the strings "30" and "0.50", as Go's decoder into
    ``[]string`` reads them (not PyYAML's 30 and 0.5)."""
    text = (REALWORLD / "jobs/edge-scheduler__data-jobs/9_video_sampling.yaml").read_text()
    assert load_job(text).plugins[0].plugin_spec.args[-1] == "60"
    changed = load_job(text.replace("    - 60\n", "    - 0.50\n    - 0x1F\n    - true\n"))
    assert changed.plugins[0].plugin_spec.args[-3:] == ["0.50", "0x1F", "true"]


ATMOS = "jobs/sage-website__docs/atmoswxt.yaml"


@pytest.mark.skipif(not (REALWORLD / ATMOS).is_file(), reason=ABSENT)
def test_privileged_runs_only_where_the_node_allows_it() -> None:
    """``privileged: true`` is a scheduler field; the node's policy decides (setting
    ``allow_privileged``): on nodes that do not allow it, the job is refused with the reason."""
    spec = load_job(REALWORLD / ATMOS)
    assert spec.plugins[0].plugin_spec.privileged
    allowed = world_for(spec).submit(spec, user=SUBMITTER)
    assert allowed[0].type == "ses.job.scheduled"
    refused = world_for(spec, privileged=False).submit(spec, user=SUBMITTER)
    assert [e.type for e in refused] == ["ses.command.rejected"]
    for node in spec.nodes:
        assert any(
            reason.startswith(f"node {node}: plugin waggle-wxt536: ")
            and "privileged: true" in reason
            and "allow_privileged" in reason
            for reason in refused[0].data.reasons
        ), refused[0].data.reasons


REFUSED = [case for case in CASES if verdict(case)[0] == "reject"]
FIELDS = ("plugins[", "scienceRules[", "successcriteria[", "unknown field (did you mean '")


@pytest.mark.parametrize("case", REFUSED, ids=ids(REFUSED))
def test_a_refusal_names_the_field_and_what_to_do(case: dict[str, Any]) -> None:
    _, why, _ = verdict(case)
    lines = why.split("; ") if "\n" not in why else why.splitlines()
    for line in lines:
        assert any(field in line for field in FIELDS) or "required field" in line, line


def test_old_lower_case_keys_get_the_scheduler_spelling() -> None:
    _, why, _ = verdict({"file": "jobs/edge-scheduler__data-jobs/traffic_old.yaml"})
    assert "nodetags: unknown field (did you mean 'nodeTags'?)" in why, why
    assert "sciencerules: unknown field (did you mean 'scienceRules'?)" in why, why
