"""Retention treats every way a delivery can finish alike: failed and cancelled deliveries, and
their attempt records, go when they are past retention and stay while they are inside it. An
event goes only when no delivery refers to it any more: one whose delivery finished inside
retention stays, however old the event itself is.

Both ways history expires are covered: rows deleted one by one from the legacy and DEFAULT
partitions (the sweep), and dated partitions dropped whole (partition maintenance). The rows
are made by the product's own statements (a failed outcome written, a webhook disabled), and
aged by writing old timestamps, never by waiting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from dispatcher import store
from dispatcher.manage import admin
from dispatcher.ops import partitions
from dispatcher.ops.retention import sweep_once
from tests.conftest import add_webhook, fast_settings, publish
from tests.test_partitions import RULES, migrated_ago, short, succeeded

WEEK = 7 * 86400.0


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool with the daemon's own connection settings, as retention uses."""
    p = await store.create_pool(dsn, 4)
    yield p
    await p.close()


@dataclass(frozen=True)
class Finished:
    """One event's two deliveries: one failed (two attempts), one cancelled (one attempt)."""

    event: str
    failed: int
    cancelled: int


async def finish_everything(db: asyncpg.Pool, events: int) -> list[Finished]:
    """Publish `events` events to two webhooks; fail one webhook's deliveries and cancel the
    other's, each after a first failed attempt."""
    failing, _ = await add_webhook(db, "https://failing.example/", ["t.x"], name="failing")
    disabled, _ = await add_webhook(db, "https://disabled.example/", ["t.x"], name="disabled")
    published = [await publish(db, "t.x") for _ in range(events)]

    first = (await store.lease_batch(db, 100, 60.0)).deliveries
    assert len(first) == 2 * events
    await store.write_outcomes(db, [succeeded(d, "pending") for d in first], RULES)
    async with db.acquire() as conn:
        _, cancelled = await admin.disable_webhook(conn, disabled)
    assert cancelled == events
    second = (await store.lease_batch(db, 100, 60.0)).deliveries
    assert {d.webhook_id for d in second} == {failing}
    await store.write_outcomes(db, [succeeded(d, "failed") for d in second], RULES)

    rows = await db.fetch(
        "SELECT d.message_id::text, d.id, d.status, count(a.id) AS attempts"
        " FROM dispatcher.deliveries d LEFT JOIN dispatcher.attempts a ON a.delivery_id = d.id"
        " GROUP BY d.message_id, d.id, d.status"
    )
    by_event = {(r["message_id"], r["status"]): (r["id"], r["attempts"]) for r in rows}
    assert len(by_event) == 2 * events
    found = []
    for event in published:
        failed, failed_attempts = by_event[(event, "failed")]
        cancelled_id, cancelled_attempts = by_event[(event, "cancelled")]
        assert (failed_attempts, cancelled_attempts) == (2, 1)
        found.append(Finished(event, failed, cancelled_id))
    return found


async def age(db: asyncpg.Pool, delivery_id: int, ago: str) -> None:
    """Make a delivery, and its attempts, finish and start `ago`."""
    await db.execute(
        "UPDATE dispatcher.deliveries SET finished_at = now() - $2::text::interval WHERE id = $1",
        delivery_id,
        ago,
    )
    await db.execute(
        "UPDATE dispatcher.attempts SET started_at = now() - $2::text::interval"
        " WHERE delivery_id = $1",
        delivery_id,
        ago,
    )


async def age_event(db: asyncpg.Pool, event: str, ago: str) -> None:
    await db.execute(
        "UPDATE dispatcher.events SET created_at = now() - $2::text::interval"
        " WHERE message_id = $1::uuid",
        event,
        ago,
    )


async def where(db: asyncpg.Pool, delivery_id: int) -> tuple[str, set[str]]:
    """The partition a delivery is in, and those its attempts are in."""
    part = await db.fetchval(
        "SELECT tableoid::regclass::text FROM dispatcher.deliveries WHERE id = $1", delivery_id
    )
    attempts = await db.fetch(
        "SELECT DISTINCT tableoid::regclass::text AS part FROM dispatcher.attempts"
        " WHERE delivery_id = $1",
        delivery_id,
    )
    return part, {r["part"] for r in attempts}


async def remaining(db: asyncpg.Pool) -> tuple[set[str], set[int], set[int]]:
    """The events left, the deliveries left, and the deliveries with attempt records left."""
    events = {r[0] for r in await db.fetch("SELECT message_id::text FROM dispatcher.events")}
    deliveries = {r[0] for r in await db.fetch("SELECT id FROM dispatcher.deliveries")}
    attempted = {r[0] for r in await db.fetch("SELECT delivery_id FROM dispatcher.attempts")}
    return events, deliveries, attempted


