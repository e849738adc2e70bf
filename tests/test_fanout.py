"""The SQL contract for producers: publishing, idempotency and fan-out inside the transaction."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from tests.conftest import add_webhook, publish


async def deliveries_by_webhook(db: asyncpg.Pool) -> dict[int, int]:
    rows = await db.fetch(
        "SELECT webhook_id, count(*) AS n FROM dispatcher.deliveries GROUP BY webhook_id"
    )
    return {r["webhook_id"]: r["n"] for r in rows}


async def test_fan_out_reaches_exactly_subscribed_active_webhooks(db: asyncpg.Pool) -> None:
    exact, _ = await add_webhook(db, "http://a.example/", ["customer.updated"])
    star, _ = await add_webhook(db, "http://b.example/", ["*"])
    both, _ = await add_webhook(db, "http://c.example/", ["customer.updated", "*"])
    await add_webhook(db, "http://d.example/", ["customer.created"])
    await add_webhook(db, "http://e.example/", ["customer.updated"], status="disabled")

    await db.execute(
        "INSERT INTO dispatcher.events (event_type, payload)"
        " VALUES ('customer.updated', '{\"id\": 42}'::jsonb)"
    )

    assert await deliveries_by_webhook(db) == {exact: 1, star: 1, both: 1}


async def test_producer_may_supply_message_id(db: asyncpg.Pool) -> None:
    await add_webhook(db, "http://a.example/", ["t.x"])
    mid = uuid.uuid4()
    await db.execute(
        "INSERT INTO dispatcher.events (message_id, event_type, payload) VALUES ($1, 't.x', '{}')",
        mid,
    )
    assert await db.fetchval("SELECT message_id FROM dispatcher.deliveries") == mid


async def test_rolled_back_transaction_publishes_nothing(db: asyncpg.Pool) -> None:
    await add_webhook(db, "http://a.example/", ["*"])
    async with db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT dispatcher.publish('order.paid', '{}'::jsonb)")
        assert await conn.fetchval("SELECT count(*) FROM dispatcher.deliveries") == 1
        await tx.rollback()
    assert await db.fetchval("SELECT count(*) FROM dispatcher.events") == 0
    assert await db.fetchval("SELECT count(*) FROM dispatcher.deliveries") == 0


async def test_publish_is_idempotent_on_message_id(db: asyncpg.Pool) -> None:
    await add_webhook(db, "http://a.example/", ["order.paid"])
    mid = uuid.uuid4()
    first = await db.fetchval(
        "SELECT dispatcher.publish('order.paid', '{\"n\": 1}'::jsonb, $1)", mid
    )
    again = await db.fetchval(
        "SELECT dispatcher.publish('order.paid', '{\"n\": 2}'::jsonb, message_id => $1)", mid
    )
    assert first == again == mid
    assert await db.fetchval("SELECT count(*) FROM dispatcher.events") == 1
    assert await db.fetchval("SELECT payload::text FROM dispatcher.events") == '{"n": 1}'
    assert await db.fetchval("SELECT count(*) FROM dispatcher.deliveries") == 1


async def test_publish_without_message_id_generates_one(db: asyncpg.Pool) -> None:
    a = await publish(db, "order.paid")
    b = await publish(db, "order.paid")
    assert a != b
    assert await db.fetchval("SELECT count(*) FROM dispatcher.events") == 2


async def test_bulk_insert_fans_out_in_one_statement_with_one_notify(
    db: asyncpg.Pool, dsn: str
) -> None:
    a, _ = await add_webhook(db, "http://a.example/", ["bulk.a"])
    star, _ = await add_webhook(db, "http://b.example/", ["*"])
    await add_webhook(db, "http://c.example/", ["bulk.other"])

    notes: list[str] = []
    marked = asyncio.Event()

    def note(*args: object) -> None:
        notes.append(str(args[3]))
        if args[3] == "marker":
            marked.set()

    listen = await asyncpg.connect(dsn)
    await listen.add_listener("dispatcher_deliveries", note)
    try:
        async with db.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "INSERT INTO dispatcher.events (event_type, payload)"
                " SELECT 'bulk.a', jsonb_build_object('i', i) FROM generate_series(1, 10000) i"
            )
            assert status == "INSERT 0 10000"
            # Already fanned out when the one statement returns, before commit.
            assert await conn.fetchval("SELECT count(*) FROM dispatcher.deliveries") == 20000
        # Listeners get notifications in commit order: once this one arrives, every one the
        # insert sent has arrived before it.
        await db.execute("NOTIFY dispatcher_deliveries, 'marker'")
        async with asyncio.timeout(20):
            await marked.wait()
    finally:
        await listen.close()

    assert await deliveries_by_webhook(db) == {a: 10000, star: 10000}
    assert notes == ["", "marker"]
    # The trigger is statement-level, not one call per row.
    tgtype = await db.fetchval("SELECT tgtype FROM pg_trigger WHERE tgname = 'events_fan_out'")
    assert tgtype & 1 == 0  # TRIGGER_TYPE_ROW bit clear


async def test_disabled_webhook_never_gets_events_inserted_while_disabled(
    db: asyncpg.Pool,
) -> None:
    wid, _ = await add_webhook(db, "http://a.example/", ["t.x"])
    await publish(db, "t.x")
    await db.execute("UPDATE dispatcher.webhooks SET status = 'disabled' WHERE id = $1", wid)
    await publish(db, "t.x")
    await db.execute("UPDATE dispatcher.webhooks SET status = 'active' WHERE id = $1", wid)
    await publish(db, "t.x")

    rows = await db.fetch("SELECT status, last_error_kind FROM dispatcher.deliveries ORDER BY id")
    # The one pending before the disable was cancelled; the one published while disabled
    # never existed; only the one published after enabling is pending.
    assert [(r["status"], r["last_error_kind"]) for r in rows] == [
        ("cancelled", "webhook_disabled"),
        ("pending", None),
    ]


async def test_new_webhook_is_active_with_a_fresh_standard_secret(db: asyncpg.Pool) -> None:
    _, s1 = await add_webhook(db, "http://a.example/", ["*"])
    _, s2 = await add_webhook(db, "http://b.example/", ["*"])
    import base64

    assert s1.startswith("whsec_") and s1 != s2
    assert len(base64.b64decode(s1.removeprefix("whsec_"))) == 32
    assert await db.fetchval("SELECT array_agg(DISTINCT status) FROM dispatcher.webhooks") == [
        "active"
    ]
