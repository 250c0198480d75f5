"""``hivebus <command>`` imports only the modules that add ``<command>`` (cli/app.py's
COMMAND_INDEX); the index must name every module that adds a command to it, or that
command's subcommands would be missing."""

from __future__ import annotations

import json
import subprocess
import sys

import typer

from hivebus.cli.app import COMMAND_INDEX, COMMAND_MODULES, _command_name, app, load_commands


def modules_of(group: typer.Typer) -> set[str]:
    found = {c.callback.__module__ for c in group.registered_commands if c.callback is not None}
    for sub in group.registered_groups:
        assert sub.typer_instance is not None
        found |= modules_of(sub.typer_instance)
    return found


def test_the_index_names_each_commands_modules() -> None:
    load_commands()
    registered: dict[str, set[str]] = {}
    for command in app.registered_commands:
        assert command.callback is not None
        name = command.name or command.callback.__name__.replace("_", "-")
        registered.setdefault(name, set()).add(command.callback.__module__)
    for group in app.registered_groups:
        assert group.name is not None and group.typer_instance is not None
        registered.setdefault(group.name, set()).update(modules_of(group.typer_instance))
    assert {name: set(modules) for name, modules in COMMAND_INDEX.items()} == registered
    assert {m for modules in COMMAND_INDEX.values() for m in modules} <= set(COMMAND_MODULES)


def test_the_command_name_skips_the_root_options() -> None:
    assert _command_name(["--log-level", "debug", "node", "run"]) == "node"
    assert _command_name(["--log-level=info", "query", "select 1"]) == "query"
    assert _command_name(["--help"]) == ""


def test_a_command_loads_only_its_modules_and_the_root_help_lists_all() -> None:
    probe = ("import importlib, json, sys; importlib.import_module('hivebus.cli.app').load_commands(sys.argv[1:]); "
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith('hivebus.cli.') and m != 'hivebus.cli.app')))")

    def loaded(*argv: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True)
        return list(json.loads(out.stdout))
    assert loaded("query", "select 1") == ["hivebus.cli.query"]
    assert set(loaded("--help")) == set(COMMAND_MODULES)
    assert set(loaded("no-such-command")) == set(COMMAND_MODULES)
