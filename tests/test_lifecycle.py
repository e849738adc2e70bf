"""`dispatcher run` as a real process: real signals, bounded waits."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import asyncpg
import orjson
import pytest
from aiohttp import web

from tests.conftest import Receiver, add_webhook, daemon_process

pytestmark = pytest.mark.slow


def daemon(dsn: str, **env: str) -> AbstractAsyncContextManager[asyncio.subprocess.Process]:
    """`dispatcher run` with its log on stdout and no retries unless asked."""
    return daemon_process(dsn, **{"DISPATCHER_RETRY_SCHEDULE": "[]", **env})


async def read_log_until(
    proc: asyncio.subprocess.Process, event: str, within_s: float = 20.0
) -> dict[str, object]:
    assert proc.stdout is not None
    async with asyncio.timeout(within_s):
        while True:
            line = await proc.stdout.readline()
            assert line, f"process exited before logging {event}"
            if line.startswith(b"{"):
                entry = orjson.loads(line)
                if entry.get("event") == event:
                    return entry


def holding(release: asyncio.Event) -> Callable[[web.Request, Receiver], object]:
    async def handler(request: web.Request, rec: Receiver) -> web.Response:
        await release.wait()
        return web.Response(text="done")

    return handler


async def test_sigterm_drains_in_flight_attempts_and_exits_zero(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    release = asyncio.Event()
    receiver.handler = holding(release)  # type: ignore[assignment]
    await add_webhook(db, receiver.url, ["t.x"])
    async with daemon(dsn, DISPATCHER_SHUTDOWN_GRACE_S="10") as proc:
        await read_log_until(proc, "daemon_started")
        await db.execute(
            "INSERT INTO dispatcher.events (event_type, payload)"
            " SELECT 't.x', '{}' FROM generate_series(1, 5)"
        )
        await receiver.wait_for(5)
        proc.send_signal(signal.SIGTERM)
        await read_log_until(proc, "draining")
        # Nothing new is leased after the signal. A negative check: a second (five polls) in
        # which a daemon still leasing would take the new row; nothing to wait for otherwise.
        await db.execute("SELECT dispatcher.publish('t.x', '{}')")
        await asyncio.sleep(1)
        release.set()
        async with asyncio.timeout(15):
            assert await proc.wait() == 0

    assert len(receiver.requests) == 5
    counts = dict(
        await db.fetch("SELECT status, count(*) FROM dispatcher.deliveries GROUP BY status")
    )
    assert counts == {"succeeded": 5, "pending": 1}
    assert (
        await db.fetchval(
            "SELECT count(*) FROM dispatcher.deliveries WHERE lease_token IS NOT NULL"
        )
        == 0
    )


async def test_attempts_past_the_grace_period_are_released_not_lost(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    release = asyncio.Event()
    receiver.handler = holding(release)  # type: ignore[assignment]
    await add_webhook(db, receiver.url, ["t.x"])
    async with daemon(dsn, DISPATCHER_SHUTDOWN_GRACE_S="0.5") as proc:
        await read_log_until(proc, "daemon_started")
        await db.execute("SELECT dispatcher.publish('t.x', '{}')")
        await receiver.wait_for(1)
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
    release.set()

    row = await db.fetchrow(
        "SELECT status, attempts, lease_token, run_at <= now() AS due FROM dispatcher.deliveries"
    )
    # Handed back at once for the next process: due now, lease cleared, attempt not counted.
    assert dict(row) == {"status": "pending", "attempts": 0, "lease_token": None, "due": True}


async def test_second_signal_exits_at_once(db: asyncpg.Pool, dsn: str, receiver: Receiver) -> None:
    release = asyncio.Event()
    receiver.handler = holding(release)  # type: ignore[assignment]
    await add_webhook(db, receiver.url, ["t.x"])
    async with daemon(dsn, DISPATCHER_SHUTDOWN_GRACE_S="30") as proc:
        await read_log_until(proc, "daemon_started")
        await db.execute("SELECT dispatcher.publish('t.x', '{}')")
        await receiver.wait_for(1)
        proc.send_signal(signal.SIGTERM)
        await read_log_until(proc, "draining")
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            assert await proc.wait() == 1
    release.set()


async def test_invalid_config_stops_startup_with_one_line_naming_the_key(dsn: str) -> None:
    async with daemon(dsn, DISPATCHER_MAX_IN_FLIGHT="lots") as proc:
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            out = await proc.stdout.read()
            assert await proc.wait() == 1
    lines = out.decode().strip().splitlines()
    assert lines == ["error: invalid value for max_in_flight: 'lots' is not a valid int"]
