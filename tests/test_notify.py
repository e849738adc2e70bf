"""systemd notification: the sd_notify protocol on a real socket, then a real `dispatcher run`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pytest

from dispatcher.ops import notify
from tests.test_lifecycle import daemon, read_log_until

CLOSED_PORT_DSN = "postgresql://u@127.0.0.1:1/x"


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's, recording what arrives."""

    def __init__(self, name: str, bind_to: str) -> None:
        self.name = name  # the value for $NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.received: list[tuple[float, list[str]]] = []
        self._arrived = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    def recv(self, within_s: float = 2.0) -> list[str]:
        """Read one datagram, blocking (for the synchronous unit tests)."""
        self.sock.settimeout(within_s)
        return self.sock.recv(4096).decode().split("\n")

    def start_reading(self) -> None:
        self.sock.setblocking(False)
        self._reader = asyncio.create_task(self._read(), name="notify-socket-reader")

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            self.received.append((time.monotonic(), data.decode().split("\n")))
            self._arrived.set()

    def times_of(self, field: str, since: float = 0.0) -> list[float]:
        return [at for at, fields in self.received if field in fields and at >= since]

    async def wait_for(self, field: str, within_s: float, since: float = 0.0) -> float:
        """Return when a datagram holding the line `field` arrived (at or after `since`)."""
        async with asyncio.timeout(within_s):
            while not self.times_of(field, since):
                self._arrived.clear()
                await self._arrived.wait()
        return self.times_of(field, since)[0]

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self.sock.close()


@pytest.fixture
def path_socket() -> Iterator[NotifySocket]:
    # A short directory of our own: socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="notify-") as tmp:
        path = str(Path(tmp) / "notify.sock")
        ns = NotifySocket(path, path)
        yield ns
        ns.sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[NotifySocket]:
    name = f"dispatcher-test-{uuid.uuid4().hex}"
    ns = NotifySocket("@" + name, "\0" + name)
    yield ns
    ns.sock.close()


# -- the protocol ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        (notify.ready, ["READY=1", "STATUS=delivering"]),
        (notify.stopping, ["STOPPING=1", "STATUS=draining in-flight attempts"]),
        (notify.watchdog, ["WATCHDOG=1"]),
        (lambda: notify.status("waiting for\nthe database"), ["STATUS=waiting for the database"]),
    ],
)
def test_each_message_is_one_datagram_on_a_path_socket(
    path_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch, send: object, expected: list[str]
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_socket.name)
    assert send() is True  # type: ignore[operator]
    assert path_socket.recv() == expected


def test_an_at_sign_names_an_abstract_socket(
    abstract_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", abstract_socket.name)
    assert notify.ready() is True
    assert abstract_socket.recv() == ["READY=1", "STATUS=delivering"]


def test_without_notify_socket_nothing_is_sent(
    path_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False
    assert notify.notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False
    with pytest.raises(TimeoutError):
        path_socket.recv(within_s=0.1)


@pytest.mark.parametrize("target", ["/nonexistent/notify.sock", "@no-such-abstract-socket", "x"])
def test_an_unreachable_socket_is_reported_not_raised(target: str) -> None:
    assert notify.notify("READY=1", environ={"NOTIFY_SOCKET": target}) is False


SELF, OTHER = "<this pid>", "<another pid>"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, timedelta(seconds=15)),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": SELF}, timedelta(seconds=0.5)),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": OTHER}, None),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "", "WATCHDOG_PID": SELF}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: timedelta | None) -> None:
    pids = {SELF: str(os.getpid()), OTHER: str(os.getpid() + 1)}
    env = {k: pids.get(v, v) for k, v in env.items()}
    assert notify.watchdog_interval(env) == expected


async def test_keep_alive_pings_only_while_the_probe_answers(
    path_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_socket.name)
    path_socket.start_reading()
    answering = asyncio.Event()
    answering.set()

    async def probe() -> None:
        await answering.wait()  # a wedged pool: the round trip never completes

    period = 0.05
    task = asyncio.create_task(notify.keep_alive(timedelta(seconds=period), probe))
    try:
        async with asyncio.timeout(10):
            await path_socket.wait_for("WATCHDOG=1", within_s=1)
            healthy_until = time.monotonic()
            await asyncio.sleep(5 * period)
            assert len(path_socket.times_of("WATCHDOG=1")) >= 4

            answering.clear()
            wedged_at = time.monotonic()
            # One hung probe is forgiven; after 2.5 intervals of silence the pings stop.
            await asyncio.sleep(8 * period)
            late = path_socket.times_of("WATCHDOG=1", since=wedged_at + 4 * period)
            assert late == [], "pinged while the database had not answered for 4 intervals"
            assert path_socket.times_of("WATCHDOG=1", since=healthy_until)

            answering.set()
            resumed_at = time.monotonic()
            await path_socket.wait_for("WATCHDOG=1", within_s=4 * period, since=resumed_at)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await path_socket.close()


async def test_keep_alive_forgives_listed_failures_and_dies_on_others(
    path_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_socket.name)
    path_socket.start_reading()
    calls = 0

    async def probe() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionRefusedError("database restarting")
        if calls == 5:
            raise RuntimeError("a bug, not an outage")

    try:
        async with asyncio.timeout(5):
            with pytest.raises(RuntimeError):
                await notify.keep_alive(timedelta(seconds=0.02), probe, (OSError,))
        # Calls 1, 2 (forgiven), 3 and 4 pinged; the bug ended the task before a fifth ping.
        await path_socket.wait_for("WATCHDOG=1", within_s=1)
        await asyncio.sleep(0.05)
        assert len(path_socket.times_of("WATCHDOG=1")) == 4
    finally:
        await path_socket.close()


