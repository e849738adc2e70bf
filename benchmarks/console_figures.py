"""What the console's 24 h figures cost: a day of finished deliveries, counted each view or kept.

Seeds a fresh database with N deliveries that finished over the last 24 hours (3 % failed,
spread over 10 webhooks), then times, as medians of --repeat runs:
- the full counts the CLI and the API run on every call (`hourly_outcomes` overall and for one
  webhook, and `list_webhooks`' 24 h counts);
- the console's OutcomeHistory on its first view (it reads the whole day) and on later views.

    DISPATCHER_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python -m benchmarks.console_figures --deliveries 2000000
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from benchmarks.workload import db_name, fresh_database
from dispatcher.manage import admin, insights

SEED_SQL = """
WITH e AS (
    INSERT INTO dispatcher.events (event_type, payload, created_at)
    SELECT 'bench.type', '{}', now() - random() * interval '24 hours'
    FROM generate_series(1, $1)
    RETURNING message_id, created_at
)
INSERT INTO dispatcher.deliveries (message_id, webhook_id, status, attempts, run_at,
                                   created_at, finished_at)
SELECT message_id, 1 + (random() * 9)::int,
       CASE WHEN random() < 0.03 THEN 'failed' ELSE 'succeeded' END, 1,
       created_at, created_at, created_at + interval '1 second'
FROM e"""


async def timed(work: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await work()
    return (time.perf_counter() - started) * 1000


async def main(deliveries: int, repeat: int) -> None:
    admin_dsn = os.environ["DISPATCHER_DATABASE_URL"]
    async with fresh_database(admin_dsn, db_name(0)) as pool, pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO dispatcher.webhooks (service_name, url, event_types)"
            " SELECT 'w' || i, 'https://x.example/' || i, '{other.type}'"
            " FROM generate_series(1, 10) i"
        )
        started = time.perf_counter()
        await conn.execute(SEED_SQL, deliveries)
        await conn.execute("VACUUM ANALYZE dispatcher.deliveries")
        print(f"seeded {deliveries:,} finished deliveries in {time.perf_counter() - started:.0f} s")

        async def full_counts() -> None:
            await insights.hourly_outcomes(conn, None)
            await insights.hourly_outcomes(conn, 3)
            await admin.list_webhooks(conn, timedelta(days=1))

        async def kept_counts(history: insights.OutcomeHistory) -> None:
            await history.hourly(conn, None)
            await history.hourly(conn, 3)
            await history.per_webhook(conn)

        full = [await timed(full_counts) for _ in range(repeat)]
        first, later = [], []
        for _ in range(repeat):
            history = insights.OutcomeHistory()
            first.append(await timed(functools.partial(kept_counts, history)))
            later.append(await timed(functools.partial(kept_counts, history)))
    print(f"medians of {repeat} runs, one page's figures (overall chart, one webhook, the list):")
    print(f"  counted every time (CLI, API):       {statistics.median(full):9.1f} ms")
    print(f"  console, first view after a start:  {statistics.median(first):9.1f} ms")
    print(f"  console, later views:                {statistics.median(later):9.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.deliveries, args.repeat))
