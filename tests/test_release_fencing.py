"""Lease releases are fenced by the lease token, like outcome writes.

A holder hands back the leases it never attempted (at shutdown, past the grace period). If its
lease expired meanwhile and another instance took the row, the release must leave the new
holder's lease, attempt count and slot alone, and the new holder's outcome must still land. A
release frees its slot in the webhook's count of attempts in flight (migration 009) once: never
twice, never below 0, and not for a lease the count had already forgotten. Leases expire by
backdating them in SQL, never by waiting.
"""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import pytest

from dispatcher import store
from tests.conftest import Receiver, add_webhook, daemon_process, publish
from tests.test_endpoint_caps import (
    events_for,
    expire,
    in_flight,
    lease,
    stall_past_deadlines,
    write,
)
from tests.test_lifecycle import holding, read_log_until


async def row_of(db: asyncpg.Pool, delivery_id: int) -> dict[str, object]:
    row = await db.fetchrow(
        "SELECT status, attempts, lease_token, run_at FROM dispatcher.deliveries WHERE id = $1",
        delivery_id,
    )
    assert row is not None
    return dict(row)


async def test_a_stale_release_leaves_the_new_holders_lease_and_slot_alone(
    db: asyncpg.Pool,
) -> None:
    wid = await events_for(db, cap=5, events=2)
    [stale] = (await lease(db, 1)).deliveries  # instance A
    await expire(db, stale)
    # Instance B takes the expired row and the other one; the expired row's slot moves to B.
    by_id = {d.id: d for d in (await lease(db)).deliveries}  # instance B
    taken = by_id.pop(stale.id)
    [other] = by_id.values()
    assert taken.lease_token != stale.lease_token
    assert await in_flight(db, wid) == 2
    held = await row_of(db, taken.id)
    assert (held["attempts"], held["lease_token"]) == (2, taken.lease_token)

    # A stops and hands back what it thinks it holds: nothing of B's changes.
    await store.release_leases(db, [stale])
    assert await row_of(db, taken.id) == held
    assert await in_flight(db, wid) == 2

    # B releases the row it never attempted: due now, the attempt not counted, its slot free.
    before = await row_of(db, other.id)
    await store.release_leases(db, [other])
    released = await row_of(db, other.id)
    assert (released["status"], released["attempts"], released["lease_token"]) == (
        "pending",
        0,
        None,
    )
    assert await db.fetchval(
        "SELECT run_at <= now() FROM dispatcher.deliveries WHERE id = $1", other.id
    )
    assert before["run_at"] != released["run_at"]
    assert await in_flight(db, wid) == 1

    # The same release again, and A's stale one again: the slot is not freed a second time.
    await store.release_leases(db, [other])
    await store.release_leases(db, [stale])
    assert await row_of(db, other.id) == released
    assert await row_of(db, taken.id) == held
    assert await in_flight(db, wid) == 1

    # B's outcome lands, as attempt 2, and frees the last slot; late releases leave it at 0.
    assert await write(db, taken) == 1
    assert (await row_of(db, taken.id))["status"] == "succeeded"
    assert await db.fetchval(
        "SELECT array_agg(attempt) FROM dispatcher.attempts WHERE delivery_id = $1", taken.id
    ) == [2]
    assert await in_flight(db, wid) == 0
    await store.release_leases(db, [stale, taken, other])
    assert await in_flight(db, wid) == 0
    assert (await row_of(db, other.id))["lease_token"] is None


async def test_a_late_release_of_a_lease_a_reset_forgot_frees_no_slot(db: asyncpg.Pool) -> None:
    """The holder stalled past its leases, and past the webhook's latest deadline: the count
    restarted from 0 and forgot them. Another instance took one row (counted anew). The
    holder's release of both then hands back the row no one took (due again, the attempt not
    counted) but frees no slot for it, and leaves the taken one alone."""
    wid = await events_for(db, cap=3, events=2)
    stalled = (await lease(db)).deliveries
    await stall_past_deadlines(db, wid, *stalled)

    [taken] = (await lease(db, 1)).deliveries
    assert await in_flight(db, wid) == 1
    [untaken] = [d for d in stalled if d.id != taken.id]

    await store.release_leases(db, stalled)
    assert (await row_of(db, untaken.id))["lease_token"] is None
    assert (await row_of(db, untaken.id))["attempts"] == 0
    assert (await row_of(db, taken.id))["lease_token"] == taken.lease_token
    assert await in_flight(db, wid) == 1  # the one slot in use, B's, stays counted
    assert await write(db, taken) == 1
    assert await in_flight(db, wid) == 0


@pytest.mark.slow
async def test_a_stopping_daemon_does_not_release_a_lease_another_instance_took(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    """The shutdown path, in a real `dispatcher run`: its attempt hangs past the grace period,
    its lease expires meanwhile and another instance takes the row. The release it makes as it
    stops is fenced out, and the other instance's outcome lands."""
    release = asyncio.Event()
    receiver.handler = holding(release)  # type: ignore[assignment]
    wid, _ = await add_webhook(db, receiver.url, ["t.x"])
    # One slot: while its attempt hangs, the daemon leases nothing, so only B takes the row.
    async with daemon_process(
        dsn,
        DISPATCHER_RETRY_SCHEDULE="[]",
        DISPATCHER_MAX_IN_FLIGHT="1",
        DISPATCHER_SHUTDOWN_GRACE_S="0.5",
    ) as proc:
        await read_log_until(proc, "daemon_started")
        await publish(db, "t.x")
        await receiver.wait_for(1)
        async with db.acquire() as conn, conn.transaction():
            # Expired and taken in one transaction: no moment in which the row looks free.
            await conn.execute(
                "UPDATE dispatcher.deliveries SET run_at = now() - interval '1 hour'"
                " WHERE status = 'pending'"
            )
            [taken] = (await store.lease_batch(conn, 10, 60.0, per_webhook_cap=16)).deliveries
        assert taken.attempt == 2
        held = await row_of(db, taken.id)
        assert await in_flight(db, wid) == 1
        proc.send_signal(signal.SIGTERM)
        await read_log_until(proc, "attempts_abandoned")
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
    release.set()

    assert await row_of(db, taken.id) == held
    assert await in_flight(db, wid) == 1
    assert await write(db, taken) == 1
    assert await row_of(db, taken.id) != held
    assert (await row_of(db, taken.id))["status"] == "succeeded"
    assert await in_flight(db, wid) == 0
