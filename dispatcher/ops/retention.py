"""Retention: history partitions dropped whole, stray history rows and old events deleted."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import structlog

from dispatcher.delivery.outcomes import Backoff, describe
from dispatcher.ops import partitions
from dispatcher.settings import Settings
from dispatcher.store import QUERIES, TRANSIENT_DB_ERRORS

log = structlog.get_logger("dispatcher.ops.retention")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Swept:
    deliveries: int = 0
    events: int = 0
    attempts: int = 0


def _count(status: str) -> int:
    """Rows affected, from a command tag such as 'DELETE 1000'."""
    return int(status.rsplit(" ", 1)[-1])


async def sweep_once(pool: asyncpg.Pool, retention_s: float, batch: int) -> Swept:
    """Delete the rows past retention that no partition drop removes, one small batch per
    statement: finished deliveries and attempts in the legacy and DEFAULT partitions, and events
    no delivery refers to.

    Each statement is its own short transaction, so a sweep of millions of rows never holds
    locks or a snapshot for long, and the lease loop runs between batches.
    """
    done_bound = await partitions.sweep_bound(pool, partitions.HISTORY_TABLES[0])
    deliveries = 0
    while True:
        status = await pool.execute(QUERIES["sweep_deliveries"], retention_s, batch, done_bound)
        n = _count(status)
        deliveries += n
        if n < batch:
            break
        await asyncio.sleep(0)
    attempts_bound = await partitions.sweep_bound(pool, partitions.HISTORY_TABLES[1])
    attempts = 0
    while True:
        row = await pool.fetchrow(QUERIES["sweep_attempts"], retention_s, batch, attempts_bound)
        attempts += row["deleted"]
        if row["examined"] < batch:
            break
        await asyncio.sleep(0)
    events = 0
    after: tuple[datetime, uuid.UUID] = (_EPOCH, uuid.UUID(int=0))
    while True:
        row = await pool.fetchrow(QUERIES["sweep_events"], retention_s, batch, *after)
        events += row["deleted"]
        if row["examined"] < batch:
            break
        after = (row["last_created_at"], row["last_message_id"])
        await asyncio.sleep(0)
    return Swept(deliveries, events, attempts)


async def run_retention(pool: asyncpg.Pool, settings: Settings) -> None:
    """Every retention_interval_s until cancelled: maintain the partitions, then sweep."""
    backoff = Backoff()
    while True:
        try:
            await partitions.maintain(pool, settings)
            swept = await sweep_once(pool, settings.retention_s, settings.retention_batch_size)
        except TRANSIENT_DB_ERRORS as exc:
            delay = backoff.next()
            log.warning("retention_sweep_failed", error=describe(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            continue
        backoff.reset()
        if swept.deliveries or swept.attempts or swept.events:
            log.info(
                "retention_swept",
                deliveries=swept.deliveries,
                attempts=swept.attempts,
                events=swept.events,
            )
        await asyncio.sleep(settings.retention_interval_s)
