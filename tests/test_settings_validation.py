"""The network, payload, retention and metrics settings: a bad value is refused with one line
naming the key and what is wrong, from the environment, a TOML file or an override (what CLI
flags pass) alike, and through the CLI as `error: ...` with exit code 1. Good values load as
given."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dispatcher.cli import main
from dispatcher.errors import ConfigError
from dispatcher.settings import ENV_PREFIX, Settings, load_settings

NETWORK = "is not a network like 10.0.0.0/8"
PROXY = "must be an http:// or https:// proxy URL"
ADDRESS = "is not an IP address"
PAYLOAD = "must be between 1024 and 67108864"
RETENTION = "must be at least 60 and at least retention_partition_s"
PARTITION = "must be 0 (a seventh of retention_s) or between 60 and 86400"
INTERVAL = "must be between 1 and 86400"
BATCH = "must be between 10 and 100000"
LISTEN = "must be HOST:PORT, e.g. 127.0.0.1:9464"

# (key, value, what the error says): values as a TOML file or an override would hold them; the
# environment holds the same as text, a list joined with commas.
BAD: list[tuple[str, Any, str]] = [
    ("allowed_networks", "10.0.0.0/33", NETWORK),
    ("allowed_networks", "localhost", NETWORK),
    ("allowed_networks", "10.0.0.0/8;192.168.0.0/16", NETWORK),  # not the separator
    ("allowed_networks", ["10.0.0.0/8", "fd00::/129"], NETWORK),
    ("allowed_networks", ["10.0.0.0/8", "example.com"], NETWORK),
    ("egress_proxy", "proxy.internal:3128", PROXY),
    ("egress_proxy", "socks5://proxy.internal:1080", PROXY),
    # Accepted once, so that every request then failed: no host, or a port that is none.
    ("egress_proxy", "http://", PROXY),
    ("egress_proxy", "http://:3128", PROXY),
    ("egress_proxy", "http://user@", PROXY),
    ("egress_proxy", "http://proxy.internal:proxy", PROXY),
    ("egress_proxy", "http://proxy.internal:65536", PROXY),
    ("egress_proxy", "http://proxy.internal:0", PROXY),
    ("egress_proxy", "http://proxy internal:3128", PROXY),
    ("bind_address", "localhost", ADDRESS),
    ("bind_address", "10.0.0.1/8", ADDRESS),
    ("bind_address", "256.0.0.1", ADDRESS),
    ("max_payload_bytes", 1023, PAYLOAD),
    ("max_payload_bytes", 64 * 1024 * 1024 + 1, PAYLOAD),
    ("max_payload_bytes", 0, PAYLOAD),
    ("max_payload_bytes", "1e6", "is not a valid int"),
    ("max_payload_bytes", "256k", "is not a valid int"),
    ("retention_s", 59, RETENTION),
    ("retention_s", -86400, RETENTION),
    ("retention_s", "nan", "is not a valid float"),
    ("retention_s", "a week", "is not a valid float"),
    ("retention_partition_s", 59, PARTITION),
    ("retention_partition_s", 86401, PARTITION),
    ("retention_partition_s", -60, PARTITION),
    ("retention_interval_s", 0, INTERVAL),
    ("retention_interval_s", 0.5, INTERVAL),
    ("retention_interval_s", 86401, INTERVAL),
    ("retention_batch_size", 9, BATCH),
    ("retention_batch_size", 100001, BATCH),
    ("retention_batch_size", "1k", "is not a valid int"),
    ("metrics_listen", "9464", LISTEN),
    ("metrics_listen", ":9464", LISTEN),
    ("metrics_listen", "127.0.0.1:0", LISTEN),
    ("metrics_listen", "127.0.0.1:65536", LISTEN),
    ("metrics_listen", "127.0.0.1:metrics", LISTEN),
    ("metrics_listen", "127.0.0.1", LISTEN),
]

# (key, value, the setting loaded): from every source alike.
GOOD: list[tuple[str, Any, Any]] = [
    ("allowed_networks", "10.0.0.0/8", ("10.0.0.0/8",)),
    ("allowed_networks", ["10.0.0.0/8", "fd00::/8"], ("10.0.0.0/8", "fd00::/8")),
    ("allowed_networks", ["127.0.0.1/32", " 192.168.1.0/24 "], ("127.0.0.1/32", "192.168.1.0/24")),
    ("egress_proxy", "http://proxy.internal:3128", "http://proxy.internal:3128"),
    ("egress_proxy", "https://user:pw@proxy.internal", "https://user:pw@proxy.internal"),
    ("egress_proxy", "http://[fd00::1]:3128", "http://[fd00::1]:3128"),
    ("bind_address", "192.0.2.10", "192.0.2.10"),
    ("bind_address", "::1", "::1"),
    ("max_payload_bytes", 1024, 1024),
    ("max_payload_bytes", 64 * 1024 * 1024, 64 * 1024 * 1024),
    ("retention_s", 86400, 86400.0),
    ("retention_s", 60, 60.0),
    ("retention_partition_s", 3600, 3600.0),
    ("retention_interval_s", 1, 1.0),
    ("retention_interval_s", 86400, 86400.0),
    ("retention_batch_size", 10, 10),
    ("retention_batch_size", 100000, 100000),
    ("metrics_listen", "127.0.0.1:9464", "127.0.0.1:9464"),
    ("metrics_listen", "0.0.0.0:65535", "0.0.0.0:65535"),
    ("metrics_listen", "[::1]:9464", "[::1]:9464"),
    ("metrics_listen", "localhost:1", "localhost:1"),
]

SOURCES = ["env", "toml", "override"]


def env_text(value: Any) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


def toml_literal(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    return repr(value)


# retention_s alone is checked against its default partition (a seventh of it); partitions and
# a retention this short go together. Keys that need no company have none.
COMPANY = {
    "retention_s": {"retention_partition_s": 60},
    "retention_partition_s": {"retention_s": 86400},
}


def load(source: str, tmp_path: Path, key: str, value: Any) -> Settings:
    company = COMPANY.get(key, {})
    if source == "env":
        env = {ENV_PREFIX + k.upper(): env_text(v) for k, v in {**company, key: value}.items()}
        return load_settings(env=env)
    if source == "toml":
        path = tmp_path / "dispatcher.toml"
        items = {**company, key: value}
        path.write_text("".join(f"{k} = {toml_literal(v)}\n" for k, v in items.items()))
        return load_settings(path, env={})
    return load_settings(env={}, overrides={**company, key: value})


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(("key", "value", "why"), BAD)
def test_a_bad_value_is_refused_in_one_line_naming_the_key(
    tmp_path: Path, source: str, key: str, value: Any, why: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load(source, tmp_path, key, value)
    message = str(refused.value)
    assert message.startswith(f"invalid value for {key}: ")
    assert why in message
    assert "\n" not in message


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(("key", "value", "loaded"), GOOD)
def test_a_good_value_loads_as_given(
    tmp_path: Path, source: str, key: str, value: Any, loaded: Any
) -> None:
    assert getattr(load(source, tmp_path, key, value), key) == loaded


@pytest.mark.parametrize(("key", "value", "why"), BAD)
def test_the_cli_prints_the_refusal_as_one_error_line(
    monkeypatch: pytest.MonkeyPatch, key: str, value: Any, why: str
) -> None:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for k, v in {**COMPANY.get(key, {}), key: value}.items():
        monkeypatch.setenv(ENV_PREFIX + k.upper(), env_text(v))
    # A port nothing listens on: the settings are read, and refused, before any connection.
    result = CliRunner().invoke(main, ["--database-url", "postgresql://127.0.0.1:9/x", "migrate"])
    assert result.exit_code == 1, result.output
    [line] = result.output.splitlines()
    assert line.startswith(f"error: invalid value for {key}: ") and why in line
