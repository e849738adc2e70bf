"""Leases: a visibility timeout plus a token, so a dead holder's rows come back and its late
writes are fenced out."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from dispatcher import store
from dispatcher.store import OutcomeRow
from tests.conftest import add_webhook, publish


def succeeded(delivery: store.LeasedDelivery) -> OutcomeRow:
    return OutcomeRow(
        delivery_id=delivery.id,
        lease_token=delivery.lease_token,
        status="succeeded",
        retry_in_s=0.0,
        attempt=delivery.attempt,
        started_at=datetime.now(UTC),
        duration_ms=5,
        response_status=200,
        response_body="",
        response_truncated=False,
        error_kind=None,
        error_message=None,
        webhook_id=delivery.webhook_id,
        retry_reason=None,
        breaker=False,
        lease_until=delivery.lease_until,
    )


async def test_lease_hides_rows_until_it_expires(db: asyncpg.Pool) -> None:
    await add_webhook(db, "http://a.example/", ["t.x"])
    await publish(db, "t.x")

    [held] = (await store.lease_batch(db, 10, 60.0)).deliveries
    assert held.attempt == 1
    again = await store.lease_batch(db, 10, 60.0)
    assert again.deliveries == []
    # The leased row is still pending: due again when its lease expires.
    assert again.next_due_s is not None
    assert 55 < again.next_due_s <= 60


async def test_expired_lease_is_taken_by_another_worker_and_stale_write_rejected(
    db: asyncpg.Pool,
) -> None:
    await add_webhook(db, "http://a.example/", ["t.x"])
    await publish(db, "t.x")
    [stale] = (await store.lease_batch(db, 10, 60.0)).deliveries

    # The holder stalls past its lease.
    await db.execute("UPDATE dispatcher.deliveries SET run_at = now() - interval '1 second'")
    [fresh] = (await store.lease_batch(db, 10, 60.0)).deliveries
    assert fresh.id == stale.id
    assert fresh.lease_token != stale.lease_token
    assert fresh.attempt == 2

    assert await store.record_outcomes(db, [succeeded(stale)]) == 0
    row = await db.fetchrow("SELECT status, lease_token FROM dispatcher.deliveries")
    assert (row["status"], row["lease_token"]) == ("pending", fresh.lease_token)
    assert await db.fetchval("SELECT count(*) FROM dispatcher.attempts") == 0

    assert await store.record_outcomes(db, [succeeded(fresh)]) == 1
    assert await db.fetchval("SELECT status FROM dispatcher.deliveries") == "succeeded"
    assert await db.fetchval("SELECT attempt FROM dispatcher.attempts") == 2


async def test_release_makes_rows_due_again_without_counting_an_attempt(
    db: asyncpg.Pool,
) -> None:
    await add_webhook(db, "http://a.example/", ["t.x"])
    await publish(db, "t.x")
    leased = (await store.lease_batch(db, 10, 60.0)).deliveries
    await store.release_leases(db, leased)
    [again] = (await store.lease_batch(db, 10, 60.0)).deliveries
    assert again.attempt == 1


async def test_lease_skips_saturated_webhooks_and_disabled_ones(db: asyncpg.Pool) -> None:
    busy, _ = await add_webhook(db, "http://a.example/", ["t.x"])
    idle, _ = await add_webhook(db, "http://b.example/", ["t.x"])
    off, _ = await add_webhook(db, "http://c.example/", ["t.x"])
    await publish(db, "t.x")
    await db.execute("UPDATE dispatcher.webhooks SET status = 'disabled' WHERE id = $1", off)

    leased = (await store.lease_batch(db, 10, 60.0, {busy: 4}, per_webhook_cap=4)).deliveries
    assert [d.webhook_id for d in leased] == [idle]


async def test_lease_takes_no_more_per_webhook_than_its_free_slots(db: asyncpg.Pool) -> None:
    a, _ = await add_webhook(db, "http://a.example/", ["t.x"])
    b, _ = await add_webhook(db, "http://b.example/", ["t.x"])
    c, _ = await add_webhook(db, "http://c.example/", ["t.x"])
    await db.execute(
        "INSERT INTO dispatcher.events (event_type, payload)"
        " SELECT 't.x', '{}' FROM generate_series(1, 20)"
    )
    leased = (await store.lease_batch(db, 100, 60.0, {a: 1, b: 3}, per_webhook_cap=4)).deliveries
    counts = {w: sum(d.webhook_id == w for d in leased) for w in (a, b, c)}
    assert counts == {a: 3, b: 1, c: 4}


async def test_concurrent_leases_never_hand_out_a_row_twice(db: asyncpg.Pool) -> None:
    import asyncio

    await add_webhook(db, "http://a.example/", ["t.x"])
    await db.execute(
        "INSERT INTO dispatcher.events (event_type, payload)"
        " SELECT 't.x', '{}' FROM generate_series(1, 500)"
    )
    # Leases of one webhook that run at once take turns on its health row (the others skip
    # it), so this takes several rounds; none may hand out a row another one did.
    ids: list[int] = []
    async with asyncio.timeout(60):
        while len(ids) < 500:
            batches = await asyncio.gather(*(store.lease_batch(db, 50, 60.0) for _ in range(12)))
            ids += [d.id for batch in batches for d in batch.deliveries]
    assert len(ids) == len(set(ids)) == 500
