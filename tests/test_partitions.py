"""History partitions (migration 008): the hot table holds only pending rows, and retention makes
range partitions ahead, moves strays out of DEFAULT, drops expired ones, and gives way to
locks it cannot get at once.

Time is never waited for: a database "migrated ten minutes ago" is made by re-attaching the
legacy partitions with an older bound, and old rows by writing old timestamps.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import structlog

from dispatcher import store
from dispatcher.ops import partitions
from dispatcher.ops.partitions import (
    Partition,
    next_boundary,
    partition_name,
    ranges_to_create,
)
from dispatcher.ops.retention import sweep_once
from dispatcher.settings import Settings
from tests.conftest import add_webhook, eventually, fast_settings, publish
from tests.test_plans import delivery_tables, explain, outcome_args, walk

# A short window: one-minute partitions, two minutes of retention, made two minutes ahead.
RETENTION_S = 120.0
PARTITION_S = 60.0


def short() -> Settings:
    return fast_settings(
        retention_s=RETENTION_S, retention_partition_s=PARTITION_S, retention_interval_s=15
    )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("after", "interval_s", "expected"),
    [
        ("2026-11-30 09:24:26.5", 3600, "2026-11-30 10:00"),
        ("2026-11-30 10:00", 3600, "2026-11-30 11:00"),  # a boundary is not after itself
        ("2026-11-30 10:00", 86400, "2026-12-01 00:00"),
        ("2026-11-30 10:00:59", 60, "2026-11-30 10:01"),
        ("2026-11-30 10:00", 90, "2026-11-30 10:01:30"),  # 90 s since the epoch
    ],
)
def test_next_boundary_is_a_multiple_of_the_interval_since_the_epoch(
    after: str, interval_s: float, expected: str
) -> None:
    assert next_boundary(at(after), interval_s) == at(expected)


@pytest.mark.parametrize(
    ("frontier", "now", "interval_s", "ahead_s", "expected"),
    [
        # Off the grid (the legacy partition's bound): one short partition, then whole ones.
        (
            "2026-11-30 09:24:26.5",
            "2026-11-30 09:30",
            3600,
            7200,
            [
                ("2026-11-30 09:24:26.5", "2026-11-30 10:00"),
                ("2026-11-30 10:00", "2026-11-30 11:00"),
                ("2026-11-30 11:00", "2026-11-30 12:00"),
            ],
        ),
        # Far enough ahead already: nothing.
        ("2026-11-30 12:00", "2026-11-30 09:30", 3600, 7200, []),
        # No range partition yet: from now rounded down to the interval.
        (
            None,
            "2026-11-30 09:30",
            86400,
            86400,
            [("2026-11-30 00:00", "2026-12-01 00:00"), ("2026-12-01 00:00", "2026-12-02 00:00")],
        ),
        # The daemon was down: every missing partition from the frontier on.
        (
            "2026-11-30 09:58",
            "2026-11-30 10:00:30",
            60,
            120,
            [
                ("2026-11-30 09:58", "2026-11-30 09:59"),
                ("2026-11-30 09:59", "2026-11-30 10:00"),
                ("2026-11-30 10:00", "2026-11-30 10:01"),
                ("2026-11-30 10:01", "2026-11-30 10:02"),
                ("2026-11-30 10:02", "2026-11-30 10:03"),
            ],
        ),
        # A longer interval than the partitions made so far: lined up at its next boundary.
        (
            "2026-11-30 10:00",
            "2026-11-30 09:59:30",
            86400,
            60,
            [("2026-11-30 10:00", "2026-12-01 00:00")],
        ),
    ],
)
def test_ranges_to_create(
    frontier: str | None,
    now: str,
    interval_s: float,
    ahead_s: float,
    expected: list[tuple[str, str]],
) -> None:
    found = ranges_to_create(at(frontier) if frontier else None, at(now), interval_s, ahead_s)
    assert found == [(at(lo), at(hi)) for lo, hi in expected]


@pytest.mark.parametrize(
    ("lower", "expected"),
    [
        ("2026-11-30 09:00", "deliveries_done_p20261130t0900"),
        ("2026-11-30 09:01:30", "deliveries_done_p20261130t090130"),
        ("2026-11-30 09:24:26.243690", "deliveries_done_p20261130t092426_243690"),
    ],
)
def test_partition_names_say_where_they_start_in_utc(lower: str, expected: str) -> None:
    assert partition_name("deliveries_done", at(lower)) == expected
    in_paris = at(lower).astimezone(datetime.now().astimezone().tzinfo)
    assert partition_name("deliveries_done", in_paris) == expected


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool with the daemon's own connection settings, as retention uses."""
    p = await store.create_pool(dsn, 4)
    yield p
    await p.close()


