"""Fair leasing: one webhook's backlog, however large, never holds back another webhook's due
delivery by more than one lease round. Asserted on what each lease returns, not on time."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg

from dispatcher import store
from tests.conftest import Receiver, add_webhook, fast_settings, publish, running

BACKLOG = 100_000


async def backlog(db: asyncpg.Pool, event_type: str, count: int) -> None:
    await db.execute(
        "INSERT INTO dispatcher.events (event_type, payload)"
        " SELECT $1, '{}' FROM generate_series(1, $2)",
        event_type,
        count,
    )


def per_webhook(lease: store.Lease) -> Counter[int]:
    return Counter(d.webhook_id for d in lease.deliveries)


async def test_a_new_event_is_leased_in_the_next_round_behind_a_huge_backlog(
    db: asyncpg.Pool,
) -> None:
    big, _ = await add_webhook(db, "https://big.example/", ["big"])
    small, _ = await add_webhook(db, "https://small.example/", ["small"])
    await backlog(db, "big", BACKLOG)
    first = await store.lease_batch(db, 50, 60.0, per_webhook_cap=1000)
    assert per_webhook(first) == {big: 50}

    # The quiet webhook's event is the newest row in the table, behind 99,950 due rows.
    await publish(db, "small")
    second = await store.lease_batch(db, 50, 60.0, per_webhook_cap=1000)
    # An even share of the batch each: the quiet webhook's one row, and 25 of the backlog.
    assert per_webhook(second) == {big: 25, small: 1}


async def test_retries_to_a_dead_endpoint_do_not_starve_first_attempts_elsewhere(
    db: asyncpg.Pool,
) -> None:
    dead, _ = await add_webhook(db, "https://dead.example/", ["dead"])
    healthy, _ = await add_webhook(db, "https://ok.example/", ["ok"])
    await backlog(db, "dead", 10_000)
    # Every delivery to the dead endpoint has failed three times and is due for its fourth.
    await db.execute(
        "UPDATE dispatcher.deliveries SET attempts = 3, run_at = now() - interval '1 hour'"
    )
    await backlog(db, "ok", 100)

    lease = await store.lease_batch(db, 40, 60.0, per_webhook_cap=1000)
    assert per_webhook(lease) == {dead: 20, healthy: 20}
    # Handed back, so that only this process's own slots count below, not the cap over all
    # instances (tests/test_endpoint_caps.py).
    await store.release_leases(db, lease.deliveries)
    # With its slots in use, the dead endpoint gets no more than its free slots.
    lease = await store.lease_batch(db, 40, 60.0, {dead: 15}, per_webhook_cap=16)
    assert per_webhook(lease) == {dead: 1, healthy: 16}


async def test_a_batch_is_shared_evenly_and_fills_when_some_webhooks_run_short(
    db: asyncpg.Pool,
) -> None:
    ids = [(await add_webhook(db, f"https://w{i}.example/", [f"t{i}"]))[0] for i in range(4)]
    for i, count in enumerate([1, 2, 500, 500]):
        await backlog(db, f"t{i}", count)
    lease = await store.lease_batch(db, 40, 60.0, per_webhook_cap=1000)
    # An even share is 10 each; the two short webhooks give all they have, and the next leases
    # take the rest, since the loop leases again whenever a lease returned rows.
    assert per_webhook(lease) == {ids[0]: 1, ids[1]: 2, ids[2]: 10, ids[3]: 10}
    lease = await store.lease_batch(db, 40, 60.0, per_webhook_cap=1000)
    assert per_webhook(lease) == {ids[2]: 20, ids[3]: 20}


async def test_webhooks_past_the_visit_limit_are_served_round_robin(db: asyncpg.Pool) -> None:
    ids = [(await add_webhook(db, f"https://w{i}.example/", ["t"]))[0] for i in range(5)]
    await backlog(db, "t", 10)
    first = await store.lease_batch(db, 100, 60.0, per_webhook_cap=1000, max_webhooks=3)
    assert set(per_webhook(first)) == set(ids[:3])
    assert first.next_cursor == ids[2]
    second = await store.lease_batch(
        db, 100, 60.0, per_webhook_cap=1000, cursor=first.next_cursor, max_webhooks=3
    )
    assert set(per_webhook(second)) == set(ids[3:])
    assert second.next_cursor == 0  # the walk reached the end: start over next time


async def test_many_idle_webhooks_cost_the_lease_nothing(db: asyncpg.Pool) -> None:
    """10,000 webhooks of which 10 have work: the lease visits the 10."""
    await db.execute(
        "INSERT INTO dispatcher.webhooks (service_name, url, event_types)"
        " SELECT 'idle' || i, 'https://idle.example/', '{never}' FROM generate_series(1, 9990) i"
    )
    busy = [(await add_webhook(db, f"https://b{i}.example/", ["t"]))[0] for i in range(10)]
    await backlog(db, "t", 1000)
    lease = await store.lease_batch(db, 100, 60.0, per_webhook_cap=1000, max_webhooks=20)
    assert per_webhook(lease) == dict.fromkeys(busy, 10)
    assert lease.next_cursor == 0  # 10 webhooks with pending rows, all visited in one lease


async def test_the_daemon_delivers_a_quiet_endpoint_while_another_drains(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    await add_webhook(db, receiver.url + "/big", ["big"])
    await add_webhook(db, receiver.url + "/small", ["small"])
    await backlog(db, "big", 5_000)
    settings = fast_settings(max_in_flight=32, per_endpoint_concurrency=16, lease_batch_size=16)
    async with running(settings, dsn):
        await receiver.wait_for(500, "/big", within_s=30)
        before = len(receiver.on("/big"))
        await publish(db, "small")
        await receiver.wait_for(1, "/small", within_s=30)
        after = len(receiver.on("/big"))
    # What /big got in between: the attempts already in flight when the event was published,
    # plus at most one lease round that was already under way. Not the rest of the backlog.
    assert after - before <= 32 + 16
    assert (
        await db.fetchval("SELECT count(*) FROM dispatcher.deliveries WHERE status = 'pending'") > 0
    )  # /big was still draining when /small got its event
    await asyncio.sleep(0)
