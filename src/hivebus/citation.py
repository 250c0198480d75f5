"""A citable record of one ECR bundle version, built from its facts in the log (pure).

``fold_bundle(events, bundle_id)`` folds the bundle's ECR facts (registration with its app,
artifacts and provenance; approval; freeze; deletion; profiles recorded from real runs) into
``BundleFacts``; ``datacite``, ``cff`` and ``bibtex`` render them. The same facts give the same
bytes: nothing reads a clock, and a frozen version counts only the profiles recorded up to
its freeze, so its record never changes once frozen (a DOI should be registered only then).

No DOI is ever made up: the DataCite record is the body of a DataCite REST API request
(``POST /dois``, see docs/citation.md) which carries the DOI only when one is given (``doi``,
already registered) or lets DataCite mint one under a ``prefix``; otherwise its identifier
is the bundle's own id in the ECR.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import yaml

from hivebus.errors import HivebusError
from hivebus.schemas.ecr import (
    AppSpec,
    ArtifactRef,
    BundleApproved,
    BundleDeleted,
    BundleFrozen,
    BundlePushed,
    BundleRegistered,
    ProfileRecorded,
    Provenance,
)
from hivebus.schemas.envelope import Event

SCHEMA_VERSION: Final = "http://datacite.org/schema/kernel-4"
PUBLISHER: Final = "hivebus Edge Code Repository"
RESOURCE_TYPE: Final = "Edge plugin (ECR bundle)"
_AUTHOR = re.compile(r"^(?P<name>[^<(]+?)\s*(?:<(?P<email>[^>]*)>)?\s*(?:\((?P<url>[^)]*)\))?$")
_SPDX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$")
_DOI = re.compile(r"^(?:https?://(?:dx\.)?doi\.org/|doi:)?(?P<doi>10\.\d{4,9}/\S+)$", re.IGNORECASE)
_ORGANIZATION = re.compile(
    r"\b(laborator(y|ies)|university|institute|team|group|project|inc|lab|center|centre|consortium)\b",
    re.IGNORECASE,
)


def _decided(event: Event) -> bool:
    """A fact the ECR decided (not a user's request of the same type, as old logs hold)."""
    return event.source.startswith("handler/")


class CitationError(HivebusError):
    """The bundle cannot be cited (unknown, deleted)."""


@dataclass(frozen=True, slots=True)
class Author:
    name: str
    email: str | None = None
    url: str | None = None

    @property
    def organization(self) -> bool:
        return bool(_ORGANIZATION.search(self.name))

    @property
    def given_family(self) -> tuple[str, str] | None:
        """(given, family) for a person's name of two words or more: the first word is the
        given name, the rest the family name ("Eric Van Hensbergen"); "Family, Given" too."""
        if self.organization:
            return None
        if "," in self.name:
            family, given = (p.strip() for p in self.name.split(",", 1))
            return (given, family) if given and family else None
        words = self.name.split()
        return (words[0], " ".join(words[1:])) if len(words) > 1 else None


def parse_author(text: str) -> Author:
    """``Name <email> (url)`` as sage.yaml (and npm) write an author."""
    m = _AUTHOR.match(text.strip())
    if m is None:
        return Author(text.strip())
    return Author(m["name"].strip(), m["email"] or None, m["url"] or None)


@dataclass(slots=True)
class ProfileStats:
    """What the runs on one hardware class measured."""

    runs: int = 0
    completed: int = 0
    cores: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)

    def describe(self, hardware: tuple[str, str, str]) -> str:
        arch, gpu, node_class = hardware
        where = arch + (f", GPU {gpu}" if gpu else "") + (f", node class {node_class}" if node_class else "")
        return (
            f"{where}: {self.runs} runs ({self.completed} completed), up to {max(self.cores):.3f} cores, "
            f"peak memory {max(self.rss) / 2**20:.1f} MiB, median wall time {statistics.median(self.wall):.3f} s"
        )