async def history(pool: asyncpg.Pool, table: str) -> tuple[list[Partition], datetime]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(partitions.SQL["history_partitions"], table)
    found = [Partition(r["name"], r["is_default"], r["lower"], r["upper"]) for r in rows]
    return found, rows[0]["now"]


async def migrated_ago(db: asyncpg.Pool, minutes: int) -> None:
    """Make the (empty) legacy partitions end `minutes` ago, as if migrated then."""
    for table in ("deliveries_done", "attempts"):
        await db.execute(
            f"ALTER TABLE dispatcher.{table} DETACH PARTITION dispatcher.{table}_legacy"
        )
        ddl = await db.fetchval(
            "SELECT format('ALTER TABLE dispatcher.%I ATTACH PARTITION dispatcher.%I"
            " FOR VALUES FROM (MINVALUE) TO (%L)', $1::text, $2::text,"
            " now() - make_interval(mins => $3))",
            table,
            f"{table}_legacy",
            minutes,
        )
        await db.execute(ddl)


async def add_finished(db: asyncpg.Pool, webhook: int, ago: str) -> int:
    """A succeeded delivery that finished `ago`, with an attempt started then."""
    delivery: int = await db.fetchval(
        "INSERT INTO dispatcher.deliveries (message_id, webhook_id, status, attempts, finished_at)"
        " VALUES (gen_random_uuid(), $1, 'succeeded', 1, now() - $2::text::interval) RETURNING id",
        webhook,
        ago,
    )
    await db.execute(
        "INSERT INTO dispatcher.attempts (delivery_id, attempt, started_at, duration_ms)"
        " VALUES ($1, 1, now() - $2::text::interval, 5)",
        delivery,
        ago,
    )
    return delivery


async def test_partitions_are_made_ahead_contiguous_and_aligned(
    pool: asyncpg.Pool, db: asyncpg.Pool
) -> None:
    await migrated_ago(db, 0)  # not the template's age: nothing is due to be dropped
    done = await partitions.maintain(pool, short())
    assert not done.deferred and not done.busy and done.dropped == []

    for table in ("deliveries_done", "attempts"):
        found, now = await history(pool, table)
        ranged = [p for p in found if not p.is_default]
        legacy, first, *rest = ranged
        assert (legacy.name, legacy.lower) == (f"{table}_legacy", None)
        # Contiguous from the legacy partition's bound, each named after where it starts.
        assert first.lower == legacy.upper
        for before, after in itertools.pairwise([first, *rest]):
            assert after.lower == before.upper
        for p in (first, *rest):
            assert p.lower is not None and p.upper is not None
            assert p.name == partition_name(table, p.lower)
            assert p.upper == next_boundary(p.lower, PARTITION_S)
        # Far enough ahead, and no further than one partition past that.
        last = ranged[-1].upper
        assert last is not None
        ahead = timedelta(seconds=partitions.ahead_s(short()))
        assert now + ahead <= last < now + ahead + timedelta(seconds=PARTITION_S)
        assert [n for n in done.created if n.startswith(f"{table}_p")] == [
            p.name for p in (first, *rest)
        ]

    # Nothing is due again until time passes.
    assert (await partitions.maintain(pool, short())).created == []


