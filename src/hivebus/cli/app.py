"""The typer app, shared options, and the error boundary."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from hivebus.config import Settings
from hivebus.errors import HivebusError
from hivebus.logs import configure_logging

T = TypeVar("T")

app = typer.Typer(
    name="hivebus",
    help="hivebus: an event-sourced platform for an edge-computing sensor network (ECR, SES, WES) on NATS JetStream and DuckDB.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

# The modules that add commands to ``app``; imported by ``main`` (nothing runs at import).
COMMAND_MODULES = (
    "hivebus.cli.server",
    "hivebus.cli.events",
    "hivebus.cli.query",
    "hivebus.cli.data",
    "hivebus.cli.replay",
    "hivebus.cli.whatif",
    "hivebus.cli.ecr",
    "hivebus.cli.cite",
    "hivebus.cli.job",
    "hivebus.cli.node",
    "hivebus.cli.up",
    "hivebus.cli.access",
    "hivebus.cli.web",
    "hivebus.cli.storage",
    "hivebus.cli.site",
    "hivebus.cli.docs",
)

# Which of them add each top-level command or group, so that `hivebus query ...` imports the
# modules of `query` alone (~0.5 s less per command than importing all 16; the suite runs
# hundreds). tests/unit/test_cli_index.py checks it against what the modules register.
COMMAND_INDEX: dict[str, tuple[str, ...]] = {
    "server": ("hivebus.cli.server",),
    "publish": ("hivebus.cli.events",),
    "tail": ("hivebus.cli.events",),
    "query": ("hivebus.cli.query",),
    "projector": ("hivebus.cli.query",),
    "handlers": ("hivebus.cli.job",),
    "web": ("hivebus.cli.web",),
    "up": ("hivebus.cli.up",),
    "data": ("hivebus.cli.data",),
    "replay": ("hivebus.cli.replay", "hivebus.cli.whatif"),
    "ecr": ("hivebus.cli.ecr", "hivebus.cli.cite"),
    "job": ("hivebus.cli.job",),
    "node": ("hivebus.cli.node", "hivebus.cli.access"),
    "user": ("hivebus.cli.access",),
    "group": ("hivebus.cli.access",),
    "storage": ("hivebus.cli.storage",),
    "site": ("hivebus.cli.site",),
    "docs": ("hivebus.cli.docs",),
}

Hub = Annotated[
    str | None,
    typer.Option("--hub", envvar="HIVEBUS_NATS_URL", help="NATS URL of the hub (default nats://127.0.0.1:4222)."),
]


def settings(hub: str | None = None, **overrides: Any) -> Settings:
    return Settings.from_env(nats_url=hub, **overrides)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from a command; Ctrl-C ends it quietly."""
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.callback()
def _root(
    log_level: Annotated[str, typer.Option(envvar="HIVEBUS_LOG_LEVEL", help="debug, info, warning, error")] = "warning",
) -> None:
    configure_logging(log_level)


def load_commands(argv: list[str] | None = None) -> None:
    """Import the modules of the command ``argv`` names, or all of them (the root's help, a
    name that is not a command: its error lists every command)."""
    modules = COMMAND_INDEX.get(_command_name(argv), COMMAND_MODULES) if argv is not None else COMMAND_MODULES
    for module in modules:
        importlib.import_module(module)


def _command_name(argv: list[str]) -> str:
    """The first word of ``argv`` that is not a root option (``--log-level debug``)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return ""


def main(argv: list[str] | None = None) -> None:
    load_commands(sys.argv[1:] if argv is None else argv)
    try:
        app(args=argv, standalone_mode=True)
    except HivebusError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
