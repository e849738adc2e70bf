"""The embedded PostgreSQL is never orphaned: real processes, real crashes, a real server.

Each test gets its own state directory, so its own server; nothing here uses the suite's
database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from dispatcher.ops.embedded import EmbeddedServer
from tests.conftest import wait_until

pytestmark = pytest.mark.slow


class Project:
    """A state directory and the `dispatcher` processes started on it."""

    def __init__(self, root: Path) -> None:
        self.state = root / "state"
        self.pgdata = self.state / "pgdata"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
        self.env.update(
            DISPATCHER_STATE_DIR=str(self.state),
            DISPATCHER_ALLOWED_NETWORKS="127.0.0.0/8",
            DISPATCHER_LOG_FORMAT="json",
        )
        self.root = root
        self.daemons: list[subprocess.Popen[bytes]] = []

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dispatcher", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str) -> str:
        done = self.cli(*args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def daemon(self, name: str) -> subprocess.Popen[bytes]:
        with (self.root / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dispatcher", "run"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.daemons.append(proc)
        wait_until(lambda: b'"daemon_started"' in (self.root / f"{name}.log").read_bytes(), name)
        return proc

    def postgres_processes(self) -> list[int]:
        """PIDs of every process whose command line names this project's data directory."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(self.pgdata).encode() in cmdline:
                found.append(int(entry.name))
        return found

    def users(self) -> list[int]:
        """The PIDs `db status` lists as live users."""
        listed = self.ok("db", "status").split("used by:", 1)[1]
        return [int(line.split()[0]) for line in listed.splitlines()[1:]]

    def cleanup(self) -> None:
        for proc in self.daemons:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if self.postgres_processes():
            self.cli("db", "stop", "--force")


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    p = Project(tmp_path)
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A URL whose server accepts connections and never answers, so a request stays in flight."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    finally:
        sock.close()


def test_killed_and_double_interrupted_daemons_leave_no_server(
    project: Project, black_hole: str
) -> None:
    """kill -9 one daemon, double-SIGINT another, then one CLI command: no postgres remains."""
    project.ok("migrate")
    project.ok("webhooks", "add", "--name", "Keep", "--url", black_hole, "--events", "a.b")

    killed = project.daemon("killed")
    interrupted = project.daemon("interrupted")
    assert project.postgres_processes()
    assert project.users() == sorted([killed.pid, interrupted.pid])

    killed.send_signal(signal.SIGKILL)
    killed.wait(10)

    # An event in flight to a server that never answers keeps the first SIGINT's drain busy,
    # so the second SIGINT is the one that ends the process (os._exit).
    project.ok("events", "publish", "a.b", "--data", "{}")
    wait_until(lambda: _in_flight(project) == 1, "the event in flight")
    interrupted.send_signal(signal.SIGINT)
    wait_until(
        lambda: b'"stopping"' in (project.root / "interrupted.log").read_bytes(), "the drain"
    )
    interrupted.send_signal(signal.SIGINT)
    assert interrupted.wait(10) == 1
    assert b"second_signal_exiting_now" in (project.root / "interrupted.log").read_bytes()

    # The data is intact, and the command that used the server last stopped it.
    listed = project.ok("webhooks", "list")
    assert "Keep" in listed
    assert project.postgres_processes() == []
    assert "stopped" in project.ok("db", "status")


def _in_flight(project: Project) -> int:
    out = project.ok(
        "db",
        "psql",
        "--",
        "-Atc",
        "SELECT count(*) FROM dispatcher.deliveries WHERE lease_token IS NOT NULL",
    )
    return int(out.strip())


def test_a_server_whose_only_user_was_killed_is_stopped_by_the_next_command(
    project: Project,
) -> None:
    daemon = project.daemon("daemon")
    server_pids = project.postgres_processes()
    assert server_pids
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(10)
    # The crashed daemon's entry is still there, and no longer counts as a user.
    assert list((project.state / "users").iterdir())
    assert "no live process" in project.ok("db", "status")
    assert "running" in project.ok("db", "status")

    project.ok("webhooks", "list")

    assert project.postgres_processes() == []
    assert list((project.state / "users").iterdir()) == []


def test_the_server_outlives_a_command_while_another_process_uses_it(project: Project) -> None:
    project.ok("migrate")
    # A long query holds the server through `db psql`, a user for as long as psql runs.
    holder = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "db", "psql", "--", "-Atc", "SELECT pg_sleep(3), 7"],
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: holder.pid in project.users(), "psql to attach")
    project.ok("webhooks", "list")  # leaves while the holder still uses the server
    out, err = holder.communicate(timeout=30)
    assert holder.returncode == 0, err
    assert out.strip() == "|7"
    # The holder was the last user, so it stopped the server on its way out.
    assert project.postgres_processes() == []


def test_db_stop_refuses_under_a_live_daemon_unless_forced(project: Project) -> None:
    daemon = project.daemon("daemon")
    refused = project.cli("db", "stop")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: the embedded server is in use by ")
    assert str(daemon.pid) in refused.stderr
    assert project.postgres_processes()

    forced = project.cli("db", "stop", "--force")
    assert forced.returncode == 0, forced.stderr
    assert project.postgres_processes() == []
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(30)


def test_database_url_keeps_the_server_running_until_db_stop(project: Project) -> None:
    url = project.ok("database-url").strip()
    assert url.startswith("postgresql://postgres:@/dispatcher?host=")
    assert project.postgres_processes()
    # Another command coming and going does not stop a server someone asked a URL for.
    project.ok("webhooks", "list")
    assert project.postgres_processes()
    assert "keep running: yes" in project.ok("db", "status")

    assert project.ok("db", "stop").strip() == "The embedded server is stopped."
    assert project.postgres_processes() == []
    assert project.ok("db", "stop").strip() == "The embedded server was not running."


def test_a_server_asked_to_stop_without_waiting_is_started_again_once_it_has_stopped(
    project: Project,
) -> None:
    """detach_now (a second Ctrl-C) does not wait; the next process must not attach mid-shutdown."""
    first = EmbeddedServer(project.state)
    first.attach()
    first.detach_now()
    second = EmbeddedServer(project.state)
    dsn = second.attach()
    try:
        assert asyncio.run(_count_webhooks(dsn)) == 0
    finally:
        assert second.detach()
    assert project.postgres_processes() == []


async def _count_webhooks(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM dispatcher.webhooks"))
    finally:
        await conn.close()
