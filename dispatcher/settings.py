"""One frozen, validated settings object: defaults < TOML file < DISPATCHER_* env < CLI flags."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dispatcher.errors import ConfigError

ENV_PREFIX = "DISPATCHER_"
_HEADER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("auto", "json", "console")
_HOUR = 3600.0
# The named retry policies a webhook may use (webhooks.retry_policy holds the same names).
RETRY_POLICIES = ("schedule", "exponential")
_DAY = 86400.0
_MAX_HISTORY_PARTITIONS = 2000


@dataclass(frozen=True)
class Settings:
    """Every tunable of the daemon and the CLI; `config/dispatcher.toml` documents each key."""

    database_url: str | None = None
    state_dir: Path = Path(".dispatcher")
    secret_header: str = "webhook-secret"
    request_timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    retry_schedule: tuple[float, ...] = (0, 0, 0, 30, 30, 30)
    # The policy of webhooks without their own: 'schedule' (retry_schedule) or 'exponential'.
    retry_policy: str = "schedule"
    retry_exponential_base_s: float = 5.0
    retry_exponential_max_s: float = 6 * 3600.0
    retry_exponential_attempts: int = 15
    retry_after_min_s: float = 1.0
    retry_after_max_s: float = 3600.0
    throttle_min_delay_s: float = 10.0
    gone_disables_webhook: bool = True
    breaker_threshold: int = 10
    breaker_cooloff_s: float = 30.0
    breaker_cooloff_max_s: float = 600.0
    failing_after_s: float = 86400.0
    auto_disable_after_s: float = 5 * 86400.0
    auto_disable_min_attempts: int = 10
    max_in_flight: int = 128
    per_endpoint_concurrency: int = 16
    lease_batch_size: int = 100
    lease_seconds: float = 0.0  # 0 means request_timeout_s + 30 s
    poll_interval_s: float = 1.0
    flush_interval_s: float = 0.02
    flush_max_outcomes: int = 500
    shutdown_grace_s: float = 10.0
    response_read_max_bytes: int = 65536
    response_store_max_bytes: int = 4096
    pool_max_size: int = 4
    allowed_networks: tuple[str, ...] = ()
    egress_proxy: str | None = None
    bind_address: str | None = None
    send_secret_header: bool = True
    max_payload_bytes: int = 262144
    metrics_listen: str | None = None
    web_listen: str = "127.0.0.1:8080"
    web_secure_cookie: bool = False
    retention_s: float = 7 * 86400.0
    # The span of one history partition: finished rows live retention_s to retention_s + this.
    retention_partition_s: float = 0.0  # 0: retention_s / 7, whole minutes, 60 s to a day
    retention_interval_s: float = 60.0
    retention_batch_size: int = 1000
    apply_migrations: bool = True
    log_level: str = "info"
    log_format: str = "auto"
    _source: str = field(default="defaults", compare=False, repr=False)

    @property
    def retry_delays(self) -> tuple[timedelta, ...]:
        return tuple(timedelta(seconds=s) for s in self.retry_schedule)

    @property
    def partition_s(self) -> float:
        """The span of one history partition: retention_partition_s, or by default a seventh of
        retention_s (a day for the default week) in whole minutes, so history is kept at most
        a seventh longer than retention_s whatever retention_s is."""
        if self.retention_partition_s:
            return self.retention_partition_s
        return float(min(_DAY, max(60, int(self.retention_s / 7 // 60) * 60)))

    @property
    def lease_duration(self) -> timedelta:
        return timedelta(seconds=self.lease_seconds or self.request_timeout_s + 30.0)

    @property
    def allowed(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        from dispatcher.delivery.netguard import parse_networks

        return parse_networks(self.allowed_networks)

    @property
    def max_attempts(self) -> int:
        return len(self.retry_schedule) + 1


_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if not f.name.startswith("_")}


def config_file(
    config_path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> str | Path | None:
    """The TOML file settings are read from: --config, else $DISPATCHER_CONFIG, else none."""
    env = os.environ if env is None else env
    return config_path or env.get(ENV_PREFIX + "CONFIG") or None


def load_settings(
    config_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build validated settings; raise ConfigError naming the first bad key."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    path = config_file(config_path, env)
    if path:
        raw.update(_read_toml(Path(path)))
    for name in _FIELDS:
        value = env.get(ENV_PREFIX + name.upper())
        if value is not None and value != "":
            raw[name] = value
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})

    values = {name: _coerce(name, value) for name, value in raw.items()}
    settings = Settings(**values)
    _validate(settings)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} in {path}")
    return data


def _coerce(name: str, value: Any) -> Any:
    """Turn a TOML or environment value into the field's type."""
    kind = _FIELDS[name].type
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise ValueError(value)
            return float(value)
        if kind == "Path":
            return Path(str(value))
        if kind == "tuple[str, ...]":
            parts = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(p).strip() for p in parts if str(p).strip())
        if kind == "tuple[float, ...]":
            items = value
            if isinstance(value, str):
                text = value.strip().strip("[]")
                items = [part for part in text.split(",") if part.strip()] if text else []
            delays = tuple(float(item) for item in items)
            if not all(math.isfinite(d) for d in delays):
                raise ValueError(value)
            return delays
        if kind in ("str", "str | None"):
            if not isinstance(value, str):
                raise ValueError(value)
            return value
    except (TypeError, ValueError):
        raise ConfigError(f"invalid value for {name}: {value!r} is not a valid {kind}") from None
    raise AssertionError(f"no coercion for {name}: {kind}")


