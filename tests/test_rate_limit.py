"""The per-webhook rate limit: a token bucket in the database that every instance shares. Rows
wait, due and unleased, until a token is free; counts are asserted over a window (as an upper
bound, which a slow machine cannot break), never the timing of single requests."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import asyncpg
import pytest

from tests.conftest import Receiver, add_webhook, fast_settings, running
from tests.health_support import health, publish_many, statuses

RATE = 5.0
WINDOW_S = 4.0


async def limited_webhook(db: asyncpg.Pool, receiver: Receiver, events: int) -> int:
    wid, _ = await add_webhook(db, receiver.url, ["t.x"])
    await db.execute("UPDATE dispatcher.webhooks SET rate_limit = $2 WHERE id = $1", wid, RATE)
    await publish_many(db, events)
    return wid


async def measure(
    db: asyncpg.Pool, receiver: Receiver, webhook_id: int, started: float
) -> tuple[int, int]:
    """Watch the window that starts when the daemon does, until a request arrives after it (or
    it is long past, if nothing flows any more).

    Return the requests inside the window and the most rows ever leased at once. Every request
    is sent after the window starts, so the bucket bounds the count whatever the delays.
    """
    end = started + WINDOW_S
    most_leased = 0
    async with asyncio.timeout(WINDOW_S + 30):
        while not (receiver.requests and receiver.requests[-1].at >= end) and (
            time.monotonic() < end + 2
        ):
            most_leased = max(
                most_leased,
                await db.fetchval(
                    "SELECT count(*) FROM dispatcher.deliveries"
                    " WHERE webhook_id = $1 AND lease_token IS NOT NULL",
                    webhook_id,
                ),
            )
            await asyncio.sleep(0.05)
    return sum(1 for r in receiver.requests if r.at < end), most_leased


def assert_limited(in_window: int, most_leased: int) -> None:
    # A full bucket (capacity RATE) at the start, then RATE a second; one request of slack.
    # A slow machine only lowers the count.
    assert in_window <= RATE + RATE * WINDOW_S + 1, in_window
    # Rows are leased only against tokens, never leased and parked until one is free.
    assert most_leased <= RATE + 1, most_leased


async def tokens_come_back(receiver: Receiver) -> None:
    """Wait for twice the first bucket: tokens come back and the rows keep flowing."""
    await receiver.wait_for(int(2 * RATE) + 1, within_s=30)


@pytest.mark.slow
async def test_rate_limit_caps_requests_in_a_window_and_rows_wait_unleased(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    wid = await limited_webhook(db, receiver, 200)

    started = time.monotonic()
    async with running(fast_settings(), dsn):
        in_window, most_leased = await measure(db, receiver, wid, started)
        await tokens_come_back(receiver)
        state = await health(db, wid)

    assert_limited(in_window, most_leased)
    assert state["rate_limit"] == RATE
    assert state["throttled_at"] is not None
    # Nothing was attempted twice, and what is left was never leased.
    assert await db.fetchval("SELECT max(attempts) FROM dispatcher.deliveries") == 1
    assert (
        await db.fetchval(
            "SELECT count(*) FROM dispatcher.deliveries WHERE status = 'pending' AND attempts > 0"
        )
        == 0
    )
    assert (await statuses(db, wid))["succeeded"] == len(receiver.requests)


@pytest.mark.slow
async def test_two_instances_share_one_rate_limit(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    wid = await limited_webhook(db, receiver, 200)

    started = time.monotonic()
    async with AsyncExitStack() as stack:
        for source in ("127.0.0.2", "127.0.0.3"):
            await stack.enter_async_context(running(fast_settings(bind_address=source), dsn))
        in_window, most_leased = await measure(db, receiver, wid, started)
        await tokens_come_back(receiver)

    assert_limited(in_window, most_leased)
    assert await db.fetchval("SELECT max(attempts) FROM dispatcher.deliveries") == 1


async def test_webhook_without_a_limit_is_not_held_back(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    wid, _ = await add_webhook(db, receiver.url, ["t.x"])
    await publish_many(db, 200)

    async with running(fast_settings(), dsn):
        await receiver.wait_for(200, within_s=30)

    assert await statuses(db, wid) == {"succeeded": 200}
    assert (await health(db, wid))["throttled_at"] is None
