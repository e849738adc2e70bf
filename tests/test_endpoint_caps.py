"""A webhook's concurrency cap holds over every instance on one database, not per instance.

The cap is a counter on the webhook's health row (migration 009): the lease adds the rows it
takes, outcome writes and lease releases subtract the rows they write, and a count whose leases
have all expired starts again from 0. The end-to-end test runs four real daemon processes
against a receiver that counts the requests it holds open per webhook; the others drive the
statements directly, expiring leases by backdating them in SQL rather than sleeping.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web

from dispatcher import store
from dispatcher.manage import admin
from dispatcher.ops import migrate
from dispatcher.store import HealthRules, LeasedDelivery
from tests.conftest import (
    Receiver,
    _drop,
    add_webhook,
    daemon_process,
    deliver_all,
    eventually,
    fast_settings,
    publish,
    with_database,
)
from tests.test_leases import succeeded

INSTANCES = 4
EVENTS = 200
# Long enough that every instance has requests open at once; short enough to finish quickly.
RESPONSE_S = 0.15


class ConcurrencyMeter:
    """Answer slowly, and remember the most requests open at once on each path."""

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.ids: dict[str, Counter[str]] = {}

    async def __call__(self, request: web.Request, rec: Receiver) -> web.Response:
        path = request.path
        self.ids.setdefault(path, Counter())[request.headers["webhook-id"]] += 1
        self.open[path] += 1
        self.most[path] = max(self.most[path], self.open[path])
        try:
            await asyncio.sleep(RESPONSE_S)
        finally:
            self.open[path] -= 1
        return web.Response(text="ok")


async def in_flight(db: asyncpg.Pool, webhook_id: int) -> int:
    count: int = await db.fetchval(
        "SELECT in_flight FROM dispatcher.webhook_health WHERE webhook_id = $1", webhook_id
    )
    return count


async def capped_webhook(db: asyncpg.Pool, url: str, cap: int | None, event_type: str) -> int:
    wid, _ = await add_webhook(db, url, [event_type])
    await db.execute("UPDATE dispatcher.webhooks SET max_concurrency = $2 WHERE id = $1", wid, cap)
    return wid


@pytest.mark.slow
async def test_four_instances_never_exceed_a_webhooks_cap_together(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, tmp_path: Path
) -> None:
    meter = ConcurrencyMeter()
    receiver.handler = meter
    own = await capped_webhook(db, f"{receiver.url}/own", 3, "t.own")
    default = await capped_webhook(db, f"{receiver.url}/default", None, "t.default")

    async with AsyncExitStack() as stack:
        for n in range(INSTANCES):
            log = stack.enter_context((tmp_path / f"daemon-{n}.log").open("wb"))
            # Each instance alone would send 5 to each webhook: four would send 20. Each sends
            # from an address of its own, so the receiver can tell them apart.
            await stack.enter_async_context(
                daemon_process(
                    dsn,
                    log.fileno(),
                    DISPATCHER_PER_ENDPOINT_CONCURRENCY="5",
                    DISPATCHER_BIND_ADDRESS=f"127.0.0.{2 + n}",
                )
            )

        # Publish once all four are up, so that none starts after the others took the work.
        async def listening() -> bool:
            count: int = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'webhook-dispatcher-listen'"
            )
            return count == INSTANCES

        await eventually(listening, within_s=60)
        await db.execute(
            "INSERT INTO dispatcher.events (event_type, payload)"
            " SELECT t, jsonb_build_object('i', i)"
            " FROM generate_series(1, $1) i, unnest('{t.own,t.default}'::text[]) t",
            EVENTS,
        )

        async def all_delivered() -> bool:
            done: int = await db.fetchval(
                "SELECT count(*) FROM dispatcher.deliveries WHERE status = 'succeeded'"
            )
            return done == 2 * EVENTS

        await eventually(all_delivered, within_s=120, every_s=0.1)

    print(f"most requests open at once: {dict(meter.most)} (caps: /own 3, /default 5)")
    # Every instance sent to both webhooks, and together they filled each cap and no more.
    senders = {(r.path, r.remote) for r in receiver.requests}
    assert senders == {(p, f"127.0.0.{2 + n}") for p in ("/own", "/default") for n in range(4)}
    assert meter.most["/own"] == 3
    assert meter.most["/default"] == 5
    # Every event was delivered once to each webhook, and nothing was attempted twice.
    for path in ("/own", "/default"):
        assert set(meter.ids[path].values()) == {1}
        assert len(meter.ids[path]) == EVENTS
    assert await db.fetchval("SELECT max(attempts) FROM dispatcher.deliveries") == 1
    # The counters came back to 0 with the last outcome write.
    assert (await in_flight(db, own), await in_flight(db, default)) == (0, 0)


# --- the counter, statement by statement ---------------------------------------------------


async def write(db: asyncpg.Pool, *leased: LeasedDelivery) -> int:
    """Write success outcomes for `leased`; return how many were still leased to the writer."""
    return await store.record_outcomes(db, [succeeded(d) for d in leased], RULES)


async def lease(db: asyncpg.Pool, limit: int = 10) -> store.Lease:
    """Lease as a fresh instance would: nothing in flight here, so only the global cap binds."""
    return await store.lease_batch(db, limit, 60.0, per_webhook_cap=16)


async def expire(db: asyncpg.Pool, *leased: LeasedDelivery) -> None:
    """Backdate these leases' deadlines: their holder is gone."""
    await db.execute(
        "UPDATE dispatcher.deliveries SET run_at = now() - interval '1 hour'"
        " WHERE id = ANY ($1::bigint[])",
        [d.id for d in leased],
    )


