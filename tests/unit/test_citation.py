"""Citation records of a bundle version from its facts, with no server: DataCite's required
properties, CFF's required keys, BibTeX that parses, and the same bytes for a frozen version."""

from __future__ import annotations

import json
from typing import Any

import bibtexparser
import jsonschema
import pytest
import yaml

from hivebus.citation import CitationError, fold_bundle, parse_author, render
from hivebus.handlers.config import HandlerConfig
from hivebus.handlers.ecr import EcrHandler
from hivebus.handlers.testing import Log, app_spec
from hivebus.schemas.ecr import (
    ArtifactRef,
    BundleApproved,
    BundleFrozen,
    BundlePushed,
    HardwareProfile,
    ProfileRecorded,
    Provenance,
)

BUNDLE = "waggle/plugin-smoke:1.2.0"

# The DataCite Metadata Schema 4.x mandatory properties, as its JSON form (kernel-4.3
# datacite_4.3_schema.json, "required") states them: Identifier, Creator, Title, Publisher,
# PublicationYear, ResourceType (types.resourceTypeGeneral from the controlled list), and
# schemaVersion. Written here from the specification, for the properties it requires.
RESOURCE_TYPES_GENERAL = [
    "Audiovisual", "Book", "BookChapter", "Collection", "ComputationalNotebook", "ConferencePaper",
    "ConferenceProceeding", "DataPaper", "Dataset", "Dissertation", "Event", "Image", "Instrument",
    "InteractiveResource", "Journal", "JournalArticle", "Model", "OutputManagementPlan", "PeerReview",
    "PhysicalObject", "Preprint", "Report", "Service", "Software", "Sound", "Standard", "StudyRegistration",
    "Text", "Workflow", "Other",
]
DATACITE_REQUIRED: dict[str, Any] = {
    "type": "object",
    "required": ["identifiers", "creators", "titles", "publisher", "publicationYear", "types", "schemaVersion"],
    "properties": {
        "identifiers": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["identifier", "identifierType"],
            "properties": {"identifier": {"type": "string", "minLength": 1},
                           "identifierType": {"type": "string", "minLength": 1}}}},
        "creators": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1},
                           "nameType": {"enum": ["Organizational", "Personal"]},
                           "givenName": {"type": "string"}, "familyName": {"type": "string"}}}},
        "titles": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["title"], "properties": {"title": {"type": "string", "minLength": 1}}}},
        "publisher": {"type": "string", "minLength": 1},
        "publicationYear": {"type": "string", "pattern": "^[0-9]{4}$"},
        "types": {"type": "object", "required": ["resourceTypeGeneral"],
                  "properties": {"resourceTypeGeneral": {"enum": RESOURCE_TYPES_GENERAL},
                                 "resourceType": {"type": "string"}}},
        "schemaVersion": {"const": "http://datacite.org/schema/kernel-4"},
        "relatedIdentifiers": {"type": "array", "items": {
            "type": "object", "required": ["relatedIdentifier", "relatedIdentifierType", "relationType"]}},
        "descriptions": {"type": "array", "items": {"type": "object", "required": ["description", "descriptionType"]}},
        "dates": {"type": "array", "items": {"type": "object", "required": ["date", "dateType"]}},
    },
}


def story(*, freeze: bool = True, authors: tuple[str, ...] = (
        "Eric Van Hensbergen <ericvh@example.org>", "Argonne National Laboratory")) -> Log:
    cfg = HandlerConfig()
    log = Log([EcrHandler(cfg)])
    app = app_spec(BUNDLE).model_copy(update={
        "authors": list(authors), "keywords": ["smoke", "camera"], "license": "MIT",
        "description": "Detects smoke in camera images\nwith a small CNN."})
    log.by("alice", BundlePushed(
        app=app, pusher="alice",
        artifacts=[ArtifactRef(name="model.onnx", kind="model", digest="sha256:" + "ab" * 32, size=1024,
                               url="https://models.example.org/smoke.onnx")],
        provenance=Provenance(training_data=["https://doi.org/10.5281/zenodo.123", "training-data/hpwren/2023"],
                              model="https://models.example.org/smoke.onnx", notes="fine-tuned"),
    ), BUNDLE)
    log.by("admin", BundleApproved(bundle_id=BUNDLE, by="admin"), BUNDLE)
    run(log, "r1", 2.0, 10.0)
    if freeze:
        log.by("alice", BundleFrozen(bundle_id=BUNDLE, by="alice"), BUNDLE)
    return log


def run(log: Log, run_id: str, cpu_seconds: float, wall: float) -> None:
    log.by("handler/ecr", ProfileRecorded(
        bundle_id=BUNDLE, hardware=HardwareProfile(arch="linux/arm64", gpu="nvidia-jetson-xavier"), node="W012",
        run_id=run_id, exit_state="completed", cpu_seconds=cpu_seconds, max_rss_bytes=200 * 2**20,
        wall_seconds=wall), BUNDLE)


