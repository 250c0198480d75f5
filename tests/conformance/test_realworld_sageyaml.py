"""Real ``sage.yaml`` files, as Sage users and the ECR's own tests wrote them, taken or refused
as Sage's ECR takes or refuses them.

``../shared/realworld/expected.yaml`` (beside the repository; not part of it) gives, for 27
app files, what the real ECR does with a submission (``real: accept|reject``) and how the
file reached it (``submitted_via``): ``api`` = POSTed as written; ``portal`` = the file sits
in an app's repository and the Sage portal's Create App submits it, filling in the user's
namespace, ``source.url`` and ``source.branch`` from that repository. hivebus's counterpart
of the portal is ``hivebus ecr push`` in a git checkout, so a portal case is pushed the same
way here: the file is put in a fresh git repository (remote ``origin`` = the repository the
file came from, branch ``main``, tagged ``0.1.0``) and loaded with that checkout.

The verdict is hivebus's loader (``hivebus.formats.load_app``) and then the ECR's pure
decision on the push (``hivebus.handlers.ecr`` driven through ``handlers.testing.Log``).
``DELIBERATE`` lists the only cases where hivebus may differ, with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hivebus.errors import FormatError
from hivebus.formats import checkout_of, load_app
from hivebus.handlers.ecr import EcrHandler
from hivebus.handlers.testing import Log
from hivebus.schemas.ecr import AppSpec

REALWORLD = Path(__file__).resolve().parents[2].parent / "shared" / "realworld"
EXPECTED = REALWORLD / "expected.yaml"
ABSENT = (
    f"{EXPECTED} is absent: the real Sage app files live beside the repository "
    "(../shared/realworld/), not in it, and this clone has no copy"
)
PORTAL_USER = "portaluser"
TAG = "0.1.0"

DELIBERATE: dict[str, str] = {}
"""file -> why hivebus's verdict differs from the real ECR's (none so far)."""


def app_cases() -> list[dict[str, Any]]:
    if not EXPECTED.is_file():
        return []
    return list(yaml.safe_load(EXPECTED.read_text())["sageyaml"])


CASES = app_cases()
pytestmark = [
    pytest.mark.skipif(not CASES, reason=ABSENT),
    pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed"),
]


def ids(cases: list[dict[str, Any]]) -> list[str]:
    return [case["file"].removeprefix("sageyaml/") for case in cases]


def repository_of(case: dict[str, Any]) -> str:
    """The repository a file came from: its folder is ``<owner>__<repo>``."""
    owner, repo = Path(case["file"]).parent.name.split("__", 1)
    return f"https://github.com/{owner}/{repo}"


def git(folder: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        check=True,
        capture_output=True,
    )


def portal_checkout(case: dict[str, Any], where: Path) -> Path:
    """The file in a fresh repository as the app's author keeps it; returns its path there."""
    source = REALWORLD / case["file"]
    where.mkdir()
    git(where, "init", "-q", "-b", "main")
    git(where, "remote", "add", "origin", repository_of(case))
    target = where / source.name
    target.write_bytes(source.read_bytes())
    git(where, "add", source.name)
    git(where, "commit", "-q", "-m", "app")
    git(where, "tag", TAG)
    return target


def load(case: dict[str, Any], tmp_path: Path) -> tuple[AppSpec, str]:
    """The app as hivebus reads the submission, and who pushes it."""
    if case["submitted_via"] == "portal":
        path = portal_checkout(case, tmp_path / "app")
        spec = load_app(path, name=case["file"], namespace=PORTAL_USER, checkout=checkout_of(path))
        return spec, PORTAL_USER
    spec = load_app(REALWORLD / case["file"], name=case["file"])
    return spec, "apitester"


def verdict(case: dict[str, Any], tmp_path: Path) -> tuple[str, str]:
    """``(accept|reject, why)`` from hivebus's loader and the ECR's decision."""
    try:
        spec, pusher = load(case, tmp_path)
    except FormatError as exc:
        return "reject", str(exc)
    log = Log([EcrHandler()])
    types = [event.type for event in log.push(spec, pusher)]
    if "ecr.bundle.registered" in types:
        return "accept", spec.bundle_id
    assert types == ["ecr.command.rejected"], types
    return "reject", "; ".join(reason for _, reason in log.refused)


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_hivebus_takes_what_the_ecr_takes_and_refuses_what_it_refuses(
    case: dict[str, Any], tmp_path: Path
) -> None:
    got, why = verdict(case, tmp_path)
    if case["file"] in DELIBERATE:
        assert got != case["real"], f"listed as a deliberate difference, but agrees: {why}"
        return
    assert got == case["real"], f"the real ECR: {case['real']} ({case['reason']}); hivebus: {why}"


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_the_app_reads_as_the_ecr_stores_it(case: dict[str, Any], tmp_path: Path) -> None:
    """What hivebus registers is what the file says, the portal's fill-ins where it is silent."""
    if case["real"] != "accept":
        pytest.skip("refused: nothing is stored")
    doc = yaml.safe_load((REALWORLD / case["file"]).read_text())
    spec, _ = load(case, tmp_path)
    source = doc["source"]
    assert spec.name == doc["name"]
    assert spec.version == doc.get("version", TAG)
    assert spec.namespace == doc.get("namespace", PORTAL_USER)
    assert spec.source.architectures == source["architectures"]
    assert spec.source.url == source.get("url", repository_of(case))
    if case["submitted_via"] == "portal":  # the checkout's branch where the file names none
        assert spec.source.branch == source.get("branch", "main")
        named = source.get("url", repository_of(case)).removesuffix(".git").lower()
        same = named == repository_of(case).lower()
        assert (spec.source.git_commit is not None) == same
    else:
        assert spec.source.branch == source.get("branch")
    assert spec.source.build_args == source.get("build_args", {})
    assert spec.source.directory == source.get("directory", ".")
    assert spec.source.dockerfile == source.get("dockerfile", "Dockerfile")
    assert [(i.id, i.type) for i in spec.inputs] == [
        (i["id"], i["type"]) for i in doc.get("inputs") or []
    ]
    assert spec.arguments == [str(a) for a in doc.get("arguments") or []]
    assert spec.metadata == (doc.get("metadata") or {})
    resources = doc.get("resources")
    if isinstance(resources, list):
        assert spec.resource_list == resources
    testing = doc.get("testing")
    if testing is not None:
        assert spec.testing is not None
        assert spec.testing.command == testing["command"]
        assert spec.testing.mask_entrypoint == testing.get("mask_entrypoint", False)


REFUSED = [case for case in CASES if case["real"] == "reject"]


@pytest.mark.parametrize("case", REFUSED, ids=ids(REFUSED))
def test_a_refusal_names_the_field_and_what_to_do(case: dict[str, Any], tmp_path: Path) -> None:
    got, why = verdict(case, tmp_path)
    assert got == "reject"
    doc = yaml.safe_load((REALWORLD / case["file"]).read_text())
    unknown = sorted(set(doc) - set(AppSpec.model_fields) - {"resources"})
    assert unknown, "a refused file here has a field the ECR does not take"
    for field in unknown:
        assert f": {field}: " in why, why
    assert "write one 'source' mapping" in why, why
