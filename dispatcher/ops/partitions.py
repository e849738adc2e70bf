"""History partitions: make them ahead of time, move strays out of DEFAULT, drop expired ones.

Finished deliveries and attempt records live in range partitions of `retention_partition_s`
each (migration 008). Dropping a partition is how history expires, so retention costs no row
deletes and leaves no dead tuples. Each step is its own short transaction that

- takes a transaction-level advisory lock, or leaves the work to the instance holding it;
- waits at most LOCK_TIMEOUT for a table lock: DDL queued behind a long reader of the history
  (a report in a REPEATABLE READ transaction, say) would make every outcome write queue behind
  it, so it gives up instead, logs `partition_maintenance_deferred` and tries next cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from dispatcher.settings import Settings
from dispatcher.store import load_queries

log = structlog.get_logger("dispatcher.ops.partitions")

SQL = load_queries("partitions.sql")

# Any constant works; it only has to be the same for every instance sharing a database.
MAINTENANCE_LOCK_KEY = 0x7061727469746E  # "partitn"
# Long enough for a lock that is free a moment later, short enough that what queues behind
# the DDL (outcome writes into the history) hardly notices.
LOCK_TIMEOUT = "200ms"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class HistoryTable:
    """A range-partitioned history table and the column its partitions are ranges of."""

    name: str
    key: str

    @property
    def default(self) -> str:
        return f"{self.name}_default"


HISTORY_TABLES = (
    HistoryTable("deliveries_done", "finished_at"),
    HistoryTable("attempts", "started_at"),
)


@dataclass
class Maintained:
    """What one maintenance pass did."""

    created: list[str] = field(default_factory=list)
    moved: int = 0  # rows moved out of a DEFAULT partition into a new one
    dropped: list[str] = field(default_factory=list)
    deferred: bool = False  # a lock was not free within LOCK_TIMEOUT: next cycle
    failed: bool = False  # any other database error: logged, and next cycle
    busy: bool = False  # another instance was maintaining


@dataclass(frozen=True)
class Partition:
    name: str
    is_default: bool
    lower: datetime | None  # None: MINVALUE (the legacy partition) or DEFAULT
    upper: datetime | None


def next_boundary(after: datetime, interval_s: float) -> datetime:
    """Return the first multiple of `interval_s` since the Unix epoch later than `after`."""
    step = round(interval_s * 1_000_000)
    elapsed = (after - _EPOCH) // _MICROSECOND
    return _EPOCH + (elapsed // step + 1) * step * _MICROSECOND


def ranges_to_create(
    frontier: datetime | None, now: datetime, interval_s: float, ahead_s: float
) -> list[tuple[datetime, datetime]]:
    """Return the ranges to add so partitions cover up to `now + ahead_s`.

    Each starts where the last one ends (the frontier; with none yet, at `now` rounded down to
    the interval) and ends at the next multiple of the interval since the epoch, so a changed
    interval or a frontier off the grid (the legacy partition's) lines up after one partition.
    """
    start = frontier
    if start is None:
        start = next_boundary(now, interval_s) - timedelta(seconds=interval_s)
    goal = now + timedelta(seconds=ahead_s)
    ranges = []
    while start < goal:
        end = next_boundary(start, interval_s)
        ranges.append((start, end))
        start = end
    return ranges


def partition_name(table: str, lower: datetime) -> str:
    """Name a range partition after its lower bound in UTC: deliveries_done_p20261130t0900."""
    at = lower.astimezone(UTC)
    name = f"{table}_p{at:%Y%m%dt%H%M}"
    if at.second or at.microsecond:
        name += f"{at:%S}"
    if at.microsecond:
        name += f"_{at:%f}"
    return name


def ahead_s(settings: Settings) -> float:
    """How far past now partitions must reach after a pass: the next pass comes well before."""
    return max(2 * settings.partition_s, 2 * settings.retention_interval_s)


async def _partitions(
    conn: asyncpg.Connection, table: HistoryTable
) -> tuple[list[Partition], datetime]:
    rows = await conn.fetch(SQL["history_partitions"], table.name)
    found = [Partition(r["name"], r["is_default"], r["lower"], r["upper"]) for r in rows]
    now: datetime = rows[0]["now"] if rows else await conn.fetchval("SELECT now()")
    return found, now


def frontier(partitions: list[Partition]) -> datetime | None:
    """Return the highest upper bound among the range partitions, or None if there are none."""
    uppers = [p.upper for p in partitions if p.upper is not None]
    return max(uppers) if uppers else None


def oldest_lower_bound(partitions: list[Partition]) -> datetime | None:
    """Return the lowest lower bound among the regular range partitions (not legacy, not
    DEFAULT): older rows can only be in those two, which the retention sweep deletes from."""
    lowers = [p.lower for p in partitions if p.lower is not None]
    return min(lowers) if lowers else None


async def _step(
    pool: asyncpg.Pool, table: HistoryTable, settings: Settings, done: Maintained
) -> bool:
    """Make or drop one partition of `table` in one transaction; return False when none is due."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(SQL["try_maintenance_lock"], MAINTENANCE_LOCK_KEY):
            done.busy = True
            return False
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        partitions, now = await _partitions(conn, table)
        todo = ranges_to_create(frontier(partitions), now, settings.partition_s, ahead_s(settings))
        if todo:
            lower, upper = todo[0]
            name = partition_name(table.name, lower)
            ddl = await conn.fetchrow(
                SQL["partition_ddl"], table.name, name, table.key, lower, upper, table.default
            )
            await conn.execute(ddl["lock_parent"])
            await conn.execute(ddl["create_table"])
            moved = int((await conn.execute(ddl["move_rows"])).rsplit(" ", 1)[-1])
            await conn.execute(ddl["attach"])
            done.created.append(name)
            done.moved += moved
            return True
        cutoff = now - timedelta(seconds=settings.retention_s)
        for p in partitions:
            if not p.is_default and p.upper is not None and p.upper <= cutoff:
                await conn.execute(await conn.fetchval(SQL["drop_partition_ddl"], p.name))
                done.dropped.append(p.name)
                return True
    return False


async def maintain(pool: asyncpg.Pool, settings: Settings) -> Maintained:
    """Bring every history table's partitions up to date: create ahead, then drop expired."""
    done = Maintained()
    try:
        for table in HISTORY_TABLES:
            while await _step(pool, table, settings, done):
                pass
            if done.busy:
                break
    except asyncpg.exceptions.LockNotAvailableError as exc:
        done.deferred = True
        log.warning(
            "partition_maintenance_deferred",
            reason=str(exc),
            lock_timeout=LOCK_TIMEOUT,
            note="a long transaction holds a lock on the history; trying again next cycle",
        )
    except asyncpg.PostgresError as exc:
        # Not a reason to stop delivering: finished rows go to the DEFAULT partition meanwhile,
        # and the retention sweep deletes them there by row, as before partitioning.
        done.failed = True
        log.error(
            "partition_maintenance_failed",
            error=f"{type(exc).__name__}: {exc}",
            note="history goes to the DEFAULT partitions until this is fixed; retrying next cycle",
        )
    if done.created or done.dropped:
        log.info(
            "partitions_maintained", created=done.created, dropped=done.dropped, moved=done.moved
        )
    return done


async def sweep_bound(pool: asyncpg.Pool, table: HistoryTable) -> datetime | None:
    """Return the lower bound of `table`'s oldest regular partition (see oldest_lower_bound)."""
    async with pool.acquire() as conn:
        partitions, _ = await _partitions(conn, table)
    return oldest_lower_bound(partitions)
