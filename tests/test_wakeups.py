"""The daemon wakes for new work at once, not at its next poll: a NOTIFY from a publish or a
resend, a retry falling due, and a NOTIFY after its LISTEN connection was killed.

Every daemon here polls every 30 s and each wake-up must deliver within a few seconds, so a
broken wake-up path fails the test instead of hiding behind the poll.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import orjson
import pytest
from aiohttp import web

from dispatcher.store import QUERIES
from tests.conftest import (
    Cli,
    Receiver,
    add_webhook,
    daemon_process,
    eventually,
    fast_settings,
    publish,
    running,
)
from tests.test_lifecycle import read_log_until

POLL_S = 30.0
# A wake-up takes milliseconds; a missed one waits for the poll, six times this bound.
WITHIN_S = 5.0
RETRY_DELAY_S = 0.5
# From the failed attempt to its retry: the delay plus a wake-up, and far below the poll.
RETRY_WITHIN_S = 6.0
# The application_name of each of the daemon's connections, as operators see them.
LISTEN_APP = "webhook-dispatcher-listen"
LEASE_APP = "webhook-dispatcher-lease"
# A loop that leases again after a wake-up does so within milliseconds.
QUIET_S = 0.5

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(90),
    pytest.mark.parametrize("mode", ["in-process", "process"]),
]


@asynccontextmanager
async def slow_polling_daemon(
    mode: str, dsn: str, retry_schedule: tuple[float, ...] = ()
) -> AsyncIterator[None]:
    """Run a daemon that polls every POLL_S, in this loop or as `dispatcher run`; fail the test
    if it crashed or does not stop cleanly."""
    if mode == "in-process":
        settings = fast_settings(poll_interval_s=POLL_S, retry_schedule=retry_schedule)
        async with running(settings, dsn) as task:
            yield
            assert not task.done(), task
        return
    async with daemon_process(
        dsn,
        DISPATCHER_POLL_INTERVAL_S=str(POLL_S),
        DISPATCHER_RETRY_SCHEDULE=orjson.dumps(list(retry_schedule)).decode(),
    ) as proc:
        await read_log_until(proc, "daemon_started")
        yield
        assert proc.returncode is None, "the daemon exited during the test"
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0


async def idle_and_listening(db: asyncpg.Pool, replaced_listener: int = 0) -> int:
    """Wait until the daemon listens and its lease loop sits in its idle wait; return the pid of
    the listener's backend.

    Read from pg_stat_activity: the listener's connection has run its LISTEN (on a new backend,
    not `replaced_listener`), a lease that started after that LISTEN has finished, and no lease
    starts in the next QUIET_S. A lease that finds nothing is followed at once by another only
    when a wake-up came during it; otherwise the loop waits for a wake-up or its poll.
    """
    deadline = asyncio.get_running_loop().time() + 20
    seen: asyncpg.Record | None = None
    while True:
        row = await db.fetchrow(
            "SELECT l.pid, s.query_start"
            " FROM pg_stat_activity l JOIN pg_stat_activity s USING (datid)"
            " WHERE l.datname = current_database()"
            "   AND l.application_name = $1 AND l.pid <> $3"
            "   AND l.state = 'idle' AND l.query = 'LISTEN \"dispatcher_deliveries\"'"
            "   AND s.application_name = $2 AND s.state = 'idle'"
            "   AND s.query <> '' AND strpos($4, s.query) = 1"
            "   AND s.query_start > l.state_change",
            LISTEN_APP,
            LEASE_APP,
            replaced_listener,
            QUERIES["lease_batch"],
        )
        if row is not None and row == seen:
            return int(row["pid"])
        if asyncio.get_running_loop().time() > deadline:
            activity = await db.fetch(
                "SELECT application_name, state, query_start, state_change,"
                " left(query, 60) AS query"
                " FROM pg_stat_activity WHERE datname = current_database()"
            )
            pytest.fail(
                f"no listener (other than backend {replaced_listener or 'none'}) ran LISTEN"
                " followed by a lease and a quiet period; connections: "
                + repr([dict(r) for r in activity])
            )
        seen = row
        # Let time pass for the negative half: no new lease within QUIET_S of this one.
        await asyncio.sleep(QUIET_S if row is not None else 0.05)


async def arrives(receiver: Receiver, count: int, within_s: float, after: str) -> None:
    """Wait for request number `count`; fail naming the wake-up that did not happen."""
    try:
        await receiver.wait_for(count, within_s=within_s)
    except TimeoutError:
        pytest.fail(
            f"request {count} did not arrive within {within_s:g} s of {after}"
            f" (it has {len(receiver.requests)}); the daemon polls only every {POLL_S:g} s"
        )


async def fail_first(request: web.Request, rec: Receiver) -> web.StreamResponse:
    """Answer the first request with a 500 and every later one with a 200."""
    return web.Response(status=500 if len(rec.requests) == 1 else 200)


async def status_of(db: asyncpg.Pool, message_id: str) -> list[tuple[str, int]]:
    rows = await db.fetch(
        "SELECT status, attempts FROM dispatcher.deliveries WHERE message_id = $1 ORDER BY id",
        message_id,
    )
    return [(r["status"], r["attempts"]) for r in rows]


async def _is(db: asyncpg.Pool, message_id: str, expected: list[tuple[str, int]]) -> bool:
    return await status_of(db, message_id) == expected


async def test_a_published_event_wakes_an_idle_daemon(
    mode: str, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    await add_webhook(db, receiver.url, ["t.x"])
    async with slow_polling_daemon(mode, dsn):
        await idle_and_listening(db)
        await publish(db, "t.x", '{"n": 1}')
        await arrives(receiver, 1, WITHIN_S, "dispatcher.publish")
        # A plain INSERT fires the same trigger and NOTIFY.
        await db.execute("INSERT INTO dispatcher.events (event_type, payload) VALUES ('t.x', '{}')")
        await arrives(receiver, 2, WITHIN_S, "an INSERT INTO dispatcher.events")
    assert len(receiver.requests) == 2


async def test_a_retry_falling_due_wakes_the_daemon(
    mode: str, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    receiver.handler = fail_first
    await add_webhook(db, receiver.url, ["t.x"])
    async with slow_polling_daemon(mode, dsn, retry_schedule=(RETRY_DELAY_S,)):
        await idle_and_listening(db)
        message_id = await publish(db, "t.x")
        await arrives(receiver, 1, WITHIN_S, "the publish")
        # Nothing notifies here: the outcome writer, having stored a pending retry, wakes the
        # loop, which then sleeps only until the retry is due.
        await arrives(receiver, 2, RETRY_WITHIN_S, "the failed first attempt")
        await eventually(lambda: _is(db, message_id, [("succeeded", 2)]))
    assert len(receiver.requests) == 2


async def test_a_bulk_resend_wakes_an_idle_daemon(
    mode: str, db: asyncpg.Pool, dsn: str, receiver: Receiver, cli: Cli
) -> None:
    receiver.handler = fail_first
    await add_webhook(db, receiver.url, ["t.x"])
    async with slow_polling_daemon(mode, dsn):
        await idle_and_listening(db)
        message_id = await publish(db, "t.x")
        await arrives(receiver, 1, WITHIN_S, "the publish")
        await eventually(lambda: _is(db, message_id, [("failed", 1)]))
        await idle_and_listening(db)
        out = await cli.json("deliveries", "resend", "--since", "1h")
        assert out == {"matched": 1, "resent": 1, "dry_run": False}
        await arrives(receiver, 2, WITHIN_S, "`dispatcher deliveries resend`")
        await eventually(lambda: _is(db, message_id, [("failed", 1), ("succeeded", 1)]))


async def test_an_event_resend_wakes_an_idle_daemon(
    mode: str, db: asyncpg.Pool, dsn: str, receiver: Receiver, cli: Cli
) -> None:
    webhook_id, _ = await add_webhook(db, receiver.url, ["t.x"])
    async with slow_polling_daemon(mode, dsn):
        await idle_and_listening(db)
        message_id = await publish(db, "t.x")
        await arrives(receiver, 1, WITHIN_S, "the publish")
        await eventually(lambda: _is(db, message_id, [("succeeded", 1)]))
        await idle_and_listening(db)
        out = await cli.json("events", "resend", message_id)
        assert [r["webhook_id"] for r in out] == [webhook_id]
        await arrives(receiver, 2, WITHIN_S, "`dispatcher events resend`")
        await eventually(lambda: _is(db, message_id, [("succeeded", 1), ("succeeded", 1)]))
    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == message_id


async def test_the_daemon_listens_again_after_its_listen_connection_is_killed(
    mode: str, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    await add_webhook(db, receiver.url, ["t.x"])
    async with slow_polling_daemon(mode, dsn):
        listener = await idle_and_listening(db)
        assert await db.fetchval("SELECT pg_terminate_backend($1)", listener)
        await idle_and_listening(db, replaced_listener=listener)
        await publish(db, "t.x")
        await arrives(receiver, 1, WITHIN_S, "a publish after the listener reconnected")
