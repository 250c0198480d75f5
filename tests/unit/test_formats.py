"""Loaders for sage.yaml, the job YAML and node.yaml: the shared examples load, and broken
copies fail with a FormatError naming the file and the field."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from hivebus.bus.client import Bus
from hivebus.bus.server import NatsServer
from hivebus.config import Settings
from hivebus.errors import FormatError, SchemaError
from hivebus.formats import (
    checkout_of,
    load_app,
    load_job,
    load_manifest,
    parse_bytes,
    parse_cpu,
    parse_duration,
)
from hivebus.handlers.ecr import EcrHandler
from hivebus.handlers.ses import SesHandler
from hivebus.handlers.testing import Log, app_spec, job_spec, manifest
from hivebus.schemas import codec
from hivebus.schemas.ecr import AppSpec, BundlePushed, version_key, version_problems
from hivebus.schemas.envelope import Event
from hivebus.schemas.node import NodeManifest, NodeRegistered
from hivebus.schemas.ses import JobSpec, JobSubmitted
from tests.integration.test_handlers import handlers

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def ex(name: str) -> Path:
    """The path of an example file shipped in the repo's examples/."""
    path = EXAMPLES / name
    assert path.is_file(), f"example {path} is missing from the repo"
    return path


def example(name: str) -> str:
    return ex(name).read_text()


# --- the examples load ----------------------------------------------------------------------


def test_sage_yaml_loads() -> None:
    app = load_app(ex("sage.yaml"))
    assert app.bundle_id == "waggle/plugin-bme680:0.2.1"
    assert app.keywords == ["temperature", "humidity", "pressure", "bme680"]
    assert app.authors == ["Ada Example <ada@example.org>"]
    assert app.source.architectures == ["linux/amd64", "linux/arm64"]
    assert app.source.branch == "main" and app.source.git_commit == "3f2c9a1"
    assert app.resources.cpu == 0.25 and app.resources.memory == 128 * 2**20
    assert [(i.id, i.type, i.default) for i in app.inputs] == [
        ("interval", "int", 30),
        ("continuous", "boolean", False),
    ]
    assert app.metadata["ontology"] == "env.temperature,env.relative_humidity,env.pressure"
    assert app.testing is not None and app.testing.command[:2] == ["python3", "main.py"]


def test_cron_job_loads() -> None:
    job = load_job(ex("job-cron.yaml"))
    assert job.name == "bme680-every-5-min"
    assert job.nodes == ["W012", "W013"] and job.node_tags == []
    spec = job.plugins[0].plugin_spec
    assert spec.bundle_id == "waggle/plugin-bme680:0.2.1"
    assert spec.args == ["--interval", "30"] and spec.selector == {"resource.bme680": "true"}
    assert job.science_rules[0] == "schedule(bme680): cronjob('bme680', '*/5 * * * *')"
    assert job.success_criteria == ["WallClock(7d)"]


def test_rule_job_loads_with_tags_and_a_boolean_selector() -> None:
    job = load_job(str(ex("job-rule.yaml")))
    assert job.nodes == [] and job.node_tags == ["raingauge", "camera_bottom"]
    assert job.plugins[0].plugin_spec.selector == {"resource.gpu": "true"}  # YAML true -> "true"
    assert job.plugins[0].plugin_spec.bundle_id == "example/surface-water:0.1.0"
    assert job.science_rules[0].startswith("schedule(water-detector): any(v('env.raingauge.uint'")


def test_node_manifest_loads_with_units_as_numbers() -> None:
    manifest = load_manifest(ex("node.yaml"))
    assert manifest.node_id == "W012" and manifest.tags == ["urban", "raingauge"]
    assert manifest.hardware.memory == 8 * 2**30 and manifest.hardware.disk == 200 * 2**30
    assert manifest.hardware.arch == "linux/arm64" and manifest.hardware.cpus == 6
    assert [(s.name, s.max_silence) for s in manifest.sensors] == [
        ("bme680", 120.0),
        ("raingauge", 300.0),
    ]
    assert manifest.sensors[0].expects == [
        "env.temperature",
        "env.relative_humidity",
        "env.pressure",
    ]
    assert manifest.executors == ["process", "docker"]


