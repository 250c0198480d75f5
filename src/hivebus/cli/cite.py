"""``hivebus ecr cite ID``: a citation record of a bundle version, from its facts in the log."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from hivebus.bus.client import Bus
from hivebus.bus.subjects import evt_filter
from hivebus.citation import BundleFacts, fold_bundle, render
from hivebus.cli.app import Hub, err, out, run, settings
from hivebus.cli.ecr import ecr_app
from hivebus.errors import SchemaError
from hivebus.schemas.ecr import parse_bundle_id
from hivebus.schemas.envelope import Event


async def bundle_facts(bus: Bus, bundle_id: str) -> BundleFacts:
    """Fold the ECR events on ``bundle_id``'s subjects, from the start of the log."""
    events: list[Event] = []
    subjects = [evt_filter("ecr.*.*", bundle_id)]
    async for _, event in bus.events("EVENTS", filter_subjects=subjects, stop_at_end=True):
        events.append(event)
    return fold_bundle(events, bundle_id)


@ecr_app.command()
def cite(
    bundle: Annotated[str, typer.Argument(help="namespace/name:version")],
    format_: Annotated[Literal["datacite", "cff", "bibtex"], typer.Option("--format", help="datacite (REST API JSON), cff (CITATION.cff), bibtex")] = "datacite",
    doi: Annotated[str | None, typer.Option(help="The DOI already registered for this version (never made up)")] = None,
    prefix: Annotated[str | None, typer.Option(help="DataCite: your DOI prefix, for DataCite to mint the DOI on POST /dois")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="Write to this file instead of stdout")] = None,
    hub: Hub = None,
) -> None:
    """A citation record of a bundle version, built from its facts (authors, version, source
    commit, provenance, measured profiles); the same bytes every time for a frozen version."""
    try:
        parse_bundle_id(bundle)
    except ValueError as exc:
        raise SchemaError(str(exc)) from None

    async def fetch() -> BundleFacts:
        async with await Bus.connect(settings(hub).nats_url, name="hivebus-cite") as bus:
            return await bundle_facts(bus, bundle)

    facts = run(fetch())
    text = render(facts, format_, doi=doi, prefix=prefix)
    if facts.frozen is None:
        err.print(f"note: {bundle} is not frozen, so this record changes as new runs are profiled; "
                  f"freeze it (`hivebus ecr freeze {bundle}`) before registering a DOI", highlight=False)
    if out_path is not None:
        out_path.write_text(text, encoding="utf-8")
        out.print(f"wrote {out_path}")
    else:
        sys.stdout.write(text)
