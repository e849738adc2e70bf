"""Read-only figures for the console's overview: outcomes per hour, queue depth, small counts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from dispatcher.store import load_queries

Q = load_queries("insights.sql")
# The console's queue figures come from the query behind `dispatcher stats` and /metrics, so the
# three always agree.
_QUEUE_STATS = load_queries("admin.sql")["queue_stats"]


@dataclass(frozen=True)
class HourOutcomes:
    """Deliveries that finished in one hour, by outcome."""

    hour: datetime
    succeeded: int
    failed: int


@dataclass(frozen=True)
class QueueDepth:
    """Pending deliveries: due now, scheduled for later, leased; and how late the oldest is."""

    due_now: int
    scheduled: int
    leased: int
    oldest_due_s: float | None

    @property
    def pending(self) -> int:
        return self.due_now + self.scheduled + self.leased


async def hourly_outcomes(conn: asyncpg.Connection, webhook_id: int | None) -> list[HourOutcomes]:
    """Return 24 hours of outcomes, oldest first, the current (partial) hour last."""
    rows = await conn.fetch(Q["hourly_outcomes"], webhook_id)
    return [HourOutcomes(r["hour"], r["succeeded"], r["failed"]) for r in rows]


async def queue_depth(conn: asyncpg.Connection) -> QueueDepth:
    row = await conn.fetchrow(_QUEUE_STATS)
    assert row is not None
    return QueueDepth(row["due_now"], row["scheduled"], row["leased"], row["oldest_due_s"])


async def pending_of_webhook(conn: asyncpg.Connection, webhook_id: int) -> int:
    """Count the deliveries that disabling or deleting this webhook would cancel."""
    count: int = await conn.fetchval(Q["pending_of_webhook"], webhook_id)
    return count


async def webhook_names(conn: asyncpg.Connection) -> list[tuple[int, str]]:
    rows = await conn.fetch(Q["webhook_names"])
    return [(r["id"], r["service_name"]) for r in rows]
