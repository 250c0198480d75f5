"""Every command and Python snippet of the README, run as a user would, against a real
platform started with `hivebus up` (the walk-through, in order)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, RunningPlatform

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(kind: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    return [body for lang, body in FENCE.findall(text) if lang == kind]


def commands(block: str) -> list[str]:
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_the_readme_starts_with_make_run_and_make_test() -> None:
    first = blocks("text")[0]
    assert commands(first)[0].startswith("make run") and commands(first)[1].startswith("make test")


def test_the_demo_runs_its_plugin_on_the_virtual_nodes_and_profiles_it(platform: RunningPlatform) -> None:
    """push -> approve -> submit (cron rule) -> each node runs it -> statuses -> a profile."""
    runs = platform.wait_until(
        "select node, state, exit_code from plugin_runs where bundle_id = 'waggle/plugin-bme680:0.2.1' and state = 'completed'",
        lambda r: {row["node"] for row in r} == {"V001", "V002"},
        timeout=150,
    )
    assert all(row["exit_code"] == 0 for row in runs)
    profile = platform.wait_until(
        "select runs, failures, cpu_seconds_max, mem_bytes_max, wall_seconds_max from profiles where bundle_id = 'waggle/plugin-bme680:0.2.1'",
        lambda r: bool(r) and r[0]["runs"] >= 2,
    )[0]
    assert profile["failures"] == 0 and profile["mem_bytes_max"] > 0 and profile["wall_seconds_max"] > 0
    readings = platform.sql("select count(*) as n from readings where meta['plugin'] = 'waggle/plugin-bme680:0.2.1' and meta['job'] = 'demo-bme680'")
    assert readings[0]["n"] > 0, "the plugin's readings carry its job and bundle in meta"


def test_every_readme_shell_command_works(platform: RunningPlatform) -> None:
    ran = []
    for block in blocks("bash"):
        for line in commands(block):
            assert line.startswith("hivebus "), f"README bash blocks hold hivebus commands only: {line}"
            proc = subprocess.run(
                line.replace("hivebus ", f"{sys.executable} -m hivebus ", 1),
                shell=True, cwd=platform.workdir, env=platform.env, capture_output=True, text=True, timeout=120,
            )
            assert proc.returncode == 0, f"{line}\nexit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            ran.append((line, proc.stdout))
    outputs = dict(ran)
    assert "registered waggle/plugin-heat-index:0.1.0" in outputs["hivebus ecr push examples/plugins/plugin-heat-index/sage.yaml --user waggle"]
    assert "scheduled heat-1" in outputs["hivebus job submit examples/job-heat.yaml --user alice --id heat-1"]
    assert "V001" in outputs["hivebus node list"] and "V002" in outputs["hivebus node list"]
    assert len(ran) >= 15


def test_every_readme_console_example_shows_what_it_says(platform: RunningPlatform) -> None:
    for block in blocks("console"):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("$ "):
                continue
            expected = lines[i + 1].split("...")[0].strip() if i + 1 < len(lines) and not lines[i + 1].startswith("$") else ""
            command = line[2:].replace("hivebus ", f"{sys.executable} -m hivebus ", 1)
            proc = subprocess.run(command, shell=True, cwd=platform.workdir, env=platform.env, capture_output=True, text=True, timeout=60)
            shown = " ".join((proc.stdout + proc.stderr).split())
            assert expected in shown, f"{line}\nexpected {expected!r} in:\n{shown}"
            if expected.startswith("error:"):
                assert proc.returncode != 0 and "Traceback" not in shown


def test_every_readme_python_snippet_runs(platform: RunningPlatform, tmp_path: Path) -> None:
    snippets = blocks("python")
    assert snippets
    for n, code in enumerate(snippets):
        script = tmp_path / f"snippet_{n}.py"
        script.write_text(code)
        proc = subprocess.run([sys.executable, str(script)], cwd=platform.workdir, env=platform.env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"snippet {n} failed:\n{code}\n{proc.stdout}\n{proc.stderr}"
        assert "node_id" in proc.stdout and "env." in proc.stdout


def test_a_permission_can_be_revoked_and_granted_again(platform: RunningPlatform) -> None:
    bundle = "waggle/plugin-bme680:0.2.1"
    granted = platform.cli("ecr", "grant", bundle, "READ", "--to", "carol", "--user", "waggle")
    assert f"granted READ on {bundle} to user carol" in granted.stdout
    revoked = platform.cli("ecr", "revoke", bundle, "READ", "--to", "carol", "--user", "waggle")
    assert f"revoked READ on {bundle} from user carol" in revoked.stdout
    refused = platform.cli("ecr", "grant", bundle, "READ", "--to", "mallory", "--user", "carol", check=False)
    assert refused.returncode == 1 and "error:" in refused.stderr and "Traceback" not in refused.stderr
