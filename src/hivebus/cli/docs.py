"""``hivebus docs asyncapi``: the AsyncAPI document of the platform's subjects, without a server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hivebus.cli.app import Hub, app, err, settings
from hivebus.errors import SetupError

docs_app = typer.Typer(help="Documents generated from the code: the AsyncAPI of the subjects.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")


@docs_app.command()
def asyncapi(
    out_file: Annotated[Path | None, typer.Option("--out", help="Write it to this file (default: print it).")] = None,
    hub: Hub = None,
) -> None:
    """Every event type's subject and payload schema as an AsyncAPI 3 document (JSON); the
    server named is --hub / HIVEBUS_NATS_URL; nothing connects to it."""
    from hivebus.web.asyncapi import document

    text = json.dumps(document(settings(hub).nats_url), indent=2, sort_keys=True) + "\n"
    if out_file is None:
        typer.echo(text, nl=False)
        return
    try:
        out_file.write_text(text)
    except OSError as exc:
        raise SetupError(f"cannot write {out_file}: {exc.strerror}", hint="check the directory exists and is writable") from None
    err.print(f"wrote {out_file} ({len(text):,} bytes, {len(json.loads(text)['channels'])} channels)", highlight=False)