def test_loaded_files_become_events_that_round_trip() -> None:
    payloads = [
        BundlePushed(app=load_app(ex("sage.yaml")), pusher="ada"),
        JobSubmitted(job_id="42", user="ada", spec=load_job(ex("job-cron.yaml"))),
        JobSubmitted(job_id="43", user="ada", spec=load_job(ex("job-rule.yaml"))),
        NodeRegistered(manifest=load_manifest(ex("node.yaml"))),
    ]
    for payload in payloads:
        event = Event.new(payload, source="user/ada", subject="x")
        assert codec.decode(codec.encode(event)) == event


@pytest.mark.parametrize(
    ("loader", "name", "model"),
    [
        (load_app, "sage.yaml", AppSpec),
        (load_job, "job-cron.yaml", JobSpec),
        (load_manifest, "node.yaml", NodeManifest),
    ],
)
def test_path_text_and_mapping_give_the_same_model(
    loader: Callable[..., Any], name: str, model: type
) -> None:
    from_path = loader(ex(name))
    assert isinstance(from_path, model)
    assert loader(str(ex(name))) == from_path
    assert loader(example(name)) == from_path
    assert loader(yaml.safe_load(example(name))) == from_path


def test_namespace_can_come_from_the_pusher() -> None:
    text = example("sage.yaml").replace("namespace: waggle\n", "")
    with pytest.raises(FormatError) as err:
        load_app(text)
    assert err.value.field == "namespace"
    assert load_app(text, namespace="ada").bundle_id == "ada/plugin-bme680:0.2.1"


# --- broken copies --------------------------------------------------------------------------

SAGE_BREAKS: list[tuple[str, str, str, str, str]] = [
    # (case, old, new, field, message fragment)
    (
        "unknown arch",
        "- linux/arm64",
        "- amd65",
        "source.architectures[1]",
        "unknown architecture 'amd65'",
    ),
    (
        "no description",
        "description: Reads",
        "summary: Reads",
        "description",
        "required field is missing",
    ),
    ("typo", "license:", "licence:", "licence", "did you mean 'license'"),
    ("version a float", "version: 0.2.1", "version: 1.0", "version", "quote it"),
    ("bad memory", "memory: 128Mi", "memory: 128 megs", "resources.memory", "expected a size"),
    ("bad cpu", 'cpu: "0.25"', "cpu: quarter", "resources.cpu", "expected cores"),
    ("bad input type", "type: int", "type: integer", "inputs[0].type", "'boolean'"),
    ("default vs type", "default: 30", "default: thirty", "inputs[0]", "does not match type 'int'"),
    ("branch and tag", "branch: main", "branch: main\n  tag: v1", "source", "a branch or a tag"),
    ("bad name", "name: plugin-bme680", "name: Plugin BME680", "name", "pattern"),
    ("bad commit", "git_commit: 3f2c9a1", "git_commit: xyz", "source.git_commit", "pattern"),
    (
        "no architectures",
        "  architectures:\n    - linux/amd64\n    - linux/arm64\n",
        "",
        "source.architectures",
        "required",
    ),
]


@pytest.mark.parametrize(
    ("case", "old", "new", "field", "fragment"), SAGE_BREAKS, ids=[c[0] for c in SAGE_BREAKS]
)
def test_broken_sage_yaml_names_the_field(
    case: str, old: str, new: str, field: str, fragment: str
) -> None:
    text = example("sage.yaml")
    assert old in text, case
    with pytest.raises(FormatError) as err:
        load_app(text.replace(old, new))
    assert err.value.file == "sage.yaml"
    assert err.value.field == field
    assert fragment in str(err.value)
    assert f"sage.yaml: {field}: " in str(err.value)


def test_the_arch_error_reads_as_documented(tmp_path: Path) -> None:
    path = tmp_path / "sage.yaml"
    path.write_text(example("sage.yaml").replace("- linux/arm64", "- amd65"))
    with pytest.raises(FormatError) as err:
        load_app(path)
    assert str(err.value).startswith(
        f"{path}: source.architectures[1]: unknown architecture 'amd65'"
    )
    assert isinstance(err.value, SchemaError)


def test_every_problem_is_reported_at_once() -> None:
    text = (
        example("sage.yaml")
        .replace("- linux/arm64", "- amd65")
        .replace("memory: 128Mi", "memory: lots")
        .replace("type: int", "type: integer")
        .replace("description: Reads", "descripton: Reads")
    )
    with pytest.raises(FormatError) as err:
        load_app(text)
    fields = {field for field, _ in err.value.problems}
    assert {
        "source.architectures[1]",
        "resources.memory",
        "inputs[0].type",
        "description",
        "descripton",
    } <= fields
    assert len(str(err.value).splitlines()) == len(err.value.problems)