def _host_port(value: str) -> bool:
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def _proxy_url(value: str) -> bool:
    """Tell whether requests can be sent through proxy URL `value` (else every one fails)."""
    if not value.startswith(("http://", "https://")) or any(c.isspace() for c in value):
        return False
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a port that is not a number from 0 to 65535
    except ValueError:
        return False
    return bool(parts.hostname) and port != 0


def _validate(s: Settings) -> None:
    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"invalid value for {key}: {getattr(s, key)!r} {why}")

    need(0 < s.request_timeout_s <= _HOUR, "request_timeout_s", "must be > 0 and <= 3600")
    need(0 < s.connect_timeout_s <= _HOUR, "connect_timeout_s", "must be > 0 and <= 3600")
    need(
        all(0 <= d <= 30 * _DAY for d in s.retry_schedule),
        "retry_schedule",
        "must hold delays between 0 and 30 days (2592000 s)",
    )
    need(len(s.retry_schedule) <= 100, "retry_schedule", "must hold at most 100 delays")
    need(
        s.retry_policy in RETRY_POLICIES,
        "retry_policy",
        f"must be one of {', '.join(RETRY_POLICIES)}",
    )
    need(
        0 < s.retry_exponential_base_s <= s.retry_exponential_max_s <= 30 * _DAY,
        "retry_exponential_base_s",
        "must be > 0 and at most retry_exponential_max_s (itself at most 30 days)",
    )
    need(
        1 <= s.retry_exponential_attempts <= 100,
        "retry_exponential_attempts",
        "must be between 1 and 100",
    )
    need(
        0 <= s.retry_after_min_s <= s.retry_after_max_s <= _DAY,
        "retry_after_min_s",
        "must be >= 0 and at most retry_after_max_s (itself at most 86400)",
    )
    need(0 <= s.throttle_min_delay_s <= _DAY, "throttle_min_delay_s", "must be between 0 and 86400")
    need(s.breaker_threshold >= 1, "breaker_threshold", "must be at least 1")
    need(
        0 < s.breaker_cooloff_s <= s.breaker_cooloff_max_s <= _DAY,
        "breaker_cooloff_s",
        "must be > 0 and at most breaker_cooloff_max_s (itself at most 86400)",
    )
    need(s.failing_after_s >= 0, "failing_after_s", "must be 0 or more")
    need(s.auto_disable_after_s >= 0, "auto_disable_after_s", "must be 0 or more")
    need(s.auto_disable_min_attempts >= 1, "auto_disable_min_attempts", "must be at least 1")
    need(s.max_in_flight >= 1, "max_in_flight", "must be at least 1")
    need(s.per_endpoint_concurrency >= 1, "per_endpoint_concurrency", "must be at least 1")
    need(1 <= s.lease_batch_size <= 10000, "lease_batch_size", "must be between 1 and 10000")
    need(
        s.lease_seconds == 0 or s.request_timeout_s < s.lease_seconds <= _DAY,
        "lease_seconds",
        "must be 0 (automatic) or longer than request_timeout_s and at most a day",
    )
    need(0 < s.poll_interval_s <= _HOUR, "poll_interval_s", "must be > 0 and <= 3600")
    need(0 < s.flush_interval_s <= 10, "flush_interval_s", "must be > 0 and <= 10")
    need(s.flush_max_outcomes >= 1, "flush_max_outcomes", "must be at least 1")
    need(0 <= s.shutdown_grace_s <= _HOUR, "shutdown_grace_s", "must be between 0 and 3600")
    need(s.response_read_max_bytes >= 0, "response_read_max_bytes", "must be 0 or more")
    need(
        0 <= s.response_store_max_bytes <= s.response_read_max_bytes,
        "response_store_max_bytes",
        "must be between 0 and response_read_max_bytes",
    )
    need(s.pool_max_size >= 2, "pool_max_size", "must be at least 2")
    need(
        bool(s.secret_header) and set(s.secret_header.lower()) <= _HEADER_CHARS,
        "secret_header",
        "must be a header name of letters, digits and dashes",
    )
    need(s.log_level in _LOG_LEVELS, "log_level", f"must be one of {', '.join(_LOG_LEVELS)}")
    need(s.log_format in _LOG_FORMATS, "log_format", f"must be one of {', '.join(_LOG_FORMATS)}")
    for cidr in s.allowed_networks:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(
                f"invalid value for allowed_networks: {cidr!r} is not a network like 10.0.0.0/8"
            ) from None
    if s.egress_proxy is not None:
        need(
            _proxy_url(s.egress_proxy),
            "egress_proxy",
            "must be an http:// or https:// proxy URL with a host and, if any, a port from 1 to"
            " 65535, e.g. http://proxy.internal:3128",
        )
    if s.bind_address is not None:
        try:
            ipaddress.ip_address(s.bind_address)
        except ValueError:
            raise ConfigError(
                f"invalid value for bind_address: {s.bind_address!r} is not an IP address"
            ) from None
    need(
        1024 <= s.max_payload_bytes <= 64 * 1024 * 1024,
        "max_payload_bytes",
        "must be between 1024 and 67108864",
    )
    need(
        s.retention_partition_s == 0 or 60 <= s.retention_partition_s <= _DAY,
        "retention_partition_s",
        "must be 0 (a seventh of retention_s) or between 60 and 86400",
    )
    need(
        s.retention_s >= max(60, s.partition_s),
        "retention_s",
        f"must be at least 60 and at least retention_partition_s ({s.partition_s:g});"
        " for a shorter retention, set retention_partition_s as short",
    )
    # Every query of the whole history visits each partition: a week of one-minute partitions
    # (10,080) would make the delivery log and the event sweep crawl.
    need(
        s.retention_s <= _MAX_HISTORY_PARTITIONS * s.partition_s,
        "retention_partition_s",
        f"must be at least retention_s / {_MAX_HISTORY_PARTITIONS}"
        f" ({s.retention_s / _MAX_HISTORY_PARTITIONS:g}): at most"
        f" {_MAX_HISTORY_PARTITIONS} history partitions",
    )
    need(1 <= s.retention_interval_s <= _DAY, "retention_interval_s", "must be between 1 and 86400")
    need(
        10 <= s.retention_batch_size <= 100000,
        "retention_batch_size",
        "must be between 10 and 100000",
    )
    if s.metrics_listen is not None:
        need(
            _host_port(s.metrics_listen), "metrics_listen", "must be HOST:PORT, e.g. 127.0.0.1:9464"
        )
    need(_host_port(s.web_listen), "web_listen", "must be HOST:PORT, e.g. 127.0.0.1:8080")
    if s.database_url is not None:
        need(
            s.database_url.startswith(("postgres://", "postgresql://")),
            "database_url",
            "must start with postgresql://",
        )
