"""Unit tests for load_settings: defaults < TOML file < DISPATCHER_* env < CLI overrides."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from dispatcher.errors import ConfigError
from dispatcher.settings import Settings, load_settings


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dispatcher.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = load_settings(env={})

    assert settings == Settings()
    assert settings.database_url is None
    assert settings.state_dir == Path(".dispatcher")
    assert settings.secret_header == "webhook-secret"
    assert settings.request_timeout_s == 30.0
    assert settings.connect_timeout_s == 10.0
    assert settings.retry_schedule == (0, 0, 0, 30, 30, 30)
    assert settings.max_in_flight == 128
    assert settings.per_endpoint_concurrency == 16
    assert settings.lease_batch_size == 100
    assert settings.lease_seconds == 0.0
    assert settings.poll_interval_s == 1.0
    assert settings.flush_interval_s == 0.02
    assert settings.flush_max_outcomes == 500
    assert settings.shutdown_grace_s == 10.0
    assert settings.response_read_max_bytes == 65536
    assert settings.response_store_max_bytes == 4096
    assert settings.pool_max_size == 4
    assert settings.apply_migrations is True
    assert settings.log_level == "info"
    assert settings.log_format == "auto"


def test_derived_values_of_defaults() -> None:
    settings = load_settings(env={})

    assert settings.max_attempts == 7
    assert settings.lease_duration == timedelta(seconds=60)
    assert settings.retry_delays == (
        timedelta(0),
        timedelta(0),
        timedelta(0),
        timedelta(seconds=30),
        timedelta(seconds=30),
        timedelta(seconds=30),
    )


def test_explicit_lease_seconds_is_the_lease_duration() -> None:
    settings = load_settings(env={}, overrides={"request_timeout_s": 5, "lease_seconds": 12.5})

    assert settings.lease_duration == timedelta(seconds=12.5)


def test_settings_are_frozen() -> None:
    settings = load_settings(env={})

    with pytest.raises(AttributeError):
        settings.max_in_flight = 3  # type: ignore[misc]


def test_toml_file_values(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
database_url = "postgresql://user@db.example/hooks"
state_dir = "/var/lib/dispatcher"
secret_header = "x-hook-secret"
request_timeout_s = 12
connect_timeout_s = 2.5
retry_schedule = [1, 2.5, 60]
max_in_flight = 64
lease_batch_size = 50
lease_seconds = 40
apply_migrations = false
log_level = "debug"
log_format = "json"
""",
    )

    settings = load_settings(path, env={})

    assert settings.database_url == "postgresql://user@db.example/hooks"
    assert settings.state_dir == Path("/var/lib/dispatcher")
    assert settings.secret_header == "x-hook-secret"
    assert settings.request_timeout_s == 12.0
    assert isinstance(settings.request_timeout_s, float)
    assert settings.connect_timeout_s == 2.5
    assert settings.retry_schedule == (1.0, 2.5, 60.0)
    assert settings.max_attempts == 4
    assert settings.max_in_flight == 64
    assert settings.lease_batch_size == 50
    assert settings.lease_seconds == 40.0
    assert settings.apply_migrations is False
    assert settings.log_level == "debug"
    assert settings.log_format == "json"
    # Keys the file does not mention keep their defaults.
    assert settings.poll_interval_s == 1.0
    assert settings.pool_max_size == 4


def test_config_path_from_env(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "max_in_flight = 9\n")

    settings = load_settings(env={"DISPATCHER_CONFIG": str(path)})

    assert settings.max_in_flight == 9


def test_config_path_argument_beats_env_config(tmp_path: Path) -> None:
    chosen = write_toml(tmp_path, "max_in_flight = 9\n")
    other = tmp_path / "other.toml"
    other.write_text("max_in_flight = 3\n", encoding="utf-8")

    settings = load_settings(chosen, env={"DISPATCHER_CONFIG": str(other)})

    assert settings.max_in_flight == 9