JOB_BREAKS: list[tuple[str, str, str, str | None, str]] = [
    (
        "image without tag",
        "plugin-bme680:0.2.1",
        "plugin-bme680",
        "plugins[0].pluginSpec",
        "does not name a bundle",
    ),
    (
        "no image",
        "      image: registry.sagecontinuum.org/waggle/plugin-bme680:0.2.1\n",
        "",
        "plugins[0].pluginSpec.image",
        "required",
    ),
    ("no targets", "nodes:\n  W012:\n  W013:\n", "", None, "nodes"),
    ("numeric node id", "  W013:", "  1234:", "nodes[1]", "quote it"),
    ("bad node id", "  W013:", "  W.013:", "nodes[1]", "pattern"),
    (
        "args not words",
        'args: ["--interval", "30"]',
        "args: [--interval, {every: 30}]",
        "plugins[0].pluginSpec.args[1]",
        "string",
    ),
    ("typo", "scienceRules:", "scienceRule:", "scienceRule", "did you mean 'scienceRules'"),
    ("no plugins", "plugins:\n", "plugin_list:\n", "plugins", "required"),
]


@pytest.mark.parametrize(
    ("case", "old", "new", "field", "fragment"), JOB_BREAKS, ids=[c[0] for c in JOB_BREAKS]
)
def test_broken_job_names_the_field(
    case: str, old: str, new: str, field: str | None, fragment: str
) -> None:
    text = example("job-cron.yaml")
    assert old in text, case
    with pytest.raises(FormatError) as err:
        load_job(text.replace(old, new))
    assert err.value.file == "job.yaml"
    assert err.value.field == field
    assert fragment in str(err.value)


def test_duplicate_plugin_names_are_refused() -> None:
    text = example("job-rule.yaml")
    block = text[text.index("  - name: water-detector") : text.index("nodeTags")]
    with pytest.raises(FormatError, match="plugin names are not unique"):
        load_job(text.replace(block, block + block))


MANIFEST_BREAKS: list[tuple[str, str, str, str, str]] = [
    ("bad memory unit", "memory: 8Gi", "memory: 8Gb", "hardware.memory", "expected a size"),
    ("negative disk", "disk: 200Gi", "disk: -1", "hardware.disk", "negative"),
    (
        "bad silence",
        "max_silence: 300s",
        "max_silence: 5 minutes",
        "sensors[1].max_silence",
        "expected a duration",
    ),
    (
        "zero silence",
        "max_silence: 120s",
        "max_silence: 0s",
        "sensors[0].max_silence",
        "greater than 0",
    ),
    (
        "bare arch",
        "arch: linux/arm64",
        "arch: arm64",
        "hardware.arch",
        "unknown architecture 'arm64'",
    ),
    (
        "bad reading name",
        "expects: [env.raingauge.uint]",
        "expects: [Env.Rain]",
        "sensors[1].expects[0]",
        "pattern",
    ),
    (
        "unknown executor",
        "executors: [process, docker]",
        "executors: [process, k8s]",
        "executors[1]",
        "'wasm'",
    ),
    ("cpus as text", "cpus: 6", "cpus: six", "hardware.cpus", "integer"),
    ("no node id", "node_id: W012\n", "", "node_id", "required"),
]


@pytest.mark.parametrize(
    ("case", "old", "new", "field", "fragment"),
    MANIFEST_BREAKS,
    ids=[c[0] for c in MANIFEST_BREAKS],
)
def test_broken_manifest_names_the_field(
    case: str, old: str, new: str, field: str, fragment: str
) -> None:
    text = example("node.yaml")
    assert old in text, case
    with pytest.raises(FormatError) as err:
        load_manifest(text.replace(old, new))
    assert err.value.file == "node.yaml"
    assert err.value.field == field
    assert fragment in str(err.value)


# --- reading the file -----------------------------------------------------------------------