async def test_expired_partitions_are_dropped_and_strays_in_default_moved(
    pool: asyncpg.Pool, db: asyncpg.Pool
) -> None:
    webhook, _ = await add_webhook(db, "https://x.example/", ["t.x"])
    await migrated_ago(db, 10)
    # Finished while no partition covered their time (the daemon was down): in DEFAULT.
    old = await add_finished(db, webhook, "9 minutes")
    older = await add_finished(db, webhook, "5 minutes")
    recent = await add_finished(db, webhook, "30 seconds")
    just_now = await add_finished(db, webhook, "0 seconds")
    assert await db.fetchval("SELECT count(*) FROM dispatcher.deliveries_done_default") == 4
    assert await db.fetchval("SELECT count(*) FROM dispatcher.attempts_default") == 4

    done = await partitions.maintain(pool, short())

    assert done.moved == 8 and not done.deferred
    assert {"deliveries_done_legacy", "attempts_legacy"} <= set(done.dropped)
    for table, key in (("deliveries_done", "finished_at"), ("attempts", "started_at")):
        found, now = await history(pool, table)
        cutoff = now - timedelta(seconds=RETENTION_S)
        # Every partition left reaches into the window; the first one kept starts at or before
        # the cutoff, so nothing inside the window was lost with a drop.
        ranged = [p for p in found if not p.is_default]
        assert all(p.upper is not None and p.upper > cutoff for p in ranged)
        assert ranged[0].lower is not None and ranged[0].lower <= cutoff
        assert await db.fetchval(f"SELECT count(*) FROM dispatcher.{table}_default") == 0
        kept = await db.fetchval(
            f"SELECT count(*) FROM dispatcher.{table} WHERE {key} < $1", cutoff
        )
        assert kept == 0  # the rows 5 and 9 minutes old went with their partitions
    ids = [r["id"] for r in await db.fetch("SELECT id FROM dispatcher.deliveries ORDER BY id")]
    assert old not in ids and older not in ids
    assert ids == [recent, just_now]
    assert await db.fetchval("SELECT count(*) FROM dispatcher.attempts") == 2

    # A row older than every partition goes to DEFAULT; the sweep deletes it by row.
    stray = await add_finished(db, webhook, "20 minutes")
    assert (
        await db.fetchval(
            "SELECT tableoid::regclass::text FROM dispatcher.deliveries WHERE id = $1", stray
        )
        == "dispatcher.deliveries_done_default"
    )
    swept = await sweep_once(pool, RETENTION_S, batch=10)
    assert (swept.deliveries, swept.attempts) == (1, 1)
    assert [r["id"] for r in await db.fetch("SELECT id FROM dispatcher.deliveries")] == [
        recent,
        just_now,
    ]


@pytest.mark.parametrize("ddl", ["attach", "drop"])
async def test_a_long_reader_defers_maintenance_and_never_blocks_the_hot_path(
    pool: asyncpg.Pool, db: asyncpg.Pool, dsn: str, ddl: str
) -> None:
    """A report holding the history open in a REPEATABLE READ transaction: the DDL (an ATTACH,
    which locks the DEFAULT partition the new outcomes go to, or a DROP, which locks
    deliveries_done itself) gives up after the lock timeout instead of queueing, the outcome
    writes it would have held up go through, and the next cycle, once the report is done,
    catches up. Without the lock timeout this test would hang on the outcome write."""
    await add_webhook(db, "https://x.example/", ["t.x"])
    await migrated_ago(db, 10)  # the legacy partitions are due to be dropped
    if ddl == "drop":
        # Partitions made ahead now, under a longer retention: only drops are left to do.
        longer = fast_settings(retention_s=3600, retention_partition_s=PARTITION_S)
        assert (await partitions.maintain(pool, longer)).dropped == []
    for _ in range(3):
        await publish(db, "t.x")
    report = await asyncpg.connect(dsn)
    hot = store.DedicatedConnection(dsn, "outcomes")
    try:
        await report.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await report.fetchval("SELECT count(*) FROM dispatcher.deliveries")
        await report.fetchval("SELECT count(*) FROM dispatcher.attempts")

        conn = await hot.get()
        leased = (await store.lease_batch(conn, 10, 60.0)).deliveries
        assert len(leased) == 3
        with structlog.testing.capture_logs() as logs:
            async with asyncio.timeout(30):
                done, written = await asyncio.gather(
                    partitions.maintain(pool, short()),
                    store.write_outcomes(conn, [succeeded(d) for d in leased], RULES),
                )
        assert done.deferred and (ddl == "attach" or done.created == [])
        assert any(e["event"] == "partition_maintenance_deferred" for e in logs)
        # The report still holds its locks: the outcome write did not wait for it.
        assert written[0] == {d.id for d in leased}
        assert await report.fetchval("SELECT count(*) FROM dispatcher.deliveries") == 3
        assert await db.fetchval("SELECT count(*) FROM dispatcher.deliveries_done") == 3
    finally:
        await report.close()
        await hot.close()

    caught_up = await partitions.maintain(pool, short())
    assert not caught_up.deferred
    assert {"deliveries_done_legacy", "attempts_legacy"} <= set(caught_up.dropped)


