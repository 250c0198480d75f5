"""``sage.yaml``: an app as Sage's ECR takes it, with what the Sage portal fills in.

Many real ``sage.yaml`` files leave out ``source.url``, ``source.branch`` and even ``version``:
the portal's Create App takes them from the repository it builds from (and the user's
namespace). ``load_app`` fills them the same way, from a git ``Checkout`` of the file (remote
``origin``, branch, commit, ``git describe --tags``) or from values given explicitly (the
CLI's ``--source-url``, ``--branch``, ``--version``), and says what is missing otherwise.
What the file says wins; an explicit value that contradicts the file is an error.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from hivebus.formats.git import Checkout
from hivebus.formats.quantities import parse_bytes, parse_cpu
from hivebus.formats.reading import Source, read_document
from hivebus.formats.validation import Problems, convert, validate
from hivebus.schemas.ecr import AppSpec

OPTIONS = {"source.url": "--source-url", "source.branch": "--branch", "version": "--version"}


def _gpu_count(value: object) -> object:
    return int(value) if isinstance(value, bool) else value


def _same_repository(a: str, b: str) -> bool:
    def norm(url: str) -> str:
        return url.strip().rstrip("/").removesuffix(".git").lower()

    return norm(a) == norm(b)


def _where(checkout: Checkout | None, file: str) -> str:
    if checkout is None:
        return f"{file} is not in a git checkout"
    return f"the git checkout at {checkout.root}"


def _fill(
    doc: dict[str, Any],
    file: str,
    *,
    checkout: Checkout | None,
    given: dict[str, str | None],
    explicit: Collection[str],
    problems: Problems,
) -> None:
    """Fill source.url, source.branch, source.git_commit, source.directory and version where
    the file leaves them out; record contradictions and what cannot be filled."""
    source = doc.get("source")
    if not isinstance(source, dict):
        return  # missing or mis-shaped: the model reports it
    current = {"source.url": source.get("url"), "source.branch": source.get("branch"),
               "version": doc.get("version")}  # fmt: skip
    for field, value in given.items():
        if field in explicit and value is not None and current[field] not in (None, value):
            problems.append((field, f"{file} says {current[field]!r} and {OPTIONS[field]} says "
                                    f"{value!r}: give one of them"))  # fmt: skip
    file_url = source.get("url")
    same = (
        checkout is not None
        and checkout.url is not None
        and (file_url is None or _same_repository(str(file_url), checkout.url))
    )
    if source.get("url") is None:
        url = given.get("source.url") or (checkout.url if checkout else None)
        if url is not None:
            source["url"] = url
        else:
            why = f"{checkout.root} has no remote 'origin'" if checkout else _where(checkout, file)
            problems.append(("source.url", "missing: Sage's portal fills it in from the repository "
                             "it builds; push from a git checkout with a remote 'origin' or give "
                             f"--source-url URL ({why})"))  # fmt: skip
    if source.get("branch") is None and source.get("tag") is None:
        branch = given.get("source.branch") or (checkout.branch if same and checkout else None)
        if branch is not None:
            source["branch"] = branch
    if same and checkout is not None:
        if source.get("git_commit") is None and checkout.commit is not None:
            source["git_commit"] = checkout.commit
        if source.get("directory") is None and checkout.directory != ".":
            source["directory"] = checkout.directory
    if doc.get("version") is None:
        version = given.get("version") or (checkout.version if checkout else None)
        if version is not None:
            doc["version"] = version
        else:
            why = "it has no tag" if checkout is not None else _where(checkout, file)
            problems.append(("version", "missing: write version: X.Y.Z in the file, tag the "
                             f"checkout (git tag 0.1.0) or give --version X.Y.Z ({why})"))  # fmt: skip


def _old_layout(doc: dict[str, Any], problems: Problems) -> None:
    """The old ``sage.json`` wrote ``sources`` (a list); Sage's ECR refuses it, so do we, with
    what to write instead."""
    if "sources" in doc:
        doc.pop("sources")
        problems.append(("sources", "the old sage.json layout, which Sage's ECR no longer takes: "
                         "write one 'source' mapping (url, branch, architectures) instead of a "
                         "'sources' list"))  # fmt: skip


def load_app(
    source: Source,
    *,
    name: str = "sage.yaml",
    namespace: str | None = None,
    checkout: Checkout | None = None,
    source_url: str | None = None,
    branch: str | None = None,
    version: str | None = None,
    explicit: Collection[str] = (),
) -> AppSpec:
    """An ``AppSpec`` from a sage.yaml (path, YAML or JSON text, or parsed mapping).

    ``namespace`` fills in a file that names none (the ECR uses the pusher's). ``checkout``
    (see ``hivebus.formats.git.checkout_of``) and ``source_url``/``branch``/``version``
    fill ``source.url``, ``source.branch``, ``source.git_commit``, ``source.directory`` and
    ``version`` where the file leaves them out, the given values before the checkout's; the
    checkout's branch, commit and folder only when it is the repository ``source.url`` names
    (its tags give the version of the file in it either way).
    ``explicit``: which of ``source.url``, ``source.branch``, ``version`` the user gave on
    purpose, so that one contradicting the file is an error rather than ignored.
    """
    file, doc, _ = read_document(source, name)
    if namespace is not None:
        doc.setdefault("namespace", namespace)
    problems: Problems = []
    _old_layout(doc, problems)
    given = {"source.url": source_url, "source.branch": branch, "version": version}
    _fill(doc, file, checkout=checkout, given=given, explicit=explicit, problems=problems)
    convert(doc, ("resources", "cpu"), parse_cpu, problems)
    convert(doc, ("resources", "memory"), parse_bytes, problems)
    convert(doc, ("resources", "gpu"), _gpu_count, problems)
    return validate(AppSpec, file, doc, problems)


__all__ = ["load_app"]