def test_env_overrides_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "max_in_flight = 64\nlog_level = 'debug'\npool_max_size = 6\n")

    settings = load_settings(
        path,
        env={
            "DISPATCHER_MAX_IN_FLIGHT": "32",
            "DISPATCHER_LOG_LEVEL": "error",
            "DISPATCHER_REQUEST_TIMEOUT_S": "7.5",
            "DISPATCHER_DATABASE_URL": "postgres://env@db/x",
            "DISPATCHER_STATE_DIR": "/tmp/state",
        },
    )

    assert settings.max_in_flight == 32
    assert settings.log_level == "error"
    assert settings.request_timeout_s == 7.5
    assert settings.database_url == "postgres://env@db/x"
    assert settings.state_dir == Path("/tmp/state")
    # Not set in env: the file's value stays.
    assert settings.pool_max_size == 6


def test_empty_env_value_is_ignored(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "max_in_flight = 64\n")

    settings = load_settings(
        path, env={"DISPATCHER_MAX_IN_FLIGHT": "", "DISPATCHER_RETRY_SCHEDULE": ""}
    )

    assert settings.max_in_flight == 64
    assert settings.retry_schedule == (0, 0, 0, 30, 30, 30)


def test_unprefixed_env_is_ignored() -> None:
    settings = load_settings(env={"MAX_IN_FLIGHT": "3", "max_in_flight": "3"})

    assert settings.max_in_flight == 128


def test_cli_overrides_beat_env_and_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "max_in_flight = 64\nlog_level = 'debug'\n")

    settings = load_settings(
        path,
        env={"DISPATCHER_MAX_IN_FLIGHT": "32", "DISPATCHER_LOG_LEVEL": "error"},
        overrides={"max_in_flight": 8, "log_level": "warning"},
    )

    assert settings.max_in_flight == 8
    assert settings.log_level == "warning"


def test_none_override_means_flag_not_given() -> None:
    settings = load_settings(
        env={"DISPATCHER_MAX_IN_FLIGHT": "32"}, overrides={"max_in_flight": None}
    )

    assert settings.max_in_flight == 32


def test_overrides_are_coerced() -> None:
    settings = load_settings(
        env={}, overrides={"request_timeout_s": 5, "retry_schedule": [1, 2], "state_dir": "s"}
    )

    assert settings.request_timeout_s == 5.0
    assert isinstance(settings.request_timeout_s, float)
    assert settings.retry_schedule == (1.0, 2.0)
    assert settings.state_dir == Path("s")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0,0,30", (0.0, 0.0, 30.0)),
        ("[0, 5]", (0.0, 5.0)),
        (" 1 , 2.5 ", (1.0, 2.5)),
        ("45", (45.0,)),
        ("0,0,30,", (0.0, 0.0, 30.0)),
        ("[]", ()),
    ],
)
def test_retry_schedule_from_env(text: str, expected: tuple[float, ...]) -> None:
    settings = load_settings(env={"DISPATCHER_RETRY_SCHEDULE": text})

    assert settings.retry_schedule == expected


