"""Retention: delete finished deliveries, their attempts and unreferenced events after a while."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import structlog

from dispatcher.delivery.outcomes import Backoff, describe
from dispatcher.settings import Settings
from dispatcher.store import QUERIES, TRANSIENT_DB_ERRORS

log = structlog.get_logger("dispatcher.ops.retention")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Swept:
    deliveries: int = 0
    events: int = 0


def _count(status: str) -> int:
    """Rows affected, from a command tag such as 'DELETE 1000'."""
    return int(status.rsplit(" ", 1)[-1])


async def sweep_once(pool: asyncpg.Pool, retention_s: float, batch: int) -> Swept:
    """Delete everything past retention, one small batch per statement.

    Each statement is its own short transaction, so a sweep of millions of rows never holds
    locks or a snapshot for long, and the lease loop runs between batches.
    """
    deliveries = 0
    while True:
        n = _count(await pool.execute(QUERIES["sweep_deliveries"], retention_s, batch))
        deliveries += n
        if n < batch:
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
    return Swept(deliveries, events)


async def run_retention(pool: asyncpg.Pool, settings: Settings) -> None:
    """Sweep every retention_interval_s until cancelled."""
    backoff = Backoff()
    while True:
        try:
            swept = await sweep_once(pool, settings.retention_s, settings.retention_batch_size)
        except TRANSIENT_DB_ERRORS as exc:
            delay = backoff.next()
            log.warning("retention_sweep_failed", error=describe(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            continue
        backoff.reset()
        if swept.deliveries or swept.events:
            log.info("retention_swept", deliveries=swept.deliveries, events=swept.events)
        await asyncio.sleep(settings.retention_interval_s)
