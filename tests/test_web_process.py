"""`dispatcher web` and `dispatcher run --web` as real processes: start, sign-in hint, stop."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import asyncpg
import pytest

from dispatcher.manage.tokens import authenticate_token
from tests.conftest import refused_port

pytestmark = pytest.mark.slow


@asynccontextmanager
async def started(dsn: str, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")},
        "DISPATCHER_DATABASE_URL": dsn,
        "DISPATCHER_LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def read_until(proc: asyncio.subprocess.Process, marker: str) -> str:
    """Read the process's output until a line holds `marker`; return everything read."""
    assert proc.stdout is not None
    seen = ""
    async with asyncio.timeout(30):
        while marker not in seen:
            line = await proc.stdout.readline()
            assert line, f"exited before {marker!r}:\n{seen}"
            seen += line.decode()
    return seen


async def test_web_prints_a_first_run_token_once_and_stops_on_sigterm(
    dsn: str, db: asyncpg.Pool, server_port: int
) -> None:
    # The port stays held between the two starts: no one else can take it in between.
    port = server_port
    args = ("web", "--listen", f"127.0.0.1:{port}", "--first-run-token")
    async with started(dsn, *args) as proc:
        out = await read_until(proc, "web_listening")
        assert f"console: http://127.0.0.1:{port}/" in out
        token = re.search(r"^  (dwt_\S+)$", out, re.MULTILINE)
        assert token, out
        async with db.acquire() as conn:
            who = await authenticate_token(conn, token[1])
        assert who is not None and who.name == "first run" and not who.read_only
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/healthz") as health,
        ):
            assert health.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0

    # A token exists now: the next start says how to sign in, and creates none.
    async with started(dsn, *args) as proc:
        out = await read_until(proc, "web_listening")
        assert "dwt_" not in out
        assert "sign in with a token from `dispatcher tokens create" in out
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert await db.fetchval("SELECT count(*) FROM dispatcher.api_tokens") == 1


async def test_without_first_run_token_it_says_how_to_make_one(dsn: str, server_port: int) -> None:
    async with started(dsn, "web", "--listen", f"127.0.0.1:{server_port}") as proc:
        out = await read_until(proc, "web_listening")
        assert "no token exists yet" in out and "dispatcher tokens create --name NAME" in out
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_a_taken_port_is_one_line_and_exit_1(dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with started(dsn, "web", "--listen", f"127.0.0.1:{port}") as proc:
            assert proc.stdout is not None
            out = (await asyncio.wait_for(proc.stdout.read(), 30)).decode()
            assert await proc.wait() == 1
    assert f"error: cannot serve the console on 127.0.0.1:{port}" in out
    assert "Traceback" not in out


async def test_run_with_web_serves_both_and_one_sigint_stops_both(
    dsn: str, db: asyncpg.Pool, server_port: int
) -> None:
    port = server_port
    async with started(dsn, "run", "--web", "--listen", f"127.0.0.1:{port}") as proc:
        out = await read_until(proc, "daemon_started")
        if "web_listening" not in out:
            out += await read_until(proc, "web_listening")
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/api/v1/webhooks") as refused,
        ):
            assert refused.status == 401
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert await db.fetchval("SELECT count(*) FROM dispatcher.api_tokens") == 0


async def test_web_waits_for_a_database_that_is_not_up_yet(dsn: str, server_port: int) -> None:
    """Under systemd at boot the database may start later: the console must not exit."""
    with refused_port() as nothing:
        down = f"postgresql://postgres@127.0.0.1:{nothing}/postgres"
        async with started(down, "web", "--listen", f"127.0.0.1:{server_port}") as proc:
            out = await read_until(proc, "database_unavailable")
            assert "the console waits for the database" in out
            assert proc.returncode is None
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
