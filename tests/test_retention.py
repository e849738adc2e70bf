"""Retention: finished deliveries, their attempts and unreferenced events go after a while."""

from __future__ import annotations

import asyncio

import asyncpg

from dispatcher.daemon import serve
from dispatcher.ops.retention import sweep_once
from tests.conftest import Receiver, add_webhook, deliver_all, eventually, fast_settings

WEEK = 7 * 86400.0


async def state(db: asyncpg.Pool) -> dict[str, int]:
    return {
        t: await db.fetchval(f"SELECT count(*) FROM dispatcher.{t}")
        for t in ("events", "deliveries", "attempts")
    }


async def test_sweep_deletes_only_what_is_past_retention(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    await add_webhook(db, receiver.url, ["t.x"])
    await db.execute(
        "INSERT INTO dispatcher.events (event_type, payload)"
        " SELECT 't.x', jsonb_build_object('i', i) FROM generate_series(1, 25) i"
    )
    await deliver_all(fast_settings(), dsn)
    assert await state(db) == {"events": 25, "deliveries": 25, "attempts": 25}

    # 20 finished and created 8 days ago, 5 recent; one more old event still pending.
    await db.execute(
        "UPDATE dispatcher.deliveries SET finished_at = now() - interval '8 days'"
        " WHERE id IN (SELECT id FROM dispatcher.deliveries ORDER BY id LIMIT 20)"
    )
    await db.execute(
        "UPDATE dispatcher.events SET created_at = now() - interval '8 days'"
        " WHERE message_id IN (SELECT message_id FROM dispatcher.deliveries"
        "                      WHERE finished_at < now() - interval '1 day')"
    )
    # Attempt records age from when they started: theirs started 8 days ago too.
    await db.execute(
        "UPDATE dispatcher.attempts SET started_at = now() - interval '8 days'"
        " WHERE delivery_id IN (SELECT id FROM dispatcher.deliveries"
        "                       WHERE finished_at < now() - interval '1 day')"
    )
    pending_old = await db.fetchval(
        "INSERT INTO dispatcher.events (event_type, payload, created_at)"
        " VALUES ('t.x', '{}', now() - interval '30 days') RETURNING message_id"
    )
    # An old event that no webhook was subscribed to: nothing refers to it.
    await db.execute(
        "INSERT INTO dispatcher.events (event_type, payload, created_at)"
        " VALUES ('nobody.listens', '{}', now() - interval '9 days')"
    )

    swept = await sweep_once(db, WEEK, batch=7)  # a batch size that forces several rounds

    assert (swept.deliveries, swept.events, swept.attempts) == (20, 21, 20)
    assert await state(db) == {"events": 6, "deliveries": 6, "attempts": 5}
    assert (
        await db.fetchval(
            "SELECT status FROM dispatcher.deliveries WHERE message_id = $1", pending_old
        )
        == "pending"
    )
    assert await sweep_once(db, WEEK, batch=7) == type(swept)(0, 0)


async def test_daemon_runs_the_sweep(db: asyncpg.Pool, dsn: str, receiver: Receiver) -> None:
    await add_webhook(db, receiver.url, ["t.x"])
    await db.execute("INSERT INTO dispatcher.events (event_type, payload) VALUES ('t.x', '{}')")
    await deliver_all(fast_settings(), dsn)
    await db.execute("UPDATE dispatcher.deliveries SET finished_at = now() - interval '2 hours'")
    await db.execute("UPDATE dispatcher.events SET created_at = now() - interval '2 hours'")
    await db.execute("UPDATE dispatcher.attempts SET started_at = now() - interval '2 hours'")

    stop = asyncio.Event()
    settings = fast_settings(retention_s=3600, retention_partition_s=3600)
    daemon = asyncio.create_task(serve(settings, dsn, stop=stop, handle_signals=False))
    try:

        async def emptied() -> bool:
            return await state(db) == {"events": 0, "deliveries": 0, "attempts": 0}

        await eventually(emptied)
    finally:
        stop.set()
        await daemon