def test_duplicate_keys_are_refused_with_a_line_number() -> None:
    text = example("node.yaml") + "vsn: W099\n"
    with pytest.raises(FormatError, match=r"node\.yaml: line \d+, column 1: duplicate key 'vsn'"):
        load_manifest(text)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("name: [unclosed\nversion: 1\n", "line"),
        ("- a\n- b\n", "expected a mapping"),
        ("\n", "got NoneType"),
    ],
)
def test_unreadable_yaml(text: str, fragment: str) -> None:
    with pytest.raises(FormatError, match=fragment) as err:
        load_app(text)
    assert err.value.file == "sage.yaml"


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FormatError) as err:
        load_manifest(missing)
    assert str(err.value) == f"{missing}: no such file"


def test_the_file_name_can_be_given_for_text() -> None:
    with pytest.raises(FormatError) as err:
        load_job("name: x\nplugins: []\n", name="jobs/flood.yaml")
    assert str(err.value).startswith("jobs/flood.yaml: ")


# --- quantities -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("8Gi", 8 * 2**30),
        ("200Gi", 200 * 2**30),
        ("128Mi", 128 * 2**20),
        ("1.5Ki", 1536),
        ("0.1Ki", 103),  # rounds up to a whole byte
        ("1G", 10**9),
        ("1GB", 10**9),
        ("2GiB", 2 * 2**30),
        ("512", 512),
        (" 64 Mi ", 64 * 2**20),
        ("500k", 500_000),
        (4096, 4096),
        (0, 0),
        (1e9, 10**9),
    ],
)
def test_parse_bytes(text: object, value: int) -> None:
    assert parse_bytes(text) == value
    assert type(parse_bytes(text)) is int


@pytest.mark.parametrize(
    "text", ["8Gb", "lots", "", "-1", -1, True, None, [8], 1.5, "8 G i", "1e9"]
)
def test_parse_bytes_refuses(text: object) -> None:
    with pytest.raises(ValueError):
        parse_bytes(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.25", 0.25), ("250m", 0.25), ("2", 2.0), (2, 2.0), (0.5, 0.5), ("1500m", 1.5)],
)
def test_parse_cpu(text: object, value: float) -> None:
    assert parse_cpu(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["quarter", "-1", "m", True, None, "inf", "nan", float("nan")])
def test_parse_cpu_refuses(text: object) -> None:
    with pytest.raises(ValueError):
        parse_cpu(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("120s", 120),
        ("5m", 300),
        ("1h30m", 5400),
        ("7d", 604800),
        ("250ms", 0.25),
        ("1w", 604800),
        ("90", 90),
        (45, 45),
        (0.5, 0.5),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5 minutes", "", "s", "1x", "-5s", True, None, "1h 30m"])
def test_parse_duration_refuses(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.integers(0, 2**40), st.sampled_from(["", "Ki", "Mi", "Gi", "k", "M", "G"]))
def test_parse_bytes_scales_by_the_unit(number: int, unit: str) -> None:
    factor = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}[
        unit
    ]
    assert parse_bytes(f"{number}{unit}") == number * factor


def test_error_lines_have_the_documented_shape() -> None:
    text = (
        example("node.yaml")
        .replace("memory: 8Gi", "memory: 8Gb")
        .replace("arch: linux/arm64", "arch: arm64")
    )
    with pytest.raises(FormatError) as err:
        load_manifest(text)
    for line in str(err.value).splitlines():
        assert re.match(r"^node\.yaml: [a-z_]+(\.[a-z_]+|\[\d+\])*: \S", line), line


# --- hostile files --------------------------------------------------------------------------

yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@pytest.mark.parametrize("loader", [load_app, load_job, load_manifest])
@given(text=st.text(max_size=200))
def test_arbitrary_text_raises_only_format_error(loader: Callable[..., Any], text: str) -> None:
    try:
        loader(text + "\n")
    except FormatError as exc:
        assert exc.problems
        assert str(exc).startswith(exc.file + ": ")


@pytest.mark.parametrize(
    ("loader", "name"),
    [(load_app, "sage.yaml"), (load_job, "job-cron.yaml"), (load_manifest, "node.yaml")],
)
@given(data=st.data())
def test_mangled_examples_raise_only_format_error(
    loader: Callable[..., Any], name: str, data: st.DataObject
) -> None:
    """Replace one value anywhere in a real file with junk: a model or a FormatError, nothing else."""
    doc = yaml.safe_load(example(name))
    paths: list[tuple[Any, ...]] = []

    def collect(node: Any, prefix: tuple[Any, ...]) -> None:
        paths.append(prefix)
        items = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node)
            if isinstance(node, list)
            else []
        )
        for key, value in items:
            collect(value, (*prefix, key))

    collect(doc, ())
    path = data.draw(st.sampled_from(paths[1:]))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(yaml_values)
    try:
        loader(yaml.safe_dump(doc, allow_unicode=True))
    except FormatError as exc:
        assert exc.problems