async def stall_past_deadlines(db: asyncpg.Pool, webhook_id: int, *leased: LeasedDelivery) -> None:
    """The holder of these leases stalled past them and past the webhook's latest deadline, so
    the next lease restarts the count; its own record of the deadlines passes with them."""
    await expire(db, *leased)
    await db.execute(
        "UPDATE dispatcher.webhook_health SET leased_until = now() - interval '1 hour'"
        " WHERE webhook_id = $1",
        webhook_id,
    )
    for d in leased:
        d.lease_until = await db.fetchval(
            "SELECT run_at FROM dispatcher.deliveries WHERE id = $1", d.id
        )


RULES = HealthRules.from_settings(fast_settings())


async def events_for(db: asyncpg.Pool, cap: int, events: int) -> int:
    wid = await capped_webhook(db, "https://capped.example/", cap, "t.x")
    for _ in range(events):
        await publish(db, "t.x")
    return wid


async def test_a_webhook_at_its_cap_is_looked_at_again_shortly_not_at_once(
    db: asyncpg.Pool,
) -> None:
    wid = await events_for(db, cap=2, events=5)
    first = await lease(db)
    assert len(first.deliveries) == 2 and first.caps == {wid: 2}
    assert await in_flight(db, wid) == 2

    # Another instance finds due rows it may not take: it is told to look again in a moment,
    # not at once (which would spin), and not after a full poll interval.
    held = await lease(db)
    assert held.deliveries == []
    assert held.next_due_s == pytest.approx(store.CAP_RECHECK_S)

    assert await write(db, first.deliveries[0]) == 1
    assert await in_flight(db, wid) == 1
    assert len((await lease(db)).deliveries) == 1
    assert await in_flight(db, wid) == 2


async def test_an_expired_lease_taken_again_moves_its_slot(db: asyncpg.Pool) -> None:
    wid = await events_for(db, cap=3, events=5)
    dead, alive = (await lease(db, 2)).deliveries
    await expire(db, dead)

    # One slot is free; the row whose lease expired is the oldest due. Its slot was counted
    # for the old holder and moves to the new one: the count does not change.
    [taken] = (await lease(db)).deliveries
    assert taken.id == dead.id
    assert await in_flight(db, wid) == 2
    assert await write(db, dead) == 0  # the old holder's late write is fenced out
    assert await in_flight(db, wid) == 2
    assert await write(db, taken, alive) == 2
    assert await in_flight(db, wid) == 0


async def test_a_dead_holders_slots_come_back_when_its_leases_expire(db: asyncpg.Pool) -> None:
    wid = await events_for(db, cap=3, events=3)
    dead = (await lease(db)).deliveries
    assert len(dead) == 3 and (await lease(db)).deliveries == []
    await expire(db, *dead)
    await db.execute(
        "UPDATE dispatcher.webhook_health SET leased_until = now() - interval '1 hour'"
        " WHERE webhook_id = $1",
        wid,
    )

    # Every lease counted has expired: the count starts again, and the rows it forgot are
    # counted again when they are taken.
    again = (await lease(db)).deliveries
    assert {d.id for d in again} == {d.id for d in dead}
    assert await in_flight(db, wid) == 3
    assert await write(db, *dead) == 0
    assert await in_flight(db, wid) == 3
    assert await write(db, *again) == 3
    assert await in_flight(db, wid) == 0


