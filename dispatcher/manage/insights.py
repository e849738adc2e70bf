"""Read-only figures for the console's overview: outcomes per hour, queue depth, small counts."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from dispatcher.manage import history
from dispatcher.store import load_queries

Q = load_queries("insights.sql")
# The console's queue figures come from the query behind `dispatcher stats` and /metrics, so the
# three always agree.
_QUEUE_STATS = history.Q["queue_stats"]


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


Counts = tuple[int, int]  # (succeeded, failed)
# {hour: {webhook_id: counts}}, as OutcomeHistory.last_day returns it.
Day = dict[datetime, dict[int, Counts]]
DAY_HOURS = 24
# A delivery's finished_at is the outcome statement's now(), and the row is visible when that
# statement commits, a few milliseconds later. A minute of margin lets a count of the past
# include every such row before it is kept for good.
SETTLE = timedelta(minutes=1)


class OutcomeHistory:
    """Outcomes per hour and webhook over the last 24 hours, counted once and kept.

    Counting a day of finished deliveries costs time in proportion to the day's traffic (about
    0.9 s for 2M here), too slow for every page view at a production rate. finished_at never
    changes once written, so the past can be counted once: each call counts only what finished
    since the last one (plus the last minute again) and adds it to what it kept. One instance
    per process, shared by its requests.
    """

    def __init__(self) -> None:
        self._kept: dict[datetime, dict[int, list[int]]] = defaultdict(dict)
        # Everything that finished before this moment is in _kept.
        self._counted_to: datetime | None = None
        self._lock = asyncio.Lock()

    async def last_day(self, conn: asyncpg.Connection) -> Day:
        """Return {hour: {webhook_id: (succeeded, failed)}} for the 24 hours up to now."""
        async with self._lock:
            clock = await conn.fetchrow(Q["clock"])
            assert clock is not None
            start = clock["hour"] - timedelta(hours=DAY_HOURS - 1)
            if self._counted_to is None or self._counted_to < start:
                self._kept.clear()
                self._counted_to = start
            settled = clock["now"] - SETTLE
            if settled > self._counted_to:
                rows = await conn.fetch(Q["outcomes_by_hour"], self._counted_to, settled)
                for row in rows:
                    kept = self._kept[row["hour"]].setdefault(row["webhook_id"], [0, 0])
                    kept[0] += row["succeeded"]
                    kept[1] += row["failed"]
                self._counted_to = settled
            for hour in [h for h in self._kept if h < start]:
                del self._kept[hour]
            # Up to the clock read above: a delivery finishing after it may fall in an hour
            # past the last one shown; the next view counts it.
            fresh = await conn.fetch(Q["outcomes_by_hour"], self._counted_to, clock["now"])
        day: Day = {start + timedelta(hours=i): {} for i in range(DAY_HOURS)}
        for hour, webhooks in self._kept.items():
            day[hour] = {w: (c[0], c[1]) for w, c in webhooks.items()}
        for row in fresh:
            s, f = day[row["hour"]].get(row["webhook_id"], (0, 0))
            day[row["hour"]][row["webhook_id"]] = (s + row["succeeded"], f + row["failed"])
        return day

    async def hourly(self, conn: asyncpg.Connection, webhook_id: int | None) -> list[HourOutcomes]:
        """Return 24 hours of outcomes, oldest first, of one webhook or of all of them."""
        return hourly_series(await self.last_day(conn), webhook_id)

    async def per_webhook(self, conn: asyncpg.Connection) -> dict[int, Counts]:
        """Return each webhook's (succeeded, failed) over the 24 hours."""
        return webhook_totals(await self.last_day(conn))


def hourly_series(day: Day, webhook_id: int | None) -> list[HourOutcomes]:
    """One webhook's outcomes per hour of `day` (all webhooks' when None), oldest first."""
    series = []
    for hour, webhooks in sorted(day.items()):
        picked = webhooks.values() if webhook_id is None else [webhooks.get(webhook_id, (0, 0))]
        series.append(HourOutcomes(hour, sum(c[0] for c in picked), sum(c[1] for c in picked)))
    return series


def webhook_totals(day: Day) -> dict[int, Counts]:
    """Each webhook's (succeeded, failed) summed over the hours of `day`."""
    totals: dict[int, Counts] = {}
    for webhooks in day.values():
        for webhook_id, (s, f) in webhooks.items():
            old = totals.get(webhook_id, (0, 0))
            totals[webhook_id] = (old[0] + s, old[1] + f)
    return totals


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