def test_unhashable_yaml_keys_are_a_format_error() -> None:
    with pytest.raises(FormatError, match="unhashable"):
        load_app("? [a, b]\n: 1\n")


# --- what the portal fills in: a git checkout, or values given explicitly -------------------

BARE_APP = """\
name: plugin-tempest
description: Reads a weather station.
source:
  architectures: [linux/amd64, linux/arm64]
"""


def git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def checkout(tmp_path: Path, *, origin: str | None, tag: str | None, sub: str = "") -> Path:
    """A fresh repository holding BARE_APP (in ``sub``, if given); the file's path."""
    root = tmp_path / "repo"
    folder = root / sub if sub else root
    folder.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    if origin is not None:
        git(root, "remote", "add", "origin", origin)
    (folder / "sage.yaml").write_text(BARE_APP)
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "app")
    if tag is not None:
        git(root, "tag", tag)
    return folder / "sage.yaml"


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@needs_git
def test_a_checkout_fills_url_branch_commit_folder_and_version(tmp_path: Path) -> None:
    path = checkout(
        tmp_path, origin="https://bot:s3cret@github.com/ada/plugin-tempest.git", tag="v0.3.1",
        sub="app",
    )  # fmt: skip
    found = checkout_of(path)
    assert found is not None and found.url == "https://github.com/ada/plugin-tempest.git"
    app = load_app(path, namespace="ada", checkout=found)
    assert app.bundle_id == "ada/plugin-tempest:0.3.1"
    assert app.source.url == "https://github.com/ada/plugin-tempest.git"  # no token kept
    assert app.source.branch == "main" and app.source.directory == "app"
    assert app.source.git_commit == git(path.parent, "rev-parse", "HEAD")


@needs_git
def test_commits_after_the_tag_give_a_describe_version(tmp_path: Path) -> None:
    path = checkout(tmp_path, origin="git@github.com:ada/t.git", tag="0.3.1")
    path.write_text(BARE_APP + "keywords: wind\n")
    git(path.parent, "commit", "-q", "-am", "more")
    app = load_app(path, namespace="ada", checkout=checkout_of(path))
    assert re.fullmatch(r"0\.3\.1-1-g[0-9a-f]+", app.version), app.version
    assert version_problems(app.version) == []


@needs_git
def test_the_file_wins_and_an_explicit_value_that_contradicts_it_is_an_error(
    tmp_path: Path,
) -> None:
    path = checkout(tmp_path, origin="https://github.com/ada/t", tag="0.3.1")
    path.write_text(BARE_APP.replace("source:\n", "version: 0.2.0\nsource:\n  branch: dev\n"))
    app = load_app(path, namespace="ada", checkout=checkout_of(path), version="0.4.0")
    assert app.version == "0.2.0" and app.source.branch == "dev"
    with pytest.raises(FormatError) as caught:
        load_app(path, namespace="ada", version="0.4.0", explicit=["version"])
    assert "version: " in str(caught.value) and "--version says '0.4.0'" in str(caught.value)


@needs_git
def test_a_checkout_of_another_repository_fills_no_branch_or_commit(tmp_path: Path) -> None:
    path = checkout(tmp_path, origin="https://github.com/fork/t", tag="1.0")
    path.write_text(BARE_APP + "  url: https://github.com/upstream/t\n")
    app = load_app(path, namespace="ada", checkout=checkout_of(path))
    assert app.source.url == "https://github.com/upstream/t"
    assert app.source.branch is None and app.source.git_commit is None
    assert app.version == "1.0"  # the file's own history still tags it


