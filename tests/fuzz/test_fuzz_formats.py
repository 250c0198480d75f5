"""Fuzz the loaders of the files users write: sage.yaml (``load_app``), the job YAML
(``load_job``) and node.yaml (``load_manifest``).

These files come from users' machines, and sage.yaml also from plugin repositories that a
node reads before running a bundle. Whatever the text (random, YAML-shaped, with tags,
anchors and aliases, nested thousands deep, numbers of thousands of digits, a NUL in a path),
a loader returns a model or raises ``FormatError`` naming the file (and the field when there
is one); never another exception, and never minutes of work for a few hundred bytes (alias
bombs). When one value of a shipped example is broken, the error names that field. A file
that loads becomes an event that round-trips through the codec.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from hivebus.errors import FormatError
from hivebus.formats import load_app, load_job, load_manifest
from hivebus.schemas import codec
from hivebus.schemas.ecr import AppSpec, BundlePushed
from hivebus.schemas.envelope import Event, Payload
from hivebus.schemas.node import NodeManifest, NodeRegistered
from hivebus.schemas.ses import JobSpec, JobSubmitted
from tests.fuzz import fuzz

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
Loader = Callable[..., Any]
LOADERS: list[tuple[Loader, str]] = [
    (load_app, "sage.yaml"),
    (load_job, "job-cron.yaml"),
    (load_job, "job-rule.yaml"),
    (load_job, "job-heat.yaml"),
    (load_job, "job-demo.yaml"),
    (load_manifest, "node.yaml"),
]


def as_event(model: Any) -> Payload:
    if isinstance(model, AppSpec):
        return BundlePushed(app=model, pusher="ada")
    if isinstance(model, JobSpec):
        return JobSubmitted(job_id="42", user="ada", spec=model)
    assert isinstance(model, NodeManifest)
    return NodeRegistered(manifest=model)


def loaded_or_refused(loader: Loader, source: Any, name: str = "f.yaml") -> Any:
    """The model, or the FormatError after checking it names the file; anything else fails."""
    try:
        model = loader(source, name=name) if not isinstance(source, str) or "\n" in source else loader(source)
    except FormatError as exc:
        assert exc.problems, str(exc)
        assert all(line.startswith(exc.file + ": ") for line in str(exc).splitlines()), str(exc)
        return exc
    event = Event.new(as_event(model), source="user/ada", subject="x")
    assert codec.decode(codec.encode(event)) == event  # what loaded can be sent and replayed
    return model


# --- arbitrary text -------------------------------------------------------------------------------

_YAML_BITS = ["a: 1\n", "- x\n", "  ", ": ", "? ", "&a ", "*a", "!!str ", "!!binary ", "!!set ", "!!python/name:os.system ",
              "!!float ", "!!timestamp ", "{", "}", "[", "]", ",", "'", '"', "|\n", ">\n", "#", "---\n", "...\n",
              "%YAML 1.1\n", "<<: *a\n", "name: ", "plugins:\n", "resources:\n  cpu: ", "memory: ", "1" * 30,
              "2024-13-45", ".inf", ".nan", "~", "true", "0x1F", "0o17", "1_000", "\t", "\x00", "\ufeff", "é"]  # fmt: skip
yaml_text = st.lists(st.sampled_from(_YAML_BITS) | st.text(max_size=4), max_size=40).map("".join)


@pytest.mark.parametrize("loader", [load_app, load_job, load_manifest])
@fuzz(150)
@given(text=st.text(max_size=200) | yaml_text)
@example(text="resources: {memory: 1" + "0" * 5000 + "}")
@example(text="version: 2024-13-45")
@example(text="version: 2024-02-30")
@example(text="!!float")
@example(text="a: !!int 0x")
@example(text="a: !!bool x")
@example(text="a: !!timestamp x")
@example(text="name: !!binary aGVsbG8=")
@example(text="&a [*a]")
@example(text="a: &a {b: *a}")
@example(text="!!python/object/apply:os.system ['true']")
@example(text="\ufeffname: x")
def test_any_text_is_a_model_or_a_format_error(loader: Loader, text: str) -> None:
    loaded_or_refused(loader, text + "\n")


@pytest.mark.parametrize("loader", [load_app, load_job, load_manifest])
@fuzz(50)
@given(name=st.text(alphabet="ab/.\x00~é ", min_size=1, max_size=12).filter(lambda n: "\n" not in n))
@example(name="a\x00b")
@example(name="x" * 5000)
@example(name="/")
def test_any_path_is_a_model_or_a_format_error_naming_it(loader: Loader, name: str) -> None:
    result = loaded_or_refused(loader, name)
    assert isinstance(result, FormatError) and result.file == name


# --- generated documents ----------------------------------------------------------------------------

leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10**40), 10**40), st.floats(),
    st.text(max_size=12), st.binary(max_size=8), st.dates(), st.datetimes(),
    st.sampled_from(["128Mi", "250m", "0.25", "8Gi", "120s", "1h30m", "linux/amd64", "W012", "*/5 * * * *",
                     "schedule(p): v('env.t') > 1", "-1", "1e400", "NaN", "", " "]),
)  # fmt: skip
yaml_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=10) | st.integers() | st.none(), inner, max_size=3)
    | st.sets(st.integers(), max_size=3),
    max_leaves=8,
)


@pytest.mark.parametrize("loader", [load_app, load_job, load_manifest])
@fuzz(100)
@given(doc=st.dictionaries(st.sampled_from(["name", "namespace", "version", "description", "source", "resources",
                                            "inputs", "plugins", "nodes", "nodeTags", "scienceRules", "hardware",
                                            "sensors", "node_id", "metadata", "testing", "zz"]),
                           yaml_values, max_size=8))  # fmt: skip
def test_any_document_of_the_right_keys_is_a_model_or_a_format_error(loader: Loader, doc: dict[str, Any]) -> None:
    loaded_or_refused(loader, yaml.safe_dump(doc, allow_unicode=True))
    loaded_or_refused(loader, doc)  # a parsed mapping takes the same path past the reader


# --- one field of a real file broken --------------------------------------------------------------------


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        out += paths(value, (*prefix, key))
    return out


def spelled(path: tuple[Any, ...]) -> str:
    """A path the way ``FormatError`` spells it: ``source.architectures[1]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def same_field(reported: str | None, path: tuple[Any, ...]) -> bool:
    """``reported`` is the broken field, inside it or its parent (camelCase or snake_case)."""
    if reported is None:
        return False

    def norm(s: str) -> str:
        return s.replace("_", "").lower()

    mine, theirs = norm(spelled(path)), norm(reported)
    return theirs == mine or theirs.startswith((mine + ".", mine + "[")) or mine.startswith((theirs + ".", theirs + "["))