async def test_a_late_write_of_a_lease_a_reset_forgot_frees_no_slot(db: asyncpg.Pool) -> None:
    wid = await events_for(db, cap=3, events=2)
    stalled = (await lease(db)).deliveries
    # Their deadlines pass: in the database, and in the holder's own record of its leases.
    await stall_past_deadlines(db, wid, *stalled)

    # Another instance resets the count and takes one of the rows: its slot is counted anew.
    [taken] = (await lease(db, 1)).deliveries
    assert await in_flight(db, wid) == 1
    # The holder was only stalled (a database outage longer than the lease, say) and writes
    # both: the row taken since is fenced out, the other is written, but its lease was
    # forgotten by the reset and frees nothing: the one slot in use stays counted.
    assert await write(db, *stalled) == 1
    assert await in_flight(db, wid) == 1
    assert await write(db, taken) == 1
    assert await in_flight(db, wid) == 0


async def test_a_crashed_holder_does_not_block_the_webhook(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    wid = await capped_webhook(db, receiver.url, 2, "t.x")
    for _ in range(6):
        await publish(db, "t.x")
    # The crashed holder took both slots with a one-second lease and never wrote back.
    crashed = await store.lease_batch(db, 10, 1.0, per_webhook_cap=16)
    assert len(crashed.deliveries) == 2

    # The daemon waits out that lease, then counts from 0 and delivers everything.
    await deliver_all(fast_settings(), dsn)
    assert len(receiver.requests) == 6
    assert await db.fetchval("SELECT array_agg(DISTINCT status) FROM dispatcher.deliveries") == [
        "succeeded"
    ]
    assert await in_flight(db, wid) == 0
    assert await write(db, *crashed.deliveries) == 0
    assert await in_flight(db, wid) == 0


async def test_releases_test_deliveries_and_disabling_keep_the_count(db: asyncpg.Pool) -> None:
    wid = await events_for(db, cap=5, events=4)
    leased = (await lease(db, 2)).deliveries
    await store.release_leases(db, leased)
    assert await in_flight(db, wid) == 0

    # `webhooks test`: leased from the start, counted like a daemon's lease.
    token = uuid.uuid4()
    async with db.acquire() as conn:
        message_id = await conn.fetchval("SELECT message_id FROM dispatcher.events LIMIT 1")
        inserted = await conn.fetchrow(
            admin.Q["insert_test_delivery"], message_id, wid, 60.0, token
        )
    assert await in_flight(db, wid) == 1
    test = LeasedDelivery(
        inserted["id"], str(message_id), wid, 1, token, "t.x", "{}", datetime.now(UTC), "", ""
    )
    test.lease_until = inserted["lease_until"]
    assert await write(db, test) == 1
    assert await in_flight(db, wid) == 0

    # Disabling cancels the pending rows, leased or not, and with them their slots: their
    # holders' writes are fenced out and will never subtract.
    leased = (await lease(db)).deliveries
    assert await in_flight(db, wid) == 4
    async with db.acquire() as conn:
        await admin.disable_webhook(conn, wid)
    assert await in_flight(db, wid) == 0
    assert await write(db, *leased) == 0
    assert await in_flight(db, wid) == 0
    async with db.acquire() as conn:
        await admin.enable_webhook(conn, wid)
    await publish(db, "t.x")
    [fresh] = (await lease(db)).deliveries
    assert await in_flight(db, wid) == 1
    assert await write(db, fresh) == 1
    assert await in_flight(db, wid) == 0


# --- migration 009 on an installation with data ----------------------------------------------


@pytest.fixture
async def old_db(server_dsn: str) -> AsyncIterator[str]:
    """A database of its own, migrated up to 008 (whatever migrations precede 009)."""
    name = f"dispatcher_caps_migrate_{uuid.uuid4().hex[:8]}"
    admin_conn = await asyncpg.connect(server_dsn)
    await admin_conn.execute(f'CREATE DATABASE "{name}"')
    await admin_conn.close()
    yield with_database(server_dsn, name)
    await _drop(server_dsn, name)


async def test_migration_009_counts_the_leases_it_finds(
    old_db: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = await asyncpg.connect(old_db)
    try:
        before = [m for m in migrate.migrations() if m.version < 9]
        monkeypatch.setattr(migrate, "migrations", lambda: before)
        await migrate.apply_migrations(conn)
        monkeypatch.undo()
        for name in ("a", "b"):
            await conn.execute(
                "INSERT INTO dispatcher.webhooks (service_name, url, event_types)"
                " VALUES ($1, $2, '{t.x}')",
                name,
                f"{receiver.url}/{name}",
            )
        await conn.execute(
            "INSERT INTO dispatcher.events (event_type, payload)"
            " SELECT 't.x', '{}' FROM generate_series(1, 5)"
        )
        # Per webhook: a live lease (a daemon of the old version is sending it), an expired
        # one (its holder died), a finished delivery with its attempt, and two never leased.
        await conn.execute(
            "WITH ranked AS (SELECT id, row_number() OVER (PARTITION BY webhook_id ORDER BY id)"
            "                AS n FROM dispatcher.deliveries)"
            " UPDATE dispatcher.deliveries d"
            " SET lease_token = CASE WHEN r.n <= 2 THEN gen_random_uuid() END,"
            "     attempts = CASE WHEN r.n <= 3 THEN 1 ELSE 0 END,"
            "     run_at = CASE r.n WHEN 1 THEN now() + interval '1 hour'"
            "                       WHEN 2 THEN now() - interval '1 minute' ELSE d.run_at END,"
            "     status = CASE WHEN r.n = 3 THEN 'succeeded' ELSE 'pending' END,"
            "     finished_at = CASE WHEN r.n = 3 THEN now() END"
            " FROM ranked r WHERE r.id = d.id"
        )
        await conn.execute(
            "INSERT INTO dispatcher.attempts (delivery_id, attempt, started_at, duration_ms)"
            " SELECT id, 1, now(), 5 FROM dispatcher.deliveries WHERE status = 'succeeded'"
        )
        tables = ("webhooks", "deliveries", "attempts", "events")
        kept = {t: await conn.fetch(f"SELECT * FROM dispatcher.{t} ORDER BY 1") for t in tables}
        live = await conn.fetch(
            "SELECT webhook_id, run_at FROM dispatcher.deliveries"
            " WHERE lease_token IS NOT NULL AND run_at > now() ORDER BY webhook_id"
        )

        assert [m.version for m in await migrate.apply_migrations(conn)] == [9]

        for table, rows in kept.items():
            now = await conn.fetch(f"SELECT * FROM dispatcher.{table} ORDER BY 1")
            columns = list(rows[0].keys())
            assert [{k: r[k] for k in columns} for r in now] == [dict(r) for r in rows]
        assert await conn.fetchval("SELECT count(max_concurrency) FROM dispatcher.webhooks") == 0
        health = await conn.fetch(
            "SELECT webhook_id, in_flight, leased_until, slots_reset_at IS NOT NULL AS reset"
            " FROM dispatcher.webhook_health ORDER BY webhook_id"
        )
        assert [tuple(h) for h in health] == [(r["webhook_id"], 1, r["run_at"], True) for r in live]

        # Two hours on, without waiting for them: the live lease's holder never wrote back.
        await conn.execute(
            "UPDATE dispatcher.deliveries SET run_at = run_at - interval '2 hours'"
            " WHERE lease_token IS NOT NULL"
        )
        await conn.execute(
            "UPDATE dispatcher.webhook_health SET leased_until = leased_until - interval '2 hours',"
            " slots_reset_at = slots_reset_at - interval '2 hours'"
        )
    finally:
        await conn.close()

    # The daemon delivers what was pending once the old lease expires, and the counts end at
    # 0: the live lease was counted (its slot moves when it is taken again), the expired one
    # was not (it is counted when taken again).
    await deliver_all(fast_settings(), old_db)
    assert len(receiver.requests) == 2 * 4
    conn = await asyncpg.connect(old_db)
    try:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM dispatcher.deliveries WHERE status <> 'succeeded'"
            )
            == 0
        )
        assert await conn.fetchval("SELECT sum(in_flight) FROM dispatcher.webhook_health") == 0
    finally:
        await conn.close()
