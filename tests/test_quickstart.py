"""The README's quick start, run as written: three terminals, a fresh directory, real processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import reserved_port, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- quickstart: terminal (\d) -->\n```sh\n(.*?)```", re.S)


def terminals() -> dict[int, str]:
    """The shell blocks the README marks as quick-start terminals, by number."""
    return {int(n): body for n, body in MARKER.findall((ROOT / "README.md").read_text())}


@pytest.fixture
def console_port() -> Iterator[int]:
    """A second held port, as server_port is: the console's."""
    with reserved_port() as port:
        yield port


MAKE_RUN = "dispatcher run --web --first-run-token"


def test_makefile_run_is_the_daemon_and_the_console() -> None:
    """The quick start's `make run` is replaced below by the command the Makefile runs."""
    assert f"run: $(STAMP)\n\t$(BIN)/{MAKE_RUN}\n" in (ROOT / "Makefile").read_text()


def test_the_readme_quick_start_delivers_a_verified_request(
    tmp_path: Path, server_port: int, console_port: int
) -> None:
    blocks = terminals()
    assert sorted(blocks) == [1, 2, 3]
    # A checkout as a new user has it: the config files, and the venv `make` built.
    (tmp_path / "config").symlink_to(ROOT / "config")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    # 9000 and 8080 may be taken on a shared machine: ports held for the receiver and the
    # console until the test ends. The receiver cannot pick its own (port 0): the webhook's URL
    # names its port before it starts.
    port, web_port = str(server_port), str(console_port)
    make_run = f".venv/bin/{MAKE_RUN} --listen 127.0.0.1:{web_port}"
    scripts = {
        n: body.replace("make run", make_run).replace("9000", port) for n, body in blocks.items()
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    logs = {n: tmp_path / f"terminal-{n}.log" for n in blocks}

    def terminal(n: int) -> subprocess.Popen[bytes]:
        with logs[n].open("wb") as out:
            # A session of its own, so Ctrl-C can go to the whole "terminal", as a shell does.
            return subprocess.Popen(
                ["bash", "-euc", scripts[n]],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(n: int) -> str:
        return logs[n].read_text(errors="replace")

    running = []
    try:
        running.append(daemon := terminal(1))
        wait_until(lambda: "daemon_started" in log(1), "the daemon")
        running.append(receiver := terminal(2))
        wait_until(lambda: "listening on" in log(2), "the receiver")

        publish = terminal(3)
        assert publish.wait(60) == 0, log(3)
        assert "INSERT 0 1" in log(3)

        wait_until(lambda: "signature: verified" in log(2), "the delivery")
        assert "POST /hook" in log(2)
        assert '"type": "customer.updated"' in log(2)
        assert "answered 200" in log(2)

        # The token `make run` printed signs in to the console and the API it serves.
        token = re.search(r"^  (dwt_\S+)$", log(1), re.MULTILINE)
        assert token, log(1)
        assert f"console: http://127.0.0.1:{web_port}/" in log(1)
        request = urllib.request.Request(
            f"http://127.0.0.1:{web_port}/api/v1/webhooks",
            headers={"Authorization": f"Bearer {token[1]}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert b"127.0.0.1:" + port.encode() + b"/hook" in response.read()

        # Ctrl-C in terminals 2 and 1 ends everything, the embedded server included.
        for proc in (receiver, daemon):
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(30) == 0, log(1) + log(2)
        assert not (tmp_path / ".dispatcher" / "pgdata" / "postmaster.pid").exists()
    finally:
        for proc in running:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        subprocess.run(
            [sys.executable, "-m", "dispatcher", "db", "stop", "--force"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=60,
        )
