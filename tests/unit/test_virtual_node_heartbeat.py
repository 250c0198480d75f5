"""hivebus up's virtual nodes beat often enough that the hub's timeout never fires between beats."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from hivebus.bootstrap import Platform, PlatformOptions
from hivebus.config import Settings


@pytest.mark.parametrize(("offline_after", "beat"), [(30, "10"), (90, "30"), (2, "1"), (1.5, "1")])
def test_a_virtual_node_beats_three_times_per_offline_timeout(tmp_path: Path, offline_after: float, beat: str) -> None:
    settings = Settings(node_offline_after=timedelta(seconds=offline_after))
    platform = Platform(settings, PlatformOptions(data_dir=tmp_path, virtual_nodes=1))
    argv = platform._node_argv("V001", "nats://127.0.0.1:4222")
    assert argv[argv.index("--heartbeat") + 1] == beat
    assert argv[argv.index("--node-id") + 1] == "V001" and "--virtual" in argv