@dataclass(slots=True)
class BundleFacts:
    bundle_id: str
    app: AppSpec
    owner: str
    registered: datetime
    pusher: str | None = None
    artifacts: list[ArtifactRef] = field(default_factory=list)
    provenance: Provenance | None = None
    approved_by: str | None = None
    frozen: datetime | None = None
    deleted: bool = False
    profiles: dict[tuple[str, str, str], ProfileStats] = field(default_factory=dict)

    @property
    def authors(self) -> list[Author]:
        return [parse_author(a) for a in self.app.authors if a.strip()]

    @property
    def issued(self) -> datetime:
        return self.frozen or self.registered

    @property
    def landing_page(self) -> str:
        return self.app.homepage or self.app.source.url


def fold_bundle(events: Iterable[Event], bundle_id: str) -> BundleFacts:
    """The facts of ``bundle_id`` in log order (other events are ignored)."""
    pushes: dict[str, BundlePushed] = {}
    facts: BundleFacts | None = None
    for event in events:
        data: Any = event.data
        if isinstance(data, BundlePushed) and not _decided(event):
            pushes[event.id] = data  # a request of an old log, answered by causation
            continue
        if getattr(data, "bundle_id", None) != bundle_id or not _decided(event):
            continue
        if isinstance(data, BundleRegistered):
            # a registration carries the push; one of an old log names it by causation
            push = pushes.get(event.causationid or "")
            app = getattr(data, "app", None) or (push.app if push else None)
            if app is None:
                continue
            facts = BundleFacts(
                bundle_id=bundle_id, app=app, owner=data.owner, registered=event.time,
                pusher=getattr(data, "pusher", None) or (push.pusher if push else None),
                artifacts=list(getattr(data, "artifacts", None) or (push.artifacts if push else [])),
                provenance=getattr(data, "provenance", None) or (push.provenance if push else None),
            )
        elif facts is None:
            continue
        elif isinstance(data, BundleApproved):
            facts.approved_by = data.by
        elif isinstance(data, BundleFrozen) and facts.frozen is None:
            facts.frozen = event.time
        elif isinstance(data, BundleDeleted):
            facts.deleted = True
        elif isinstance(data, ProfileRecorded) and facts.frozen is None:
            hw = data.hardware
            stats = facts.profiles.setdefault((hw.arch, hw.gpu or "", hw.node_class or ""), ProfileStats())
            stats.runs += 1
            stats.completed += data.exit_state == "completed"
            stats.cores.append(data.cpu_seconds / data.wall_seconds if data.wall_seconds > 0 else 0.0)
            stats.rss.append(data.max_rss_bytes)
            stats.wall.append(data.wall_seconds)
    if facts is None:
        raise CitationError(f"bundle {bundle_id} is not registered in the ECR",
                            hint="see `hivebus ecr list`")
    if facts.deleted:
        raise CitationError(f"bundle {bundle_id} was deleted: it has nothing left to cite")
    return facts


# --- DataCite ---------------------------------------------------------------------------------


def datacite(facts: BundleFacts, *, doi: str | None = None, prefix: str | None = None,
             publisher: str = PUBLISHER) -> dict[str, Any]:
    """The body of a DataCite REST API ``POST /dois`` (JSON:API) for this version."""
    app = facts.app
    attributes: dict[str, Any] = {}
    if doi is not None:
        attributes["doi"] = _doi(doi)
    elif prefix is not None:
        attributes["prefix"] = prefix
    identifier = (
        {"identifier": f"https://doi.org/{attributes['doi']}", "identifierType": "DOI"}
        if doi is not None
        else {"identifier": facts.bundle_id, "identifierType": "ECR"}
    )
    attributes |= {
        "identifiers": [identifier],
        "creators": [_creator(a) for a in facts.authors] or [{"name": facts.owner}],
        "titles": [{"title": f"{app.namespace}/{app.name}: {_first_line(app.description)}"}],
        "publisher": publisher,
        "publicationYear": str(facts.issued.year),
        "types": {"resourceTypeGeneral": "Software", "resourceType": RESOURCE_TYPE},
        "version": app.version,
        "subjects": [{"subject": k} for k in _unique(app.keywords)],
        "dates": _dates(facts),
        "alternateIdentifiers": [{"alternateIdentifier": facts.bundle_id, "alternateIdentifierType": "ECR bundle"}],
        "relatedIdentifiers": _related(facts),
        "rightsList": _rights(app.license),
        "descriptions": _descriptions(facts),
        "fundingReferences": [{"funderName": app.funding}] if app.funding else [],
        "contributors": [{"name": c, "contributorType": "ProjectMember"} for c in _unique(app.collaborators)],
        "url": facts.landing_page,
        "schemaVersion": SCHEMA_VERSION,
    }
    attributes = {k: v for k, v in attributes.items() if v != []}
    return {"data": {"type": "dois", "attributes": attributes}}


