"""asyncpg access: one coroutine per named query in sql/queries.sql."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

import asyncpg
import orjson

from dispatcher.settings import Settings

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


def database_target(dsn: str) -> str:
    """Say where `dsn` connects, as host:port or a socket path; never the user or password."""
    try:
        parts = urlsplit(dsn)
        params = dict(parse_qsl(parts.query))
    except ValueError:
        return "an unreadable database URL"
    hosts = params.get("host") or unquote(parts.netloc.rpartition("@")[2])
    hosts = hosts or os.environ.get("PGHOST", "")
    default_port = params.get("port") or os.environ.get("PGPORT") or "5432"
    if not hosts:
        return f"the default local socket or localhost:{default_port}"
    targets = []
    for spec in hosts.split(","):
        if spec.startswith("/"):
            # A socket directory: the server listens on .s.PGSQL.<port> inside it.
            targets.append(f"{spec.rstrip('/')}/.s.PGSQL.{default_port}")
            continue
        host, port = spec, ""
        if spec.startswith("["):
            host, _, rest = spec[1:].partition("]")
            port = rest.removeprefix(":")
            host = f"[{host}]"
        elif spec.count(":") == 1:
            host, _, port = spec.partition(":")
        targets.append(f"{host or 'localhost'}:{port or default_port}")
    return ", ".join(targets)


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
_QUEUE_STATS = load_queries("history.sql")["queue_stats"]


# Not frozen: a frozen dataclass builds five times slower, and one is built per attempt.
@dataclass(slots=True)
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
    retry_policy: str | None = None  # None: the daemon's default
    # The lease's deadline, as the database set it: the outcome write tells by it whether
    # the lease is still counted against the webhook's cap (see record_outcomes).
    lease_until: datetime | None = None


# Not frozen: a frozen dataclass builds five times slower, and one is built per attempt.
@dataclass(slots=True)
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
    webhook_id: int
    retry_reason: str | None  # why this retry is when it is, or why there is none
    breaker: bool  # a failure that counts toward the webhook's circuit breaker
    lease_until: datetime | None = None  # the lease's deadline (None: counted, whatever it was)


@dataclass(frozen=True, slots=True)
class HealthRules:
    """The thresholds record_outcomes applies to each webhook's health row."""

    breaker_threshold: int
    breaker_cooloff_s: float
    breaker_cooloff_max_s: float
    failing_after_s: float
    auto_disable_after_s: float
    auto_disable_min_attempts: int

    @classmethod
    def from_settings(cls, s: Settings) -> HealthRules:
        return cls(
            s.breaker_threshold,
            s.breaker_cooloff_s,
            s.breaker_cooloff_max_s,
            s.failing_after_s,
            s.auto_disable_after_s,
            s.auto_disable_min_attempts,
        )


# Every daemon connection plans like an OLTP engine: index scans and nested loops only. Each hot
# statement (lease, outcome write, lease release, retention sweep) is written so that a path
# bounded by its batch exists; these settings take away the alternatives a planner may prefer
# on stale statistics (a scan of a table it thinks empty, a bitmap scan and sort of one it thinks
# small, a hash join against a whole table), which cost O(backlog) per call. They penalise those
# paths rather than forbid them, so a statement with no index path still runs. With no other
# choice left, a generic plan is as good as a custom one, and replanning the lease each call
# would cost more than running it, so plans are built once per connection.
# synchronous_commit=off is safe for at-least-once delivery: a database crash can lose only the
# last moments of outcome writes, and those deliveries are simply sent again. Events are
# committed by the producers' own transactions, with their own settings.
HOT_SETTINGS = {
    "synchronous_commit": "off",
    "enable_seqscan": "off",
    "enable_bitmapscan": "off",
    "plan_cache_mode": "force_generic_plan",
}

# The lease visits at most this many webhooks with pending rows per call, resuming after the last
# one next time; more than this many due at once are served round-robin over several leases.
MAX_WEBHOOKS_PER_LEASE = 1000