def attributes(log: Log, **kwargs: Any) -> dict[str, Any]:
    body = json.loads(render(fold_bundle(log.events, BUNDLE), "datacite", **kwargs))
    assert body["data"]["type"] == "dois"
    return body["data"]["attributes"]


def test_the_datacite_record_has_every_required_property() -> None:
    attrs = attributes(story())
    # the REST API's own keys (doi, prefix, url, event) are not metadata properties
    jsonschema.validate({k: v for k, v in attrs.items() if k not in ("doi", "prefix", "url", "event")},
                        DATACITE_REQUIRED)
    assert attrs["creators"] == [
        {"name": "Van Hensbergen, Eric", "nameType": "Personal", "givenName": "Eric", "familyName": "Van Hensbergen"},
        {"name": "Argonne National Laboratory", "nameType": "Organizational"},
    ]
    assert attrs["version"] == "1.2.0" and attrs["types"]["resourceTypeGeneral"] == "Software"
    assert attrs["titles"] == [{"title": "waggle/plugin-smoke: Detects smoke in camera images"}]
    assert attrs["identifiers"] == [{"identifier": BUNDLE, "identifierType": "ECR"}]
    assert "doi" not in attrs and "prefix" not in attrs  # no DOI is ever made up
    assert attrs["rightsList"] == [{"rights": "MIT", "rightsIdentifier": "MIT", "rightsIdentifierScheme": "SPDX"}]


def test_provenance_source_commit_and_profiles_are_in_the_record() -> None:
    attrs = attributes(story())
    related = {(r["relatedIdentifier"], r["relatedIdentifierType"], r["relationType"]) for r in attrs["relatedIdentifiers"]}
    assert ("10.5281/zenodo.123", "DOI", "IsDerivedFrom") in related
    assert ("https://models.example.org/smoke.onnx", "URL", "Requires") in related
    assert ("https://github.com/example/plugin", "URL", "IsDerivedFrom") in related
    text = " ".join(d["description"] for d in attrs["descriptions"])
    assert "commit 3f2c9a1" in text and "training-data/hpwren/2023" in text
    assert "1 runs (1 completed), up to 0.200 cores" in text and "up to its freeze" in text


def test_a_frozen_version_gives_the_same_bytes_whatever_runs_come_later() -> None:
    log = story()
    first = {f: render(fold_bundle(log.events, BUNDLE), f) for f in ("datacite", "cff", "bibtex")}
    run(log, "r2", 9.0, 10.0)  # measured after the freeze
    again = {f: render(fold_bundle(log.events, BUNDLE), f) for f in ("datacite", "cff", "bibtex")}
    assert first == again


def test_an_unfrozen_version_follows_its_profiles() -> None:
    log = story(freeze=False)
    before = render(fold_bundle(log.events, BUNDLE), "datacite")
    run(log, "r2", 9.0, 10.0)
    after = render(fold_bundle(log.events, BUNDLE), "datacite")
    assert before != after and "up to 0.900 cores" in after and "not frozen" in after


def test_cff_is_yaml_with_the_required_keys() -> None:
    record = yaml.safe_load(render(fold_bundle(story().events, BUNDLE), "cff"))
    assert {"cff-version", "message", "title", "authors"} <= set(record)
    assert record["cff-version"] == "1.2.0" and record["commit"] == "3f2c9a1"
    assert record["authors"][0] == {"given-names": "Eric", "family-names": "Van Hensbergen", "email": "ericvh@example.org"}
    assert record["authors"][1] == {"name": "Argonne National Laboratory"}


def test_bibtex_parses_into_one_software_entry() -> None:
    library = bibtexparser.parse_string(render(fold_bundle(story().events, BUNDLE), "bibtex", doi="10.1234/abc"))
    assert not library.failed_blocks
    (entry,) = library.entries
    assert entry.entry_type == "software"
    fields = {f.key: f.value for f in entry.fields}
    assert fields["author"] == "Van Hensbergen, Eric and {Argonne National Laboratory}"
    assert fields["version"] == "1.2.0" and fields["doi"] == "10.1234/abc"


def test_a_given_doi_or_prefix_goes_where_datacite_expects_it() -> None:
    assert attributes(story(), doi="https://doi.org/10.1234/ABC")["doi"] == "10.1234/ABC"
    assert attributes(story(), prefix="10.80000")["prefix"] == "10.80000"
    with pytest.raises(CitationError, match="not a DOI"):
        attributes(story(), doi="not-a-doi")


def test_an_unknown_bundle_is_a_clear_error() -> None:
    with pytest.raises(CitationError, match="is not registered"):
        fold_bundle(story().events, "waggle/other:1.0.0")


def test_authors_as_sage_yaml_writes_them() -> None:
    author = parse_author("Princess Zelda <zelda@hyrule.org> (https://hyrule.org)")
    assert (author.name, author.email, author.url, author.given_family) == (
        "Princess Zelda", "zelda@hyrule.org", "https://hyrule.org", ("Princess", "Zelda"))
    assert parse_author("Christopher Lee").email is None