def _creator(author: Author) -> dict[str, Any]:
    creator: dict[str, Any] = {"name": author.name}
    if author.organization:
        creator["nameType"] = "Organizational"
    elif (parts := author.given_family) is not None:
        given, family = parts
        creator = {"name": f"{family}, {given}", "nameType": "Personal", "givenName": given, "familyName": family}
    return creator


def _dates(facts: BundleFacts) -> list[dict[str, str]]:
    dates = [{"date": facts.registered.date().isoformat(), "dateType": "Created"}]
    if facts.frozen is not None:
        dates.append({"date": facts.frozen.date().isoformat(), "dateType": "Issued"})
    return dates


def _related(facts: BundleFacts) -> list[dict[str, str]]:
    related = [_reference(facts.app.source.url, "IsDerivedFrom")]
    if facts.provenance is not None:
        related += [_reference(ref, "IsDerivedFrom") for ref in facts.provenance.training_data]
        if facts.provenance.model:
            related.append(_reference(facts.provenance.model, "Requires"))
    related += [_reference(a.url, "HasPart") for a in facts.artifacts if a.url]
    seen: set[str] = set()
    unique = []
    for item in related:
        if item and item["relatedIdentifier"] not in seen:
            seen.add(item["relatedIdentifier"])
            unique.append(item)
    return unique


def _reference(ref: str, relation: str) -> dict[str, str]:
    """A related identifier for a DOI or a URL; {} for a reference that resolves nowhere
    (a bucket object): those are listed in the Methods description instead."""
    if m := _DOI.match(ref.strip()):
        return {"relatedIdentifier": m["doi"], "relatedIdentifierType": "DOI", "relationType": relation}
    if ref.startswith(("http://", "https://")):
        return {"relatedIdentifier": ref, "relatedIdentifierType": "URL", "relationType": relation}
    return {}


def _rights(license_: str | None) -> list[dict[str, str]]:
    if not license_:
        return []
    rights = {"rights": license_}
    if _SPDX.match(license_):
        rights |= {"rightsIdentifier": license_, "rightsIdentifierScheme": "SPDX"}
    return [rights]


def _descriptions(facts: BundleFacts) -> list[dict[str, str]]:
    app = facts.app
    source = app.source
    built = f"Built from {source.url}"
    if source.git_commit:
        built += f" at commit {source.git_commit}"
    elif source.tag or source.branch:
        built += f" ({'tag ' + source.tag if source.tag else 'branch ' + str(source.branch)}, no commit recorded)"
    built += f", directory {source.directory}, {source.dockerfile}, for {', '.join(source.architectures)}."
    if facts.artifacts:
        built += " Artifacts: " + "; ".join(f"{a.name} ({a.kind}, {a.digest}, {a.size} bytes)" for a in facts.artifacts) + "."
    descriptions = [
        {"description": app.description, "descriptionType": "Abstract"},
        {"description": built, "descriptionType": "TechnicalInfo"},
    ]
    if facts.profiles:
        measured = "; ".join(stats.describe(hw) for hw, stats in sorted(facts.profiles.items()))
        scope = "up to its freeze" if facts.frozen else "so far (the version is not frozen)"
        descriptions.append({"description": f"Performance measured by the ECR from real runs {scope}: {measured}.",
                             "descriptionType": "TechnicalInfo"})
    if facts.provenance is not None and (facts.provenance.training_data or facts.provenance.model):
        parts = []
        if facts.provenance.training_data:
            parts.append("training data: " + ", ".join(facts.provenance.training_data))
        if facts.provenance.model:
            parts.append(f"model: {facts.provenance.model}")
        if facts.provenance.notes:
            parts.append(facts.provenance.notes)
        descriptions.append({"description": "Provenance: " + "; ".join(parts) + ".", "descriptionType": "Methods"})
    return descriptions