@needs_git
def test_what_cannot_be_filled_is_named_with_what_to_do(tmp_path: Path) -> None:
    path = checkout(tmp_path, origin=None, tag=None)
    with pytest.raises(FormatError) as caught:
        load_app(path, namespace="ada", checkout=checkout_of(path))
    text = str(caught.value)
    assert "source.url: missing" in text and "--source-url" in text and "no remote 'origin'" in text
    assert "version: missing" in text and "git tag" in text and "--version" in text
    outside = tmp_path / "loose" / "sage.yaml"
    outside.parent.mkdir()
    outside.write_text(BARE_APP)
    assert checkout_of(outside) is None or checkout_of(outside).root != tmp_path / "loose"
    app = load_app(outside, namespace="ada", source_url="https://github.com/ada/t", version="1.0")
    assert (app.source.url, app.version) == ("https://github.com/ada/t", "1.0")


def test_version_order() -> None:
    ordered = ["0.2.1-rc1", "0.2.1", "0.10", "0.23.4", "0.23.4.13", "1", "1.0", "1.00", "1.0.1"]
    assert sorted(reversed(ordered), key=version_key) == ordered


def hivebus_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hivebus", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


@needs_git
def test_push_says_what_is_missing_without_a_traceback(tmp_path: Path) -> None:
    path = checkout(tmp_path, origin=None, tag=None)
    done = hivebus_cli("ecr", "push", str(path.parent), "--user", "ada", cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in out, out
    assert "source.url: missing" in out and "--source-url" in out, out
    empty = tmp_path / "empty"
    empty.mkdir()
    done = hivebus_cli("ecr", "push", str(empty), "--user", "ada", cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "no sage.yaml or sage.yml in this folder" in out, out


@needs_git
@pytest.mark.integration
def test_push_a_folder_from_its_checkout(tmp_path: Path, nats_server: NatsServer) -> None:
    path = checkout(tmp_path, origin="https://github.com/ada/plugin-tempest", tag="0.3.1")

    async def scenario() -> subprocess.CompletedProcess[str]:
        settings = Settings(nats_url=nats_server.url)
        async with await Bus.connect(nats_server.url, settings=settings) as bus:
            await bus.ensure_streams()
            async with handlers(settings, bus):
                return await asyncio.to_thread(
                    hivebus_cli, "ecr", "push", str(path.parent), "--user", "ada",
                    "--hub", nats_server.url, cwd=tmp_path,
                )  # fmt: skip

    done = asyncio.run(scenario())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "registered ada/plugin-tempest:0.3.1 (owner ada)" in done.stdout, done.stdout


# --- job files as Sage's scheduler decodes them ---------------------------------------------

JOB = """\
name: sampler
plugins:
- name: image-sampler
  pluginSpec:
    image: registry.sagecontinuum.org/theone/imagesampler:0.3.0
    args: [-stream, bottom, -interval, 30, -ratio, 0.50, -on, true]
    volume: {}
    privileged: true
nodes:
  W023:
scienceRules:
- "schedule(image-sampler): cronjob('image-sampler', '* * * * *')"
"""


def test_job_args_are_the_words_written_and_volume_privileged_are_read() -> None:
    job = load_job(JOB)
    spec = job.plugins[0].plugin_spec
    assert spec.args == ["-stream", "bottom", "-interval", "30", "-ratio", "0.50", "-on", "true"]
    assert spec.volume == {} and spec.privileged is True
    from_mapping = load_job(yaml.safe_load(JOB))  # no text to read: str() of each value
    assert from_mapping.plugins[0].plugin_spec.args[3] == "30"


@pytest.mark.parametrize("name", ["Image-Sampler", "image_sampler", "image.sampler"])
def test_a_plugin_name_sage_refuses_is_refused_with_the_spelling_to_use(name: str) -> None:
    with pytest.raises(FormatError) as caught:
        load_job(JOB.replace("- name: image-sampler", f"- name: {name}"))
    text = str(caught.value)
    assert "plugins[0].name: plugin name" in text and "write 'image-sampler'" in text, text


def test_the_scheduler_refuses_a_plugin_name_sage_refuses() -> None:
    """A submission that did not come from a file (the Python API, a raw publish) meets the
    same rule in the scheduler's decision."""
    log = Log([EcrHandler(), SesHandler()])
    log.push(app_spec(BME), "alice")
    log.register_node(manifest("W012"))
    out = log.submit(job_spec([("Bme_680", BME)], nodes=["W012"]))
    assert [e.type for e in out] == ["ses.command.rejected"]
    assert any("plugin name 'Bme_680'" in r and "'bme-680'" in r for r in out[0].data.reasons)


BME = "waggle/plugin-bme680:0.2.1"
