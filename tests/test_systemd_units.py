"""The shipped systemd units: hardened alike, the daemon's notify-typed, all accepted by
systemd-analyze."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DAEMON_UNITS = ["webhook-dispatcher.service", "webhook-dispatcher@.service"]
WEB_UNIT = "webhook-dispatcher-web.service"
UNITS = [*DAEMON_UNITS, WEB_UNIT]
INSTALLED_BINARY = "/opt/webhook-dispatcher/bin/dispatcher"
MAX_EXPOSURE = 2.0


@pytest.fixture
def systemd_analyze() -> str:
    """Return systemd-analyze's path. Without it, skip, except in CI (DISPATCHER_CI, set by
    .ci/run, which installs it), where a skip would pass a check that never ran."""
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("DISPATCHER_CI"):
            pytest.fail(
                "systemd-analyze is missing in CI: install Debian's systemd package"
                " (.ci/run does this)",
                pytrace=False,
            )
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    return path


def directives(unit: str) -> dict[str, dict[str, list[str]]]:
    """Parse a unit file into {section: {key: [values in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (ROOT / "systemd" / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(timespan: str) -> float:
    """Convert a systemd time span such as "45", "45s" or "1min 30s" to seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", timespan)
    assert parts, timespan
    return sum(float(n) * units[u] for n, u in parts)


def copy_for_analysis(unit: str, tmp_path: Path) -> Path:
    """Copy `unit` into tmp_path with ExecStart pointing at a binary that exists here.

    `systemd-analyze verify` fails on an ExecStart that is not executable on this machine; the
    venv's own `dispatcher` entry point stands in for the installed one.
    """
    stand_in = Path(sys.executable).with_name("dispatcher")
    binary = str(stand_in) if stand_in.exists() else shutil.which("true")
    assert binary
    text = (ROOT / "systemd" / unit).read_text()
    assert INSTALLED_BINARY in text
    copy = tmp_path / unit
    copy.write_text(text.replace(INSTALLED_BINARY, binary))
    return copy


@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify(
    unit: str, tmp_path: Path, systemd_analyze: str
) -> None:
    copy = copy_for_analysis(unit, tmp_path)
    result = subprocess.run(
        [systemd_analyze, "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    # Only what concerns this unit: a host may have unrelated broken units of its own.
    about_us = [line for line in output.splitlines() if "webhook-dispatcher" in line]
    assert result.returncode == 0, output
    assert about_us == []


@pytest.mark.parametrize("unit", UNITS)
def test_unit_exposure_is_at_most_2(unit: str, tmp_path: Path, systemd_analyze: str) -> None:
    copy = copy_for_analysis(unit, tmp_path)
    result = subprocess.run(
        [systemd_analyze, "security", "--offline=yes", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout


EXPECTED = {
    "KillMode": "mixed",
    "Restart": "on-failure",
    "DynamicUser": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
    "LimitCORE": "0",
}


@pytest.mark.parametrize("unit", UNITS)
def test_unit_has_the_required_directives(unit: str) -> None:
    service = directives(unit)["Service"]
    found = {key: service.get(key, ["<missing>"])[-1] for key in EXPECTED}
    assert found == EXPECTED
    assert "@system-service" in service["SystemCallFilter"]
    assert service["MemoryMax"][-1]
    assert service["EnvironmentFile"][-1].startswith("/etc/webhook-dispatcher/")
    assert " --config /etc/webhook-dispatcher/" in service["ExecStart"][-1]
    assert "User" not in service or service["User"][-1] not in ("root", "0")


@pytest.mark.parametrize("unit", DAEMON_UNITS)
def test_daemon_unit_is_notify_typed_with_a_watchdog(unit: str) -> None:
    service = directives(unit)["Service"]
    assert service["Type"][-1] == "notify"
    assert service["NotifyAccess"][-1] == "main"
    assert seconds(service["WatchdogSec"][-1]) > 0


@pytest.mark.parametrize("unit", DAEMON_UNITS)
def test_stop_timeout_outlasts_the_drain(unit: str) -> None:
    stop_s = seconds(directives(unit)["Service"]["TimeoutStopSec"][-1])
    shipped = load_settings(ROOT / "config" / "dispatcher.toml", env={})
    for grace_s in (Settings().shutdown_grace_s, shipped.shutdown_grace_s):
        # The drain, then releasing leases and flushing outcomes, with room to spare.
        assert stop_s >= grace_s + 10


def test_template_differs_from_the_single_unit_only_in_its_instance_paths() -> None:
    single, template = (directives(unit)["Service"] for unit in DAEMON_UNITS)
    assert template["ExecStart"] == [
        f"{INSTALLED_BINARY} --config /etc/webhook-dispatcher/%i.toml run"
    ]
    assert template["EnvironmentFile"] == ["/etc/webhook-dispatcher/%i.env"]
    for key in ("ExecStart", "EnvironmentFile"):
        del single[key], template[key]
    assert single == template


def test_web_unit_runs_dispatcher_web_with_the_daemons_hardening() -> None:
    web, daemon = directives(WEB_UNIT), directives("webhook-dispatcher.service")
    assert web["Service"]["ExecStart"] == [
        f"{INSTALLED_BINARY} --config /etc/webhook-dispatcher/dispatcher.toml web"
    ]
    # `dispatcher web` sends no sd_notify, so neither READY=1 nor a watchdog is awaited.
    assert web["Service"]["Type"] == ["exec"]
    assert "console" in web["Unit"]["Description"][-1]
    assert "HTTP API" in web["Unit"]["Description"][-1]
    # Everything else is the daemon's: user, environment, stop, restart, sandbox and limits.
    for key in ("Type", "NotifyAccess", "WatchdogSec", "TimeoutStartSec", "ExecStart"):
        web["Service"].pop(key, None)
        daemon["Service"].pop(key, None)
    del web["Unit"]["Description"], daemon["Unit"]["Description"]
    assert web == daemon
