"""The `dispatcher` command's plumbing: where options go, exit codes, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dispatcher.cli import main, redact
from dispatcher.ops import migrate
from tests.conftest import refused_port


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in ("DISPATCHER_CONFIG", "DISPATCHER_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


def test_migrate_applies_then_reports_up_to_date(runner: CliRunner, empty_dsn: str) -> None:
    url = empty_dsn
    first = runner.invoke(main, ["migrate", "--database-url", url])
    expected = "".join(f"applied {m.version:03d}_{m.name}\n" for m in migrate.migrations())
    assert first.output.startswith("applied 001_core\n")
    assert (first.exit_code, first.output) == (0, expected)
    second = runner.invoke(main, ["--database-url", url, "migrate"])
    assert (second.exit_code, second.output) == (0, "schema is up to date\n")


@pytest.mark.parametrize(
    "args",
    [
        ["--config", "{cfg}", "database-url"],
        ["database-url", "--config", "{cfg}"],
    ],
)
def test_config_is_accepted_before_or_after_the_command(
    runner: CliRunner, tmp_path: Path, args: list[str]
) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text('database_url = "postgresql://u@db.example:5432/x"\n')
    result = runner.invoke(main, [a.format(cfg=cfg) for a in args])
    assert (result.exit_code, result.output) == (0, "postgresql://u@db.example:5432/x\n")


def test_bad_config_value_is_one_line_and_exit_1(runner: CliRunner, tmp_path: Path) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text("max_in_flight = 0\n")
    result = runner.invoke(main, ["--config", str(cfg), "database-url"])
    assert result.exit_code == 1
    assert result.output == "error: invalid value for max_in_flight: 0 must be at least 1\n"


def test_unknown_option_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(main, ["run", "--bogus"])
    assert result.exit_code == 2


def test_unreachable_database_is_one_line_and_exit_1(runner: CliRunner) -> None:
    with refused_port() as port:
        result = runner.invoke(
            main, ["migrate", "--database-url", f"postgresql://u:hunter2@127.0.0.1:{port}/x"]
        )
    assert result.exit_code == 1
    assert result.output == (
        f"error: cannot connect to the database at 127.0.0.1:{port} (database_url, set by"
        f" --database-url): Connect call failed ('127.0.0.1', {port})\n"
    )
    assert "hunter2" not in result.output


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:secret@h:5432/d", "postgresql://u:***@h:5432/d"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        ("postgresql://postgres:@/d?host=/tmp/x", "postgresql://postgres:@/d?host=/tmp/x"),
    ],
)
def test_redact_hides_only_the_password(dsn: str, shown: str) -> None:
    assert redact(dsn) == shown


@pytest.mark.slow
def test_without_a_database_url_the_cli_uses_the_embedded_server(tmp_path: Path) -> None:
    """The README quick start: no configuration at all, the embedded default."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env["DISPATCHER_STATE_DIR"] = str(tmp_path / "state")

    def dispatcher(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dispatcher", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    migrated = dispatcher("migrate")
    assert migrated.returncode == 0, migrated.stderr
    added = dispatcher(
        "webhooks", "add", "--name", "Z", "--url", "https://z.example/h", "--events", "a.b"
    )
    assert added.returncode == 0, added.stderr
    listed = dispatcher("webhooks", "list")
    assert listed.returncode == 0, listed.stderr
    assert "https://z.example/h" in listed.stdout
    # The last process to exit stopped the server it started.
    assert not (tmp_path / "state" / "pgdata" / "postmaster.pid").exists()