# --- CFF and BibTeX ---------------------------------------------------------------------------


def cff(facts: BundleFacts, *, doi: str | None = None) -> str:
    """CITATION.cff (Citation File Format 1.2.0)."""
    app = facts.app
    record: dict[str, Any] = {
        "cff-version": "1.2.0",
        "message": f"If you use {facts.bundle_id}, please cite it as below.",
        "type": "software",
        "title": f"{app.namespace}/{app.name}",
        "abstract": app.description,
        "authors": [_cff_author(a) for a in facts.authors] or [{"name": facts.owner}],
        "version": app.version,
        "date-released": facts.issued.date().isoformat(),
        "repository-code": app.source.url,
    }
    if app.source.git_commit:
        record["commit"] = app.source.git_commit
    if app.license and _SPDX.match(app.license):
        record["license"] = app.license
    if app.keywords:
        record["keywords"] = _unique(app.keywords)
    identifiers: list[dict[str, str]] = [
        {"type": "other", "value": facts.bundle_id, "description": "ECR bundle"}
    ]
    if doi is not None:
        record["doi"] = _doi(doi)
        identifiers.insert(0, {"type": "doi", "value": _doi(doi)})
    record["identifiers"] = identifiers
    if app.homepage:
        record["url"] = app.homepage
    return str(yaml.safe_dump(record, sort_keys=False, allow_unicode=True, width=100))


def _cff_author(author: Author) -> dict[str, str]:
    parts = author.given_family
    entry = {"given-names": parts[0], "family-names": parts[1]} if parts else {"name": author.name}
    if author.email:
        entry["email"] = author.email
    if author.url:
        entry["website"] = author.url
    return entry


def bibtex(facts: BundleFacts, *, doi: str | None = None) -> str:
    """One ``@software`` entry (biblatex's type; BibTeX styles read it as ``@misc``)."""
    app = facts.app
    names = []
    for author in facts.authors:
        parts = author.given_family
        names.append(f"{_tex(parts[1])}, {_tex(parts[0])}" if parts else f"{{{_tex(author.name)}}}")
    note = f"ECR bundle {facts.bundle_id}"
    if app.source.git_commit:
        note += f", source commit {app.source.git_commit}"
    fields = {  # values as they go between the braces
        "author": " and ".join(names) or _tex(facts.owner),
        "title": _tex(f"{app.namespace}/{app.name}: {_first_line(app.description)}"),
        "year": str(facts.issued.year),
        "version": _tex(app.version),
        "url": facts.landing_page.replace("{", "%7B").replace("}", "%7D"),
        "note": _tex(note),
    }
    if doi is not None:
        fields["doi"] = _doi(doi).replace("{", "").replace("}", "")
    key = re.sub(r"[^A-Za-z0-9]+", "_", f"{app.namespace}_{app.name}_{app.version}").strip("_")
    body = ",\n".join(f"  {k} = {{{v}}}" for k, v in fields.items())
    return f"@software{{{key},\n{body}\n}}\n"


def _tex(text: str) -> str:
    """Braces dropped (they would unbalance the field), LaTeX's special characters escaped."""
    return re.sub(r"([&%$#_])", r"\\\1", text.replace("{", "").replace("}", ""))


# --- helpers ----------------------------------------------------------------------------------


def _doi(text: str) -> str:
    m = _DOI.match(text.strip())
    if m is None:
        raise CitationError(f"{text!r} is not a DOI", hint="a DOI looks like 10.1234/abcd (https://doi.org/ may precede it)")
    return m["doi"]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        if item.strip():
            seen.setdefault(item.strip(), None)
    return list(seen)


def render(facts: BundleFacts, format_: str, *, doi: str | None = None, prefix: str | None = None) -> str:
    if format_ == "datacite":
        return json.dumps(datacite(facts, doi=doi, prefix=prefix), indent=2, ensure_ascii=False) + "\n"
    if format_ == "cff":
        return cff(facts, doi=doi)
    if format_ == "bibtex":
        return bibtex(facts, doi=doi)
    raise CitationError(f"unknown citation format {format_!r}", hint="one of datacite, cff, bibtex")