@pytest.mark.parametrize(("loader", "name"), LOADERS, ids=[n for _, n in LOADERS])
@fuzz(80)
@given(data=st.data())
def test_a_broken_value_in_a_real_file_is_named(loader: Loader, name: str, data: st.DataObject) -> None:
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    path = data.draw(st.sampled_from(paths(doc)[1:]))
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if action == "replace":
        parent[path[-1]] = data.draw(yaml_values)
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent[path[-1]], dict):
        path = (*path, "zz_unknown")
        parent[path[-2]]["zz_unknown"] = data.draw(yaml_values)
    else:
        return
    result = loaded_or_refused(loader, yaml.safe_dump(doc, allow_unicode=True), name=name)
    if isinstance(result, FormatError):
        fields = [field for field, _ in result.problems]
        assert any(same_field(f, path) for f in fields) or (
            action == "delete" and None in fields  # the whole document lost its last field
        ) or _cross_field(fields), (path, action, str(result))


def _cross_field(fields: list[str | None]) -> bool:
    """A check across fields (a job needs nodes or nodeTags; plugin names must be distinct;
    a node's sensors are reported on the whole document) is reported at the model, not at a field."""
    return None in fields or "" in fields


# --- alias bombs and depth --------------------------------------------------------------------------------


def alias_bomb(levels: int, fan: int, key: str = "metadata") -> str:
    lines = [f"{key}:", f"  a0: &a0 [{', '.join(['lol'] * fan)}]"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("loader", "key"), [(load_app, "metadata"), (load_job, "plugins"), (load_manifest, "tags")])
@pytest.mark.parametrize(("levels", "fan"), [(9, 10), (30, 2), (4, 400)])
def test_an_alias_bomb_is_refused_at_once(loader: Loader, key: str, levels: int, fan: int) -> None:
    """A few hundred bytes that expand to 10^9 values: refused before anything walks them."""
    started = time.monotonic()
    with pytest.raises(FormatError, match="expands to more than"):
        loader(alias_bomb(levels, fan, key))
    print(f"{loader.__name__} {levels}x{fan}: refused in {time.monotonic() - started:.3f}s")


def test_anchors_and_aliases_of_ordinary_size_still_work() -> None:
    text = (EXAMPLES / "job-cron.yaml").read_text()
    doc = yaml.safe_load(text)
    spec = doc["plugins"][0]["pluginSpec"]
    aliased = text.replace("pluginSpec:", "pluginSpec: &spec", 1) + "x_unused: *spec\n"
    with pytest.raises(FormatError, match="x_unused"):  # the alias resolved; the key is unknown
        load_job(aliased)
    assert load_job(doc).plugins[0].plugin_spec.image == spec["image"]


@pytest.mark.parametrize("depth", [100, 600])  # past the limit; past what YAML parses without RecursionError
@pytest.mark.parametrize("loader", [load_app, load_job, load_manifest])
def test_deep_nesting_is_a_format_error(loader: Loader, depth: int) -> None:
    for text in ("metadata:\n  x: " + "[" * depth + "]" * depth + "\n",
                 "metadata:\n  x: " + "{a: " * depth + "1" + "}" * depth + "\n"):  # fmt: skip
        with pytest.raises(FormatError, match="nest more than"):
            loader(text)
    with pytest.raises(FormatError, match="nest more than"):
        loader({"metadata": {"x": _nested(depth)}})


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def test_dates_and_bytes_are_refused_where_text_is_expected() -> None:
    for loader, name in LOADERS:
        doc = yaml.safe_load((EXAMPLES / name).read_text())
        doc["name" if "name" in doc else "node_id"] = dt.date(2024, 1, 1)
        with pytest.raises(FormatError):
            loader(yaml.safe_dump(doc))
