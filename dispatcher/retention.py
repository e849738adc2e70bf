"""Retention: delete finished deliveries, their attempts and unreferenced events after a while."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
import structlog

from dispatcher.outcomes import Backoff, describe
from dispatcher.settings import Settings
from dispatcher.store import QUERIES, TRANSIENT_DB_ERRORS

log = structlog.get_logger("dispatcher.retention")


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
    deliveries = await _sweep(pool, "sweep_deliveries", retention_s, batch)
    events = await _sweep(pool, "sweep_events", retention_s, batch)
    return Swept(deliveries, events)


async def _sweep(pool: asyncpg.Pool, query: str, retention_s: float, batch: int) -> int:
    """Run a batched delete until a batch comes back short; return the rows deleted."""
    total = 0
    while True:
        n = _count(await pool.execute(QUERIES[query], retention_s, batch))
        total += n
        if n < batch:
            return total
        await asyncio.sleep(0)


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