async def test_two_instances_maintain_at_once_without_conflict(
    pool: asyncpg.Pool, dsn: str, db: asyncpg.Pool
) -> None:
    await migrated_ago(db, 10)
    other = await store.create_pool(dsn, 4)
    try:
        async with asyncio.timeout(30):
            results = await asyncio.gather(
                *(partitions.maintain(p, short()) for p in (pool, other, pool, other))
            )
    finally:
        await other.close()
    assert not any(r.deferred for r in results)
    created = [n for r in results for n in r.created]
    dropped = [n for r in results for n in r.dropped]
    assert len(created) == len(set(created)) and len(dropped) == len(set(dropped))

    # However the work was shared, the result is what one instance makes alone.
    alone = await partitions.maintain(pool, short())
    assert (alone.created, alone.dropped) == ([], [])
    for table in ("deliveries_done", "attempts"):
        found, _ = await history(pool, table)
        ranged = [p for p in found if not p.is_default]
        assert {p.name for p in ranged} <= set(created)
        for before, after in itertools.pairwise(ranged):
            assert after.lower == before.upper


RULES = store.HealthRules.from_settings(fast_settings())


def succeeded(d: store.LeasedDelivery, status: str = "succeeded") -> store.OutcomeRow:
    return store.OutcomeRow(
        delivery_id=d.id,
        lease_token=d.lease_token,
        status=status,
        retry_in_s=0.0,
        attempt=d.attempt,
        started_at=datetime.now(UTC),
        duration_ms=3,
        response_status=200 if status == "succeeded" else 503,
        response_body=None,
        response_truncated=False,
        error_kind=None if status == "succeeded" else "status",
        error_message=None,
        webhook_id=d.webhook_id,
        retry_reason=None if status == "succeeded" else "schedule",
        breaker=False,
    )


async def test_history_never_grows_the_hot_table(db: asyncpg.Pool, dsn: str) -> None:
    """50k finished deliveries leave deliveries_active and its indexes as they were, and the hot
    statements, planned generically, name no delivery table but deliveries_active (the outcome
    write inserts into deliveries_done, which it never reads)."""
    webhook, _ = await add_webhook(db, "https://x.example/", ["t.x"])
    for _ in range(20):
        await publish(db, "t.x")
    sizes = (
        "SELECT pg_relation_size('dispatcher.deliveries_active'),"
        " pg_indexes_size('dispatcher.deliveries_active'),"
        " (SELECT count(*) FROM dispatcher.deliveries_active)"
    )
    before = tuple(await db.fetchrow(sizes))
    await db.execute(
        "INSERT INTO dispatcher.deliveries (message_id, webhook_id, status, attempts, finished_at)"
        " SELECT gen_random_uuid(), $1, 'succeeded', 1, now() - interval '1 hour'"
        " FROM generate_series(1, 50000)",
        webhook,
    )
    assert tuple(await db.fetchrow(sizes)) == before
    assert await db.fetchval("SELECT count(*) FROM dispatcher.deliveries_done") == 50_000

    hot = store.DedicatedConnection(dsn, "plan-test")
    c = await hot.get()
    try:
        await c.execute(
            "PREPARE lease(int, float8, bigint[], uuid, bigint[], int[], int, bigint, int,"
            " float8) AS " + store.QUERIES["lease_batch"]
        )
        top = await explain(
            c, "EXECUTE lease(10, 60, '{}', gen_random_uuid(), '{}', '{}', 16, 0, 100, 0.05)"
        )
        assert delivery_tables(top) == {"deliveries_active"}
        leased = (await store.lease_batch(c, 10, 60.0)).deliveries
        assert len(leased) == 10
        await c.execute(
            "PREPARE outcomes(bigint[], uuid[], text[], float8[], int[], timestamptz[], int[],"
            " int[], text[], bool[], text[], text[], text[], bigint[], bool[], bool[], int[],"
            " timestamptz[], timestamptz[], text[], int[], bigint[], int, float8, float8,"
            " float8, float8, int, timestamptz[]) AS " + store.QUERIES["record_outcomes"]
        )
        top = await explain(c, f"EXECUTE outcomes({await outcome_args(c, leased)})")
        # deliveries_done only as where finished rows are inserted: never scanned.
        assert delivery_tables(top) == {"deliveries_active", "deliveries_done"}
        assert [
            (n["Node Type"], n["Operation"])
            for n in walk(top["Plan"])
            if n.get("Relation Name") == "deliveries_done"
        ] == [("ModifyTable", "Insert")]
        await c.execute(
            "PREPARE release(bigint[], uuid[], timestamptz[]) AS " + store.QUERIES["release_leases"]
        )
        release = await c.fetchval(
            "SELECT format('%L, %L, %L', $1::bigint[], $2::uuid[], $3::timestamptz[])",
            [d.id for d in leased],
            [d.lease_token for d in leased],
            [d.lease_until for d in leased],
        )
        assert delivery_tables(await explain(c, f"EXECUTE release({release})")) == {
            "deliveries_active"
        }
        # Half succeed: they move; half are retried in place.
        outcomes = [succeeded(d, "succeeded" if i % 2 else "pending") for i, d in enumerate(leased)]
        written, _ = await store.write_outcomes(c, outcomes, RULES)
        assert written == {d.id for d in leased}
    finally:
        await hot.close()
    assert await db.fetchval("SELECT count(*) FROM dispatcher.deliveries_active") == 15
    assert await db.fetchval("SELECT count(*) FROM dispatcher.deliveries_done") == 50_005
    assert await db.fetchval("SELECT count(*) FROM dispatcher.attempts") == 10


