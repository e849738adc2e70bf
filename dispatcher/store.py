"""asyncpg access: one coroutine per named query in sql/queries.sql."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import asyncpg

APPLICATION_NAME = "webhook-dispatcher"

# Errors that mean "the database is not reachable right now": back off and try again.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    # Seen when the server goes away mid-protocol during a restart.
    asyncpg.exceptions.InternalClientError,
)


def load_queries(filename: str) -> dict[str, str]:
    """Split a file of `-- name: x` sections into {name: sql}.

    A section may use another section as a fragment by writing `{other_name}`; only these
    static, packaged fragments are ever formatted into SQL, never values.
    """
    text = resources.files("dispatcher.sql").joinpath(filename).read_text()
    parts = re.split(r"^-- name: (\w+)\n", text, flags=re.MULTILINE)
    raw = {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
    fragments = {name: _strip_comments(body) for name, body in raw.items()}
    return {
        name: re.sub(r"\{(\w+)\}", lambda m: fragments[m[1]], body) for name, body in raw.items()
    }


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))


QUERIES = load_queries("queries.sql")
# The queue gauges use the query behind `dispatcher stats`, so the two always agree.
_QUEUE_STATS = load_queries("admin.sql")["queue_stats"]


@dataclass(frozen=True, slots=True)
class LeasedDelivery:
    """One delivery this process holds a lease on, with what it needs to send it."""

    id: int
    message_id: str
    webhook_id: int
    attempt: int
    lease_token: uuid.UUID
    event_type: str
    payload: str
    created_at: datetime
    url: str
    secret: str
    previous_secret: str | None = None


@dataclass(frozen=True, slots=True)
class OutcomeRow:
    """The result of one attempt, as written by record_outcomes."""

    delivery_id: int
    lease_token: uuid.UUID
    status: str  # 'pending' (retry), 'succeeded' or 'failed'
    retry_in_s: float
    attempt: int
    started_at: datetime
    duration_ms: int
    response_status: int | None
    response_body: str | None
    response_truncated: bool
    error_kind: str | None
    error_message: str | None


async def create_pool(dsn: str, max_size: int) -> asyncpg.Pool:
    """Open the daemon's pool; outcome commits need not wait for the WAL flush.

    synchronous_commit=off is safe for at-least-once delivery: a database crash can lose only
    the last moments of outcome writes, and those deliveries are simply sent again. Events are
    committed by the producers' own transactions, with their own settings.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        server_settings={"application_name": APPLICATION_NAME, "synchronous_commit": "off"},
    )
    assert pool is not None
    return pool


async def lease_batch(
    pool: asyncpg.Pool,
    limit: int,
    lease_s: float,
    in_flight: Mapping[int, int] | None = None,
    per_webhook_cap: int = 2**31 - 1,
) -> list[LeasedDelivery]:
    """Lease up to `limit` due deliveries, no more per webhook than its free slots.

    `in_flight` maps webhook ids to the attempts this process has in flight for them.
    """
    busy = in_flight or {}
    saturated = [w for w, n in busy.items() if n >= per_webhook_cap]
    busy_ids = [w for w, n in busy.items() if n < per_webhook_cap]
    free = [per_webhook_cap - busy[w] for w in busy_ids]
    token = uuid.uuid4()
    rows = await pool.fetch(
        QUERIES["lease_batch"], limit, lease_s, saturated, token, busy_ids, free, per_webhook_cap
    )
    return [
        LeasedDelivery(
            id=r["id"],
            message_id=str(r["message_id"]),
            webhook_id=r["webhook_id"],
            attempt=r["attempts"],
            lease_token=token,
            event_type=r["event_type"],
            payload=r["payload"],
            created_at=r["created_at"],
            url=r["url"],
            secret=r["secret"],
            previous_secret=r["previous_secret"],
        )
        for r in rows
    ]


async def write_outcomes(pool: asyncpg.Pool, outcomes: Sequence[OutcomeRow]) -> set[int]:
    """Write a batch of outcomes in one statement; return the delivery ids still leased to us."""
    columns: list[list[Any]] = [[] for _ in range(12)]
    for o in outcomes:
        for column, value in zip(columns, _outcome_values(o), strict=True):
            column.append(value)
    written: list[int] = await pool.fetchval(QUERIES["record_outcomes"], *columns)
    return set(written)


async def record_outcomes(pool: asyncpg.Pool, outcomes: Sequence[OutcomeRow]) -> int:
    """Write a batch of outcomes; return how many leases were still ours."""
    return len(await write_outcomes(pool, outcomes))


def _outcome_values(o: OutcomeRow) -> tuple[Any, ...]:
    return (
        o.delivery_id,
        o.lease_token,
        o.status,
        o.retry_in_s,
        o.attempt,
        o.started_at,
        o.duration_ms,
        o.response_status,
        o.response_body,
        o.response_truncated,
        o.error_kind,
        o.error_message,
    )


async def release_leases(pool: asyncpg.Pool, leases: Sequence[LeasedDelivery]) -> None:
    """Hand back leased rows that were never attempted."""
    if leases:
        await pool.execute(
            QUERIES["release_leases"], [d.id for d in leases], [d.lease_token for d in leases]
        )


async def set_limit(pool: asyncpg.Pool, name: str, value: int) -> None:
    """Store a limit the database enforces (see migration 003)."""
    await pool.execute(QUERIES["set_limit"], name, value)


async def ping(pool: asyncpg.Pool) -> None:
    """Make one round trip through the pool; raise if the database does not answer."""
    await pool.fetchval(QUERIES["ping"])


async def queue_stats(pool: asyncpg.Pool) -> asyncpg.Record:
    """Count pending deliveries due now, scheduled and leased: what `dispatcher stats` shows."""
    row: asyncpg.Record = await pool.fetchrow(_QUEUE_STATS)
    return row


async def seconds_until_next_due(pool: asyncpg.Pool) -> float | None:
    value: float | None = await pool.fetchval(QUERIES["seconds_until_next_due"])
    return value