@pytest.mark.parametrize(
    ("expired", "partition"),
    [("10 days", "legacy"), ("8 days", "default")],
)
async def test_the_sweep_deletes_failed_and_cancelled_history_past_retention(
    db: asyncpg.Pool, pool: asyncpg.Pool, expired: str, partition: str
) -> None:
    """The legacy partitions end nine days ago (as if migrated then), and no dated partition
    exists yet: rows that finished ten days ago are in the legacy partitions, eight days ago
    and later in the DEFAULT ones. Retention is a week."""
    await migrated_ago(db, 9 * 24 * 60)
    gone, kept, gone_failed, gone_cancelled = await finish_everything(db, 4)
    # Every delivery and attempt of `gone` expired; all of `kept` finished a day ago. Of the
    # last two, only the failed one, or only the cancelled one, expired.
    for delivery in (gone.failed, gone.cancelled, gone_failed.failed, gone_cancelled.cancelled):
        await age(db, delivery, expired)
    for delivery in (kept.failed, kept.cancelled, gone_failed.cancelled, gone_cancelled.failed):
        await age(db, delivery, "1 day")
    # The events are all older than retention: what refers to them decides.
    for f in (gone, kept, gone_failed, gone_cancelled):
        await age_event(db, f.event, expired)
    assert await where(db, gone.failed) == (
        f"dispatcher.deliveries_done_{partition}",
        {f"dispatcher.attempts_{partition}"},
    )
    assert await where(db, gone_cancelled.cancelled) == (
        f"dispatcher.deliveries_done_{partition}",
        {f"dispatcher.attempts_{partition}"},
    )

    swept = await sweep_once(pool, WEEK, batch=10)

    expired_ids = {gone.failed, gone.cancelled, gone_failed.failed, gone_cancelled.cancelled}
    kept_ids = {kept.failed, kept.cancelled, gone_failed.cancelled, gone_cancelled.failed}
    events, deliveries, attempted = await remaining(db)
    assert deliveries == kept_ids
    assert attempted == kept_ids  # each kept delivery has its attempts; no expired one has
    assert events == {kept.event, gone_failed.event, gone_cancelled.event}
    # Two attempts of each failed delivery, one of each cancelled one.
    assert (swept.deliveries, swept.attempts, swept.events) == (len(expired_ids), 6, 1)
    # What is left is inside retention: the next sweep finds nothing.
    assert await sweep_once(pool, WEEK, batch=10) == type(swept)(0, 0, 0)


async def test_dropped_partitions_take_failed_and_cancelled_history_with_them(
    db: asyncpg.Pool, pool: asyncpg.Pool
) -> None:
    """Dated partitions of a minute each, retention two minutes: the partitions that hold what
    finished five minutes ago are dropped whole, whatever the status of their rows, and the
    sweep then deletes the events only those rows referred to."""
    await migrated_ago(db, 10)
    # Partitions from ten minutes ago on, none dropped yet (a retention of an hour).
    hour = fast_settings(retention_s=3600, retention_partition_s=60)
    assert (await partitions.maintain(pool, hour)).dropped == []
    gone, kept, gone_failed, gone_cancelled = await finish_everything(db, 4)
    for delivery in (gone.failed, gone.cancelled, gone_failed.failed, gone_cancelled.cancelled):
        await age(db, delivery, "5 minutes")
    for delivery in (kept.failed, kept.cancelled, gone_failed.cancelled, gone_cancelled.failed):
        await age(db, delivery, "30 seconds")
    for f in (gone, kept, gone_failed, gone_cancelled):
        await age_event(db, f.event, "5 minutes")
    for delivery in (gone.failed, gone_cancelled.cancelled):
        part, attempt_parts = await where(db, delivery)
        assert part.startswith("dispatcher.deliveries_done_p")
        assert len(attempt_parts) == 1 and attempt_parts.pop().startswith("dispatcher.attempts_p")

    done = await partitions.maintain(pool, short())
    swept = await sweep_once(pool, short().retention_s, batch=10)

    assert done.dropped and not done.failed and not done.deferred
    # The rows went with their partitions, not by row: the sweep deleted only the event.
    assert (swept.deliveries, swept.attempts, swept.events) == (0, 0, 1)
    kept_ids = {kept.failed, kept.cancelled, gone_failed.cancelled, gone_cancelled.failed}
    events, deliveries, attempted = await remaining(db)
    assert deliveries == kept_ids
    assert attempted == kept_ids
    assert events == {kept.event, gone_failed.event, gone_cancelled.event}