# How soon the lease looks again at a webhook held back by its cap over all instances. The slot
# it waits for is freed by another instance's outcome write, which wakes nobody here, so this is
# a poll: short enough that a freed slot idles briefly next to a request of 100 ms or more, long
# enough that instances waiting on a capped webhook lease at most 20 times a second each.
CAP_RECHECK_S = 0.05

Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool


async def create_pool(dsn: str, max_size: int) -> asyncpg.Pool:
    """Open the daemon's pool for everything off the hot path (retention, metrics, probes)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        server_settings={"application_name": APPLICATION_NAME, **HOT_SETTINGS},
    )
    assert pool is not None
    return pool


class DedicatedConnection:
    """One connection owned by one task, for its hot statements: no pool acquire or reset each.

    It opens on first use and again after it was lost; the caller backs off on the error.
    """

    def __init__(self, dsn: str, role: str) -> None:
        self._dsn = dsn
        self._name = f"{APPLICATION_NAME}-{role}"
        # For log lines: where it connects, without credentials.
        self.target = database_target(dsn)
        self._conn: asyncpg.Connection | None = None

    async def get(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            self._conn = await asyncpg.connect(
                self._dsn, server_settings={"application_name": self._name, **HOT_SETTINGS}
            )
        return self._conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=2)
            except TRANSIENT_DB_ERRORS:
                conn.terminate()


@dataclass(frozen=True, slots=True)
class Lease:
    """What one lease call returned: the rows, and what the loop needs to plan the next call."""

    deliveries: list[LeasedDelivery]
    # Seconds until the earliest pending row is due (<= 0: due now); None: nothing pending.
    next_due_s: float | None
    # Where the next lease resumes its walk over webhooks (0: from the start).
    next_cursor: int
    # The cap of each webhook leased for: its max_concurrency, or the default cap given.
    caps: dict[int, int]


async def lease_batch(
    db: Executor,
    limit: int,
    lease_s: float,
    in_flight: Mapping[int, int] | None = None,
    per_webhook_cap: int = 2**31 - 1,
    cursor: int = 0,
    max_webhooks: int = MAX_WEBHOOKS_PER_LEASE,
    held: Sequence[int] = (),
    caps: Mapping[int, int] | None = None,
) -> Lease:
    """Lease up to `limit` due deliveries, interleaved across webhooks, no more per webhook than
    its free slots, here and over all instances.

    `in_flight` maps webhook ids to the attempts this process has in flight for them, `caps`
    their caps as the last lease returned them (`per_webhook_cap` for a webhook missing there,
    and in the database for a webhook without a max_concurrency of its own); `held` lists
    webhooks to leave alone this time.
    """
    busy = in_flight or {}
    known = caps or {}
    free_of = {w: known.get(w, per_webhook_cap) - n for w, n in busy.items()}
    saturated = [w for w, free in free_of.items() if free <= 0]
    saturated.extend(held)
    busy_ids = [w for w, free in free_of.items() if free > 0]
    free = [free_of[w] for w in busy_ids]
    token = uuid.uuid4()
    rows = await db.fetch(
        QUERIES["lease_batch"],
        limit,
        lease_s,
        saturated,
        token,
        busy_ids,
        free,
        per_webhook_cap,
        cursor,
        max_webhooks,
        CAP_RECHECK_S,
    )
    first = rows[0]
    if first["id"] is None:
        return Lease([], first["next_due_s"], first["next_cursor"], {})
    # By position, in the order of the query's SELECT list: a name lookup per column costs more.
    deliveries = [
        LeasedDelivery(
            r[2], str(r[3]), r[4], r[5], token, r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[14]
        )
        for r in rows
    ]
    return Lease(deliveries, first["next_due_s"], first["next_cursor"], {r[4]: r[13] for r in rows})


async def write_outcomes(
    db: Executor, outcomes: Sequence[OutcomeRow], rules: HealthRules
) -> tuple[set[int], list[dict[str, Any]]]:
    """Write a batch of outcomes in one statement.

    Return the delivery ids still leased to us (the rest were refused), and the webhooks whose
    health changed in a way the daemon acts on or reports (see record_outcomes).
    """
    columns: list[list[Any]] = [[] for _ in range(13)]
    for o in outcomes:
        for column, value in zip(columns, _outcome_values(o), strict=True):
            column.append(value)
    row = await db.fetchrow(
        QUERIES["record_outcomes"],
        *columns,
        *_health_columns(outcomes),
        [o.delivery_id for o in outcomes if o.status != "succeeded"],
        rules.breaker_threshold,
        rules.breaker_cooloff_s,
        rules.breaker_cooloff_max_s,
        rules.failing_after_s,
        rules.auto_disable_after_s,
        rules.auto_disable_min_attempts,
        [o.lease_until for o in outcomes],
    )
    attention = orjson.loads(row["attention"]) if row["attention"] else []
    return set(row["written"]), attention


class _Streaks:
    """What one batch did to one webhook's streaks; see record_outcomes' `batch`."""

    __slots__ = ("any_ok", "any_reset", "breaker", "error", "failures", "first", "last")

    def __init__(self) -> None:
        self.any_ok = self.any_reset = False
        self.failures = self.breaker = 0
        self.first: datetime | None = None
        self.last: datetime | None = None
        self.error: str | None = None


def _health_columns(outcomes: Sequence[OutcomeRow]) -> list[list[Any]]:
    """Sum a batch up per webhook, in the order its attempts finished: a few entries for the
    database to apply, instead of a grouping of every row in SQL. Webhooks come in id order,
    the order every writer locks health rows in."""
    streaks: dict[int, _Streaks] = {}
    for o in outcomes:
        s = streaks.get(o.webhook_id)
        if s is None:
            s = streaks[o.webhook_id] = _Streaks()
        if o.status == "succeeded":
            s.any_ok = True
            s.failures = 0
            s.first = None
        else:
            s.failures += 1
            s.first = s.first or o.started_at
            s.last = o.started_at if s.last is None else max(s.last, o.started_at)
            s.error = o.error_message or f"HTTP {o.response_status}"
        if o.breaker:
            s.breaker += 1
        else:
            s.any_reset = True
            s.breaker = 0
    streaks = dict(sorted(streaks.items()))
    return [
        list(streaks),
        [s.any_ok for s in streaks.values()],
        [s.any_reset for s in streaks.values()],
        [s.failures for s in streaks.values()],
        [s.first for s in streaks.values()],
        [s.last for s in streaks.values()],
        [s.error for s in streaks.values()],
        [s.breaker for s in streaks.values()],
    ]


async def record_outcomes(
    db: Executor, outcomes: Sequence[OutcomeRow], rules: HealthRules | None = None
) -> int:
    """Write a batch of outcomes; return how many leases were still ours."""
    written, _ = await write_outcomes(db, outcomes, rules or HealthRules.from_settings(Settings()))
    return len(written)


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
        o.retry_reason,
    )


async def release_leases(db: Executor, leases: Sequence[LeasedDelivery]) -> None:
    """Hand back leased rows that were never attempted."""
    if leases:
        await db.execute(
            QUERIES["release_leases"],
            [d.id for d in leases],
            [d.lease_token for d in leases],
            [d.lease_until for d in leases],
        )


async def set_limit(pool: asyncpg.Pool, name: str, value: int) -> None:
    """Store a limit the database enforces (see migration 003)."""
    await pool.execute(QUERIES["set_limit"], name, value)


async def ping(pool: asyncpg.Pool) -> None:
    """Make one round trip through the pool; raise if the database does not answer."""
    await pool.fetchval(QUERIES["ping"])


async def health_stats(pool: asyncpg.Pool) -> asyncpg.Record:
    """Count webhooks whose breaker is open, and active webhooks failing now."""
    row: asyncpg.Record = await pool.fetchrow(QUERIES["health_stats"])
    return row


async def queue_stats(pool: asyncpg.Pool) -> asyncpg.Record:
    """Count pending deliveries due now, scheduled and leased: what `dispatcher stats` shows."""
    row: asyncpg.Record = await pool.fetchrow(_QUEUE_STATS)
    return row