def test_empty_retry_schedule_allows_one_attempt() -> None:
    settings = load_settings(env={"DISPATCHER_RETRY_SCHEDULE": "[]"})

    assert settings.max_attempts == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("On", True),
        (" true ", True),
        ("0", False),
        ("false", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_bool_from_env(text: str, expected: bool) -> None:
    settings = load_settings(env={"DISPATCHER_APPLY_MIGRATIONS": text})

    assert settings.apply_migrations is expected


@pytest.mark.parametrize(("value", "expected"), [(True, True), (False, False)])
def test_bool_from_override(value: bool, expected: bool) -> None:
    settings = load_settings(env={}, overrides={"apply_migrations": value})

    assert settings.apply_migrations is expected


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"DISPATCHER_REQUEST_TIMEOUT_S": "0"}, "request_timeout_s"),
        ({"DISPATCHER_REQUEST_TIMEOUT_S": "-1"}, "request_timeout_s"),
        ({"DISPATCHER_REQUEST_TIMEOUT_S": "soon"}, "request_timeout_s"),
        ({"DISPATCHER_REQUEST_TIMEOUT_S": "nan"}, "request_timeout_s"),
        ({"DISPATCHER_CONNECT_TIMEOUT_S": "0"}, "connect_timeout_s"),
        ({"DISPATCHER_MAX_IN_FLIGHT": "0"}, "max_in_flight"),
        ({"DISPATCHER_MAX_IN_FLIGHT": "many"}, "max_in_flight"),
        ({"DISPATCHER_MAX_IN_FLIGHT": "1.5"}, "max_in_flight"),
        ({"DISPATCHER_PER_ENDPOINT_CONCURRENCY": "0"}, "per_endpoint_concurrency"),
        ({"DISPATCHER_LEASE_BATCH_SIZE": "0"}, "lease_batch_size"),
        ({"DISPATCHER_LEASE_BATCH_SIZE": "10001"}, "lease_batch_size"),
        (
            {"DISPATCHER_REQUEST_TIMEOUT_S": "30", "DISPATCHER_LEASE_SECONDS": "20"},
            "lease_seconds",
        ),
        (
            {"DISPATCHER_REQUEST_TIMEOUT_S": "30", "DISPATCHER_LEASE_SECONDS": "30"},
            "lease_seconds",
        ),
        ({"DISPATCHER_LEASE_SECONDS": "-5"}, "lease_seconds"),
        ({"DISPATCHER_POLL_INTERVAL_S": "0"}, "poll_interval_s"),
        ({"DISPATCHER_FLUSH_INTERVAL_S": "0"}, "flush_interval_s"),
        ({"DISPATCHER_FLUSH_MAX_OUTCOMES": "0"}, "flush_max_outcomes"),
        ({"DISPATCHER_SHUTDOWN_GRACE_S": "-1"}, "shutdown_grace_s"),
        ({"DISPATCHER_RESPONSE_READ_MAX_BYTES": "-1"}, "response_read_max_bytes"),
        (
            {
                "DISPATCHER_RESPONSE_READ_MAX_BYTES": "100",
                "DISPATCHER_RESPONSE_STORE_MAX_BYTES": "101",
            },
            "response_store_max_bytes",
        ),
        ({"DISPATCHER_RESPONSE_STORE_MAX_BYTES": "-1"}, "response_store_max_bytes"),
        ({"DISPATCHER_POOL_MAX_SIZE": "1"}, "pool_max_size"),
        ({"DISPATCHER_SECRET_HEADER": "webhook secret"}, "secret_header"),
        ({"DISPATCHER_SECRET_HEADER": "webhook_secret"}, "secret_header"),
        ({"DISPATCHER_SECRET_HEADER": "webhook-secret:"}, "secret_header"),
        ({"DISPATCHER_LOG_LEVEL": "loud"}, "log_level"),
        ({"DISPATCHER_LOG_FORMAT": "xml"}, "log_format"),
        ({"DISPATCHER_RETRY_SCHEDULE": "0,-1,30"}, "retry_schedule"),
        ({"DISPATCHER_RETRY_SCHEDULE": "0,soon"}, "retry_schedule"),
        ({"DISPATCHER_RETRY_SCHEDULE": ",".join(["1"] * 101)}, "retry_schedule"),
        ({"DISPATCHER_DATABASE_URL": "mysql://x"}, "database_url"),
        ({"DISPATCHER_APPLY_MIGRATIONS": "maybe"}, "apply_migrations"),
        ({"DISPATCHER_REQUEST_TIMEOUT_S": "inf"}, "request_timeout_s"),
        ({"DISPATCHER_REQUEST_TIMEOUT_S": "nan"}, "request_timeout_s"),
        ({"DISPATCHER_RETRY_SCHEDULE": "0,inf"}, "retry_schedule"),
        ({"DISPATCHER_RETRY_SCHEDULE": "0,1e17"}, "retry_schedule"),
        ({"DISPATCHER_RETENTION_PARTITION_S": "59"}, "retention_partition_s"),
        ({"DISPATCHER_RETENTION_PARTITION_S": "86401"}, "retention_partition_s"),
        ({"DISPATCHER_RETENTION_S": "59", "DISPATCHER_RETENTION_PARTITION_S": "60"}, "retention_s"),
        # Shorter than the partition asked for.
        (
            {"DISPATCHER_RETENTION_S": "3600", "DISPATCHER_RETENTION_PARTITION_S": "7200"},
            "retention_s",
        ),
        # A week of one-minute partitions: 10,080 of them.
        ({"DISPATCHER_RETENTION_PARTITION_S": "60"}, "retention_partition_s"),
    ],
)
def test_invalid_env_value_names_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^invalid value for {key}: "):
        load_settings(env=env)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("max_in_flight = true", "max_in_flight"),
        ("max_in_flight = 1.5", "max_in_flight"),
        ("max_in_flight = [1]", "max_in_flight"),
        ("request_timeout_s = true", "request_timeout_s"),
        ("request_timeout_s = 'soon'", "request_timeout_s"),
        ("apply_migrations = 2", "apply_migrations"),
        ("database_url = 5", "database_url"),
        ("log_level = 3", "log_level"),
        ("retry_schedule = 5", "retry_schedule"),
        ("retry_schedule = [0, -1]", "retry_schedule"),
        ("secret_header = ''", "secret_header"),
        ("database_url = 'mysql://x'", "database_url"),
    ],
)
def test_invalid_toml_value_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    path = write_toml(tmp_path, toml + "\n")

    with pytest.raises(ConfigError, match=rf"^invalid value for {key}: "):
        load_settings(path, env={})


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"secret_header": ""}, "secret_header"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"request_timeout_s": 10, "lease_seconds": 5}, "lease_seconds"),
        ({"retry_schedule": (0, -1)}, "retry_schedule"),
    ],
)
def test_invalid_override_names_the_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^invalid value for {key}: "):
        load_settings(env={}, overrides=overrides)


