from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from hivebus.config import Settings, parse_duration
from hivebus.errors import SetupError


def test_defaults_work_on_one_machine() -> None:
    s = Settings.from_env({})
    assert s.nats_url == "nats://127.0.0.1:4222"
    assert s.fsync == "always"
    assert s.data_max_age == timedelta(days=30)


def test_environment_overrides() -> None:
    s = Settings.from_env(
        {
            "HIVEBUS_NATS_URL": "nats://hub:4222",
            "HIVEBUS_DATA_MAX_AGE": "7d",
            "HIVEBUS_DATA_DIR": "/tmp/x",
            "HIVEBUS_REPLICAS": "3",
        }
    )
    assert (s.nats_url, s.data_max_age, s.data_dir, s.replicas) == (
        "nats://hub:4222",
        timedelta(days=7),
        Path("/tmp/x"),
        3,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"HIVEBUS_NATS_URL": "http://x"}, "HIVEBUS_NATS_URL"),
        ({"HIVEBUS_REPLICAS": "two"}, "HIVEBUS_REPLICAS"),
        ({"HIVEBUS_REPLICAS": "2"}, "HIVEBUS_REPLICAS"),
        ({"HIVEBUS_DATA_MAX_AGE": "soon"}, "HIVEBUS_DATA_MAX_AGE"),
        ({"HIVEBUS_FSYNC": "never"}, "HIVEBUS_FSYNC"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SetupError, match=named):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("90", 90), ("2m", 120), ("1.5h", 5400), ("30d", 2592000)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds
