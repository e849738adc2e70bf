"""The benchmark's database side: a fresh migrated database, its webhooks and its backlog."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from dispatcher.ops import migrate

# The payload of event g; its text form (jsonb's) is also what the bare client sends.
PAYLOAD_SQL = """jsonb_build_object(
    'seq', g, 'amount_cents', (g::bigint * 7919) % 100000, 'currency', 'EUR',
    'customer', 'cus_' || lpad((g % 9973)::text, 8, '0'), 'note', repeat('x', 64))"""
# Webhook i takes types i, i-1, ..., i-K+1 (mod N): every type has exactly K subscribers.
CREATE_WEBHOOKS_SQL = """
INSERT INTO dispatcher.webhooks (service_name, url, event_types)
SELECT 'bench-' || i, $1 || '/hooks/' || i,
       ARRAY(SELECT 'bench.type_' || ((i - j + $2) % $2) FROM generate_series(0, $3 - 1) AS j)
FROM generate_series(0, $2 - 1) AS i"""
INSERT_EVENTS_SQL = f"""
INSERT INTO dispatcher.events (event_type, payload)
SELECT 'bench.type_' || (g % $2), {PAYLOAD_SQL}
FROM generate_series(0, $1 - 1) AS g"""
# Webhook i is at /hooks/i and takes bench.type_i (with fan-out 1). Fairness runs two webhooks:
# A (/hooks/0) gets the backlog, all of one type; B (/hooks/1) gets the probes, of the other.
BACKLOG_TYPE, PROBE_TYPE = "bench.type_0", "bench.type_1"
PUBLISH_SQL = "SELECT dispatcher.publish($1, $2::jsonb)::text"
PENDING_SQL = "SELECT count(*) FROM dispatcher.deliveries WHERE status = 'pending'"
DELIVERIES_SQL = "SELECT count(*) FROM dispatcher.deliveries"
CREATED_SQL = "SELECT message_id::text, extract(epoch FROM created_at) FROM dispatcher.events"
OUTCOMES_SQL = """
SELECT count(*) FILTER (WHERE attempts > 1) AS retried,
       count(*) FILTER (WHERE status <> 'succeeded') AS failed
FROM dispatcher.deliveries"""
DEAD_TUPLES_SQL = """
SELECT n_dead_tup FROM pg_stat_user_tables
WHERE schemaname = 'dispatcher' AND relname = 'deliveries'"""


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


def db_name(index: int) -> str:
    return f"dispatcher_bench_{os.getpid()}_{index}"


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str, name: str) -> AsyncIterator[asyncpg.Pool]:
    """Create and migrate database `name`; yield a small pool on it; drop it after."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        pool = await asyncpg.create_pool(with_database(admin_dsn, name), min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                await migrate.apply_migrations(conn)
            yield pool
        finally:
            await pool.close()
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def server_info(admin_dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(admin_dsn)
    try:
        names = ("server_version", "shared_buffers", "fsync", "synchronous_commit", "autovacuum")
        values: dict[str, Any] = {n: await conn.fetchval(f"SHOW {n}") for n in names}
    finally:
        await conn.close()
    values["embedded"] = not os.environ.get("DISPATCHER_DATABASE_URL")
    return values


@contextlib.asynccontextmanager
async def holding_xmin(dsn: str, seconds: float) -> AsyncIterator[None]:
    """Hold a REPEATABLE READ snapshot open for `seconds` (or until the block ends).

    While it is held, VACUUM cannot remove the dead row versions every lease and outcome
    leaves behind: the queue-bloat case a lease query has to survive.
    """
    if not seconds:
        yield
        return
    conn = await asyncpg.connect(dsn)
    tx = conn.transaction(isolation="repeatable_read")
    await tx.start()
    await conn.fetchval(DELIVERIES_SQL)  # takes the snapshot

    async def release_later() -> None:
        await asyncio.sleep(seconds)
        await tx.rollback()

    releaser = asyncio.create_task(release_later())
    try:
        yield
    finally:
        releaser.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await releaser
        await conn.close()
