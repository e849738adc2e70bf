"""systemd notification: the sd_notify protocol on a real socket, then a real `dispatcher run`.

What the daemon sends is asserted as an order of lines, not as times: the test drops marks of
its own into the same socket ("MARK=..." when it takes a step, "LOG=..." when the code under
test logs an event the test cares about), and a datagram socket's queue is first in, first out,
so every line lands exactly between the steps it was sent between.
"""

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
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pytest
import structlog.testing

from dispatcher.ops import notify
from tests.test_lifecycle import daemon, read_log_until

CLOSED_PORT_DSN = "postgresql://u@127.0.0.1:1/x"


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's, recording what arrives."""

    def __init__(self, name: str, bind_to: str) -> None:
        self.name = name  # the value for $NOTIFY_SOCKET
        self._address = bind_to
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

    def mark(self, line: str) -> None:
        """Queue `line` now: behind everything sent to the socket before, ahead of the rest."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(line.encode(), self._address)

    def lines(self) -> list[str]:
        """Every line received so far, in the order the datagrams were queued."""
        return [line for _, fields in self.received for line in fields]

    def after(self, mark: str | None, until: str | None = None) -> list[str]:
        """The lines after the first `mark` (all lines if None), up to the first `until`."""
        lines = self.lines()
        if mark is not None:
            lines = lines[lines.index(mark) + 1 :] if mark in lines else []
        return lines[: lines.index(until)] if until in lines else lines

    def times_of(self, line: str) -> list[float]:
        """When each datagram holding `line` was read (by this process's clock)."""
        return [at for at, fields in self.received if line in fields]

    async def wait_for(
        self, line: str, within_s: float = 20.0, after: str | None = None, count: int = 1
    ) -> None:
        """Wait until `line` has arrived `count` times after the line `after` (if given)."""
        async with asyncio.timeout(within_s):
            while self.after(after).count(line) < count:
                self._arrived.clear()
                await self._arrived.wait()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self.sock.close()


@contextlib.contextmanager
def marking_logs(ns: NotifySocket, *events: str) -> Iterator[list[dict[str, Any]]]:
    """Capture structlog events, and queue "LOG=<event>" on `ns` as each of `events` is logged.

    The mark is sent inside the logging call, so it lands in order with the pings around it.
    """

    def mark(logger: object, method: str, event: MutableMapping[str, Any]) -> Any:
        if event.get("event") in events:
            ns.mark(f"LOG={event['event']}")
        return event

    with structlog.testing.capture_logs() as logs:
        # capture_logs keeps structlog's one list of processors; put ours ahead of its capture.
        structlog.get_config()["processors"].insert(0, mark)
        yield logs


WATCHDOG_LOGS = ("watchdog_withheld", "watchdog_resumed")


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
    # A negative check: notify() sends synchronously, so a datagram would already be queued.
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
    with marking_logs(path_socket, *WATCHDOG_LOGS):
        task = asyncio.create_task(notify.keep_alive(timedelta(seconds=period), probe))
        try:
            async with asyncio.timeout(60):
                await path_socket.wait_for("WATCHDOG=1", count=3)
                answering.clear()
                path_socket.mark("MARK=wedged")
                await path_socket.wait_for("LOG=watchdog_withheld", after="MARK=wedged")
                # A negative check: 20 intervals in which nothing may be sent.
                await asyncio.sleep(20 * period)
                path_socket.mark("MARK=answering")
                answering.set()
                await path_socket.wait_for("WATCHDOG=1", after="LOG=watchdog_resumed")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await path_socket.close()

    assert path_socket.after(None, until="MARK=wedged").count("WATCHDOG=1") >= 3
    # Withheld once, not once per interval; then silent until the probe answered again.
    assert path_socket.lines().count("LOG=watchdog_withheld") == 1
    withheld = path_socket.after("LOG=watchdog_withheld", until="LOG=watchdog_resumed")
    assert withheld == ["MARK=answering"]
    assert path_socket.after("LOG=watchdog_resumed")[0] == "WATCHDOG=1"


@pytest.mark.slow
async def test_keep_alive_pings_on_the_beat_and_forgives_one_hung_probe(
    path_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ping once per interval, even while a probe hangs; stop when it has hung two intervals.

    A probe that fails fast (the database refused) is an answer too: the silence counts from
    it. systemd kills the service when no ping comes within WatchdogSec, two intervals. The one
    test here where the time between pings is the point, so the interval is long (1 s): a
    scheduling delay would have to reach half of it to change the outcome.
    """
    monkeypatch.setenv("NOTIFY_SOCKET", path_socket.name)
    path_socket.start_reading()
    released = asyncio.Event()
    calls = 0

    async def probe() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionRefusedError("database restarting")
        if calls == 3:
            path_socket.mark("MARK=probe 3 hangs")
            await released.wait()

    period = 1.0
    with marking_logs(path_socket, *WATCHDOG_LOGS):
        task = asyncio.create_task(notify.keep_alive(timedelta(seconds=period), probe))
        try:
            async with asyncio.timeout(60):
                await path_socket.wait_for("LOG=watchdog_withheld", within_s=30)
                path_socket.mark("MARK=released")
                released.set()
                await path_socket.wait_for("WATCHDOG=1", after="LOG=watchdog_resumed")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await path_socket.close()

    assert path_socket.lines()[:10] == [
        "WATCHDOG=1",  # probe 1 answered
        "STATUS=database unreachable: ConnectionRefusedError; reconnecting",
        "WATCHDOG=1",  # probe 2 failed fast
        "MARK=probe 3 hangs",
        "WATCHDOG=1",  # hung for one interval (two since probe 2's answer): forgiven
        "LOG=watchdog_withheld",  # hung for two: wedged
        "MARK=released",
        "STATUS=delivering",
        "LOG=watchdog_resumed",
        "WATCHDOG=1",
    ]
    # The forgiven ping keeps the beat too: with half an interval to spare, never near the two
    # intervals after which systemd would kill the service.
    pings = path_socket.times_of("WATCHDOG=1")[:3]
    assert max(b - a for a, b in itertools.pairwise(pings)) < 1.5 * period, pings


async def test_keep_alive_pings_for_an_answer_even_if_the_loop_stalls_after_it(
    path_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe that answered vouches for its interval: a stall on the way to the beat (here
    the loop blocked for four intervals, half an interval after probe 2 answered) withholds
    nothing."""
    monkeypatch.setenv("NOTIFY_SOCKET", path_socket.name)
    path_socket.start_reading()
    period = 0.05
    calls = 0

    async def probe() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            asyncio.get_running_loop().call_later(period / 2, time.sleep, 4 * period)

    with marking_logs(path_socket, *WATCHDOG_LOGS):
        task = asyncio.create_task(notify.keep_alive(timedelta(seconds=period), probe))
        try:
            async with asyncio.timeout(60):
                await path_socket.wait_for("WATCHDOG=1", count=4)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await path_socket.close()
    assert path_socket.lines()[:4] == ["WATCHDOG=1"] * 4


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
        async with asyncio.timeout(30):
            with pytest.raises(RuntimeError):
                await notify.keep_alive(timedelta(seconds=0.02), probe, (OSError,))
            # The task has ended: whatever it sent is queued ahead of this mark.
            path_socket.mark("MARK=ended")
            await path_socket.wait_for("MARK=ended")
    finally:
        await path_socket.close()
    # Calls 1, 2 (forgiven, and said so), 3 and 4 pinged; the bug ended the task before a ping.
    assert path_socket.lines() == [
        "WATCHDOG=1",
        "STATUS=database unreachable: ConnectionRefusedError; reconnecting",
        "WATCHDOG=1",
        "STATUS=delivering",
        "WATCHDOG=1",
        "WATCHDOG=1",
        "MARK=ended",
    ]


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

    unreachable = "STATUS=database unreachable: ConnectionRefusedError; reconnecting"
    period = 0.03
    task = asyncio.create_task(notify.keep_alive(timedelta(seconds=period), probe, (OSError,)))
    try:
        async with asyncio.timeout(60):
            await path_socket.wait_for("WATCHDOG=1", after=unreachable, count=6)
            path_socket.mark("MARK=back")
            down.clear()
            await path_socket.wait_for("STATUS=delivering", after="MARK=back")
            await path_socket.wait_for("WATCHDOG=1", after="STATUS=delivering")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await path_socket.close()
    # Down the whole time before the mark: every ping there came with the outage status.
    assert "STATUS=delivering" not in path_socket.after(None, until="MARK=back")


# -- a real `dispatcher run` ----------------------------------------------------------------

WATCHDOG_USEC = 1_000_000  # systemd would expect a ping every 1 s; the daemon sends every 0.5 s


def systemd_env(ns: NotifySocket) -> dict[str, str]:
    return {"NOTIFY_SOCKET": ns.name, "WATCHDOG_USEC": str(WATCHDOG_USEC)}


@pytest.mark.slow
async def test_run_notifies_ready_then_watchdog_then_stopping(
    dsn: str, path_socket: NotifySocket
) -> None:
    path_socket.start_reading()
    try:
        async with daemon(dsn, **systemd_env(path_socket)) as proc:
            await read_log_until(proc, "daemon_started")
            await path_socket.wait_for("READY=1")
            await path_socket.wait_for("WATCHDOG=1", after="READY=1", count=3)
            assert "STOPPING=1" not in path_socket.lines()

            path_socket.mark("MARK=signalled")
            proc.send_signal(signal.SIGTERM)
            await path_socket.wait_for("STOPPING=1", after="MARK=signalled")
            async with asyncio.timeout(30):
                assert await proc.wait() == 0
            path_socket.mark("MARK=exited")
            await path_socket.wait_for("MARK=exited")
    finally:
        await path_socket.close()
    lines = path_socket.lines()
    # READY once, before the first ping; STOPPING once, and after it nothing but pings until
    # the side tasks stop (no second READY, no STATUS saying it delivers again).
    assert lines.count("READY=1") == 1
    assert lines.index("READY=1") < lines.index("WATCHDOG=1")
    assert lines.count("STOPPING=1") == 1
    stopped = path_socket.after("STOPPING=1", until="MARK=exited")
    assert stopped[0] == "STATUS=draining in-flight attempts"
    assert set(stopped[1:]) <= {"WATCHDOG=1"}, stopped


@pytest.mark.slow
async def test_run_without_a_database_retries_and_never_reports_ready(
    path_socket: NotifySocket,
) -> None:
    path_socket.start_reading()
    try:
        async with daemon(CLOSED_PORT_DSN, **systemd_env(path_socket)) as proc:
            await read_log_until(proc, "database_unavailable")
            await path_socket.wait_for("STATUS=waiting for the database")
            # It keeps retrying (the retries wait 0.25 s, then 0.5 s, ...).
            await read_log_until(proc, "database_unavailable")
            await read_log_until(proc, "database_unavailable")
            assert proc.returncode is None

            proc.send_signal(signal.SIGTERM)
            await path_socket.wait_for("STOPPING=1")
            async with asyncio.timeout(30):
                assert await proc.wait() == 0
            path_socket.mark("MARK=exited")
            await path_socket.wait_for("MARK=exited")
    finally:
        await path_socket.close()
    # Over its whole life: never ready, so never a ping either.
    lines = path_socket.lines()
    assert "READY=1" not in lines
    assert "WATCHDOG=1" not in lines


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
            await path_socket.wait_for("READY=1")
            await path_socket.wait_for("WATCHDOG=1", after="READY=1")

            proxy.freeze()
            # Probes start every 0.5 s; after 1.25 s without an answer the pings stop. The log
            # line is written after the last ping, so every ping comes before this mark.
            await read_log_until(proc, "watchdog_withheld")
            path_socket.mark("MARK=withheld")
            # A negative check: three intervals in which no ping may come.
            await asyncio.sleep(1.5)

            path_socket.mark("MARK=thawed")
            proxy.thaw()
            await read_log_until(proc, "watchdog_resumed")
            await path_socket.wait_for("WATCHDOG=1", after="MARK=thawed")

            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await proc.wait() == 0
    finally:
        await path_socket.close()
    assert path_socket.after("MARK=withheld", until="MARK=thawed") == []