@pytest.mark.parametrize("first", ["cancel", "outcomes"])
async def test_outcome_writes_racing_a_cancel_lose_nothing_and_raise_nothing(
    db: asyncpg.Pool, dsn: str, first: str
) -> None:
    """The webhook is disabled (its trigger cancelling every pending row) while another
    connection writes outcomes for rows of it in flight, each waiting on the other's row locks.
    Neither fails: a cross-partition UPDATE would raise 40001 here. Whichever committed first
    wins each row, and every delivery ends in exactly one place."""
    webhook, _ = await add_webhook(db, "https://x.example/", ["t.x"])
    for _ in range(6):
        await publish(db, "t.x")
    writer = await asyncpg.connect(dsn, server_settings=store.HOT_SETTINGS)
    disabler = await asyncpg.connect(dsn)
    try:
        leased = (await store.lease_batch(writer, 4, 60.0)).deliveries
        assert len(leased) == 4
        # Two finish, two are to be retried; two more rows are pending and not leased.
        outcomes = [succeeded(d, "succeeded" if i < 2 else "pending") for i, d in enumerate(leased)]
        disable = "UPDATE dispatcher.webhooks SET status = 'disabled' WHERE id = $1"
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'"
        )

        async def blocked(conn: asyncpg.Connection) -> bool:
            return bool(await db.fetchval(waiting, conn.get_server_pid()))

        async with asyncio.timeout(30):
            if first == "cancel":
                tx = disabler.transaction()
                await tx.start()
                await disabler.execute(disable, webhook)
                write = asyncio.create_task(store.write_outcomes(writer, outcomes, RULES))
                await eventually(lambda: blocked(writer))
                await tx.commit()
                written, _ = await write
            else:
                tx = writer.transaction()
                await tx.start()
                written, _ = await store.write_outcomes(writer, outcomes, RULES)
                cancel = asyncio.create_task(disabler.execute(disable, webhook))
                await eventually(lambda: blocked(disabler))
                await tx.commit()
                await cancel
    finally:
        await writer.close()
        await disabler.close()

    rows = await db.fetch(
        "SELECT id, status, last_error_kind, tableoid::regclass::text AS part"
        " FROM dispatcher.deliveries ORDER BY id"
    )
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6
    assert all(r["part"].startswith("dispatcher.deliveries_done") for r in rows)
    finished = [d.id for d in leased[:2]]
    if first == "cancel":
        assert written == set()  # every lease was lost: refused, as a late write always is
        assert {r["status"] for r in rows} == {"cancelled"}
        assert await db.fetchval("SELECT count(*) FROM dispatcher.attempts") == 0
    else:
        assert written == {d.id for d in leased}
        assert [r["id"] for r in rows if r["status"] == "succeeded"] == finished
        # The retried rows were still pending when the cancel came: cancelled, attempts kept.
        assert [r["status"] for r in rows if r["id"] not in finished] == ["cancelled"] * 4
        assert await db.fetchval("SELECT count(*) FROM dispatcher.attempts") == 4
    assert await db.fetchval("SELECT count(*) FROM dispatcher.deliveries_active") == 0