async def test_keep_alive_keeps_pinging_through_an_outage_and_says_so(
    path_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that refuses fast is down, not wedged: keep running, report it in STATUS=."""
    monkeypatch.setenv("NOTIFY_SOCKET", path_socket.name)
    path_socket.start_reading()
    down = asyncio.Event()
    down.set()

    async def probe() -> None:
        if down.is_set():
            raise ConnectionRefusedError("connection refused")

    period = 0.03
    task = asyncio.create_task(notify.keep_alive(timedelta(seconds=period), probe, (OSError,)))
    try:
        async with asyncio.timeout(10):
            await path_socket.wait_for(
                "STATUS=database unreachable: ConnectionRefusedError; reconnecting", within_s=1
            )
            start = time.monotonic()
            await asyncio.sleep(10 * period)
            assert len(path_socket.times_of("WATCHDOG=1", since=start)) >= 6
            down.clear()
            await path_socket.wait_for("STATUS=delivering", within_s=1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await path_socket.close()


# -- a real `dispatcher run` ----------------------------------------------------------------

WATCHDOG_USEC = 1_000_000  # systemd would expect a ping every 1 s; the daemon sends every 0.5 s


def systemd_env(ns: NotifySocket) -> dict[str, str]:
    return {"NOTIFY_SOCKET": ns.name, "WATCHDOG_USEC": str(WATCHDOG_USEC)}


def largest_gap(times: list[float]) -> float:
    return max(b - a for a, b in itertools.pairwise(times))


@pytest.mark.slow
async def test_run_notifies_ready_then_watchdog_then_stopping(
    dsn: str, path_socket: NotifySocket
) -> None:
    path_socket.start_reading()
    try:
        async with daemon(dsn, **systemd_env(path_socket)) as proc:
            await read_log_until(proc, "daemon_started")
            ready_at = await path_socket.wait_for("READY=1", within_s=10)
            assert not path_socket.times_of("STOPPING=1")

            await asyncio.sleep(3)
            pings = path_socket.times_of("WATCHDOG=1", since=ready_at - 0.1)
            assert len(pings) >= 5
            assert pings[0] - ready_at < 0.6
            assert largest_gap([ready_at, *pings, time.monotonic()]) < 0.6 + 0.15

            signalled_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            await path_socket.wait_for("STOPPING=1", within_s=5, since=signalled_at)
            async with asyncio.timeout(15):
                assert await proc.wait() == 0
    finally:
        await path_socket.close()
    assert [fields for _, fields in path_socket.received].count(
        ["READY=1", "STATUS=delivering"]
    ) == 1


@pytest.mark.slow
async def test_run_without_a_database_retries_and_never_reports_ready(
    path_socket: NotifySocket,
) -> None:
    path_socket.start_reading()
    try:
        async with daemon(CLOSED_PORT_DSN, **systemd_env(path_socket)) as proc:
            await read_log_until(proc, "database_unavailable")
            await path_socket.wait_for("STATUS=waiting for the database", within_s=5)
            await read_log_until(proc, "database_unavailable")  # it keeps retrying
            await asyncio.sleep(1)
            assert proc.returncode is None
            assert not path_socket.times_of("READY=1")
            assert not path_socket.times_of("WATCHDOG=1")

            proc.send_signal(signal.SIGTERM)
            await path_socket.wait_for("STOPPING=1", within_s=5)
            async with asyncio.timeout(10):
                assert await proc.wait() == 0
    finally:
        await path_socket.close()
    assert not path_socket.times_of("READY=1")


class FreezableProxy:
    """A TCP proxy to PostgreSQL that can stop forwarding, leaving every connection open: the
    daemon's pool is then wedged, not refused."""

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        self._dsn = parts
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        port = parts.port or 5432
        self._unix_path = f"{socket_dir}/.s.PGSQL.{port}" if socket_dir.startswith("/") else None
        self._target = (parts.hostname or "127.0.0.1", port)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def start(self) -> str:
        """Listen on 127.0.0.1 and return the DSN that goes through the proxy."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        userinfo = self._dsn.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
        return urlunsplit(self._dsn._replace(netloc=netloc, query=""))

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._unix_path:
            server_r, server_w = await asyncio.open_unix_connection(self._unix_path)
        else:
            server_r, server_w = await asyncio.open_connection(*self._target)
        for reader, writer in ((client_r, server_w), (server_r, client_w)):
            pump = asyncio.create_task(self._pump(reader, writer))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)


@asynccontextmanager
async def proxied(dsn: str) -> AsyncIterator[tuple[FreezableProxy, str]]:
    proxy = FreezableProxy(dsn)
    try:
        yield proxy, await proxy.start()
    finally:
        await proxy.close()


@pytest.mark.slow
async def test_run_stops_pinging_while_the_database_is_wedged(
    dsn: str, path_socket: NotifySocket
) -> None:
    path_socket.start_reading()
    try:
        async with (
            proxied(dsn) as (proxy, proxied_dsn),
            daemon(proxied_dsn, **systemd_env(path_socket)) as proc,
        ):
            ready_at = await path_socket.wait_for("READY=1", within_s=15)
            await path_socket.wait_for("WATCHDOG=1", within_s=2, since=ready_at)

            proxy.freeze()
            frozen_at = time.monotonic()
            # Probes start every 0.5 s; after 1.25 s without an answer the pings stop.
            await read_log_until(proc, "watchdog_withheld", within_s=5)
            await asyncio.sleep(1.5)
            assert not path_socket.times_of("WATCHDOG=1", since=frozen_at + 2.0)

            proxy.thaw()
            thawed_at = time.monotonic()
            await path_socket.wait_for("WATCHDOG=1", within_s=10, since=thawed_at)

            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                assert await proc.wait() == 0
    finally:
        await path_socket.close()