@pytest.mark.parametrize("url", ["postgres://u@h/db", "postgresql://u@h:5433/db"])
def test_postgres_urls_are_accepted(url: str) -> None:
    assert load_settings(env={"DISPATCHER_DATABASE_URL": url}).database_url == url


def test_mixed_case_secret_header_is_accepted() -> None:
    settings = load_settings(env={"DISPATCHER_SECRET_HEADER": "X-Hook-Secret"})

    assert settings.secret_header == "X-Hook-Secret"


def test_unknown_toml_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "max_in_flight = 4\nmax_inflight = 4\n")

    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})

    assert str(info.value) == f"unknown config key 'max_inflight' in {path}"


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})

    assert str(info.value) == f"config file {path} does not exist"


def test_missing_config_file_from_env(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(env={"DISPATCHER_CONFIG": str(path)})


def test_malformed_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "max_in_flight = = 4\n")

    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})

    assert str(info.value).startswith(f"config file {path} is not valid TOML: ")


@pytest.mark.parametrize(
    ("retention_s", "partition_s"),
    [
        ("604800", 86400.0),  # the default week: a day
        ("3600", 480.0),  # an hour: 514 s, in whole minutes
        ("120", 60.0),  # never below a minute
        ("31536000", 86400.0),  # a year: never above a day
    ],
)
def test_the_default_partition_is_a_seventh_of_retention(
    retention_s: str, partition_s: float
) -> None:
    """A config that sets only retention_s (valid before history was partitioned) still loads."""
    settings = load_settings(env={"DISPATCHER_RETENTION_S": retention_s})

    assert (settings.retention_partition_s, settings.partition_s) == (0.0, partition_s)


@pytest.mark.parametrize(
    ("retention_s", "partition_s"),
    [
        ("60", "60"),
        ("3600", "3600"),
        ("7200", "3600"),
        ("604800", "86400"),
        ("120000", "60"),
        ("172800000", "86400"),
    ],
)
def test_retention_may_be_as_short_as_one_partition(retention_s: str, partition_s: str) -> None:
    settings = load_settings(
        env={"DISPATCHER_RETENTION_S": retention_s, "DISPATCHER_RETENTION_PARTITION_S": partition_s}
    )

    assert (settings.retention_s, settings.retention_partition_s) == (
        float(retention_s),
        float(partition_s),
    )