async def test_a_failing_maintenance_is_logged_and_leaves_delivery_alone(
    pool: asyncpg.Pool, db: asyncpg.Pool
) -> None:
    """Any other error (here a table in the way of the next partition) is logged as an error
    and retried next cycle; finished rows meanwhile land in DEFAULT."""
    found, _ = await history(pool, "deliveries_done")
    legacy = next(p for p in found if p.name == "deliveries_done_legacy")
    assert legacy.upper is not None
    in_the_way = partition_name("deliveries_done", legacy.upper)
    await db.execute(f"CREATE TABLE dispatcher.{in_the_way} (x int)")
    webhook, _ = await add_webhook(db, "https://x.example/", ["t.x"])

    with structlog.testing.capture_logs() as logs:
        done = await partitions.maintain(pool, short())

    assert done.failed and done.created == []
    assert [e["log_level"] for e in logs if e["event"] == "partition_maintenance_failed"] == [
        "error"
    ]
    await add_finished(db, webhook, "0 seconds")
    assert await db.fetchval("SELECT count(*) FROM dispatcher.deliveries_done_default") == 1

    await db.execute(f"DROP TABLE dispatcher.{in_the_way}")
    again = await partitions.maintain(pool, short())
    assert not again.failed and again.moved == 2  # the delivery and its attempt
    assert await db.fetchval("SELECT count(*) FROM dispatcher.deliveries_done_default") == 0


async def test_an_outcome_write_racing_the_attach_of_its_partition_is_routed_afresh(
    pool: asyncpg.Pool, db: asyncpg.Pool, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No partition covers now (the daemon was down), so outcome writes go to DEFAULT, when
    maintenance attaches the partition for now. A write that had chosen DEFAULT before the
    ATTACH committed would fail with "violates partition constraint" and stop the daemon's
    outcome writer; maintenance locks the parent against writes, so the write waits and then
    routes its rows to the new partition. The order is forced: a reader of the DEFAULT
    partition holds up the ATTACH until the outcome write is waiting too."""
    monkeypatch.setattr(partitions, "LOCK_TIMEOUT", "30s")
    # The first partition made runs from the legacy bound, a moment ago, to midnight: now.
    daily = fast_settings(retention_s=86400, retention_partition_s=86400)
    await add_webhook(db, "https://x.example/", ["t.x"])
    await migrated_ago(db, 0)
    await publish(db, "t.x")
    reader = await asyncpg.connect(dsn)
    writer = await asyncpg.connect(dsn, server_settings=store.HOT_SETTINGS)
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'"
    try:
        [leased] = (await store.lease_batch(writer, 1, 60.0)).deliveries
        tx = reader.transaction()
        await tx.start()
        await reader.fetchval("SELECT count(*) FROM dispatcher.deliveries_done_default")
        async with asyncio.timeout(60):
            maintaining = asyncio.create_task(partitions.maintain(pool, daily))

            async def maintenance_waits() -> bool:
                n = await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND application_name = $1",
                    store.APPLICATION_NAME,  # the pool's
                )
                return bool(n)

            await eventually(maintenance_waits)
            write = asyncio.create_task(store.write_outcomes(writer, [succeeded(leased)], RULES))

            async def writer_waits() -> bool:
                return bool(await db.fetchval(waiting, writer.get_server_pid()))

            await eventually(writer_waits)
            await tx.commit()
            done = await maintaining
            written, _ = await write
    finally:
        await reader.close()
        await writer.close()
    assert not done.failed and not done.deferred
    assert written == {leased.id}
    part = await db.fetchval(
        "SELECT tableoid::regclass::text FROM dispatcher.deliveries WHERE id = $1", leased.id
    )
    assert part.startswith("dispatcher.deliveries_done_p")
