"""Every hot statement reads rows in proportion to its batch, never to the backlog, whatever
plan PostgreSQL picks.

Each statement is prepared on the daemon's own connection settings (store.HOT_SETTINGS) while
the tables are empty, as a daemon that idles before a burst would have it. Then a backlog of
100k due deliveries, 100k finished ones with their attempts, and 100k old events arrives, with
no ANALYZE (autovacuum is off for these tables), and EXPLAIN (ANALYZE, BUFFERS) runs each
statement: under the generic plan built on the empty tables, under a custom plan on the stale
statistics, and after ANALYZE.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from dispatcher import store
from dispatcher.store import QUERIES

pytestmark = pytest.mark.slow

BACKLOG = 100_000
BATCH = 20
# What "in proportion to the batch" allows: per batch row, rows read from a table or an index by
# any plan node (rows returned plus rows a filter removed, over all loops) and shared buffers
# touched. A scan of the backlog
# reads 100k rows and thousands of buffers.
ROWS_PER_ROW = 10
BUFFERS_PER_ROW = 60
BUFFERS_FIXED = 200

_PREPARE = {
    "lease_batch": "int, float8, bigint[], uuid, bigint[], int[], int, bigint, int, float8",
    "record_outcomes": (
        "bigint[], uuid[], text[], float8[], int[], timestamptz[], int[], int[], text[],"
        " bool[], text[], text[], text[], bigint[], bool[], bool[], int[], timestamptz[],"
        " timestamptz[], text[], int[], bigint[], int, float8, float8, float8, float8, int,"
        " timestamptz[]"
    ),
    "release_leases": "bigint[], uuid[], timestamptz[]",
    "sweep_deliveries": "float8, int, timestamptz",
    "sweep_attempts": "float8, int, timestamptz",
    "sweep_events": "float8, int, timestamptz, uuid",
}
_EMPTY_OUTCOMES = ", ".join(["'{}'"] * 22 + ["10", "30", "600", "86400", "432000", "10", "'{}'"])
_EMPTY_ARGS = {
    "lease_batch": "1, 60, '{}', gen_random_uuid(), '{}', '{}', 16, 0, 1000, 0.05",
    "record_outcomes": _EMPTY_OUTCOMES,
    "release_leases": "'{}', '{}', '{}'",
    "sweep_deliveries": "86400, 1, NULL",
    "sweep_attempts": "86400, 1, NULL",
    "sweep_events": "86400, 1, '-infinity', '00000000-0000-0000-0000-000000000000'",
}
# The tables rows land in (a partitioned table has no statistics or autovacuum of its own).
_TABLES = (
    "deliveries_active",
    "deliveries_done_legacy",
    "deliveries_done_default",
    "events",
    "attempts_legacy",
    "attempts_default",
    "webhooks",
)
# What each statement may name among the delivery tables: the hot ones deliveries_active only
# (the outcome write inserts finished rows into deliveries_done, which it never reads).
_DELIVERY_TABLES = {
    "lease_batch": {"deliveries_active"},
    "record_outcomes": {"deliveries_active", "deliveries_done"},
    "release_leases": {"deliveries_active"},
}


@pytest.fixture
async def hot(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """The daemon's connection settings, on a database whose statistics never change alone."""
    conn = store.DedicatedConnection(dsn, "plan-test")
    c = await conn.get()
    for table in _TABLES:
        await c.execute(f"ALTER TABLE dispatcher.{table} SET (autovacuum_enabled = false)")
    yield c
    await conn.close()


async def load_backlog(c: asyncpg.Connection) -> int:
    """Fan out BACKLOG month-old events to one webhook, and add as many finished deliveries
    (with an attempt each) for a second webhook; return the second webhook's id."""
    # A rate limit, so the lease's gate (a locked health row, tokens spent) is on the path.
    backlog = await c.fetchval(
        "INSERT INTO dispatcher.webhooks (service_name, url, event_types, rate_limit)"
        " VALUES ('big', 'https://big.example/', '{a}', 1000) RETURNING id"
    )
    history = await c.fetchval(
        "INSERT INTO dispatcher.webhooks (service_name, url, event_types)"
        " VALUES ('old', 'https://old.example/', '{b}') RETURNING id"
    )
    await c.execute(
        "INSERT INTO dispatcher.events (event_type, payload, created_at)"
        " SELECT 'a', '{\"n\": 1}', now() - interval '30 days' FROM generate_series(1, $1)",
        BACKLOG,
    )
    await c.execute(
        "INSERT INTO dispatcher.deliveries (message_id, webhook_id, status, attempts,"
        "                                   finished_at)"
        " SELECT message_id, $1, 'succeeded', 1, now() - interval '30 days'"
        " FROM dispatcher.events",
        history,
    )
    await c.execute(
        "INSERT INTO dispatcher.attempts (delivery_id, attempt, started_at, duration_ms)"
        " SELECT id, 1, finished_at, 5 FROM dispatcher.deliveries WHERE webhook_id = $1",
        history,
    )
    assert backlog != history
    return int(history)


def walk(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from walk(child)


async def explain(c: asyncpg.Connection, execute: str) -> dict[str, Any]:
    """Run EXECUTE under EXPLAIN (ANALYZE, BUFFERS) and roll its changes back."""
    tx = c.transaction()
    await tx.start()
    try:
        raw = await c.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {execute}")
    finally:
        await tx.rollback()
    top: dict[str, Any] = orjson.loads(raw)[0]
    return top


def delivery_tables(top: dict[str, Any]) -> set[str]:
    """Name every delivery table or partition a plan reads or writes."""
    return {
        node["Relation Name"]
        for node in walk(top["Plan"])
        if node.get("Relation Name", "").startswith("deliveries")
    }


def assert_bounded(name: str, top: dict[str, Any], batch: int) -> None:
    if name in _DELIVERY_TABLES:
        assert delivery_tables(top) <= _DELIVERY_TABLES[name], f"{name}: {delivery_tables(top)}"
    for node in walk(top["Plan"]):
        assert node["Node Type"] != "Seq Scan", f"{name}: a sequential scan"
        if "Relation Name" not in node:
            continue  # rows in memory: a CTE, a materialized or unnested array
        read = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
        read *= node["Actual Loops"]
        assert read <= ROWS_PER_ROW * batch, (
            f"{name}: {node['Node Type']} on {node.get('Relation Name')} read {read} rows"
            f" for a batch of {batch}"
        )
    buffers = top["Plan"]["Shared Hit Blocks"] + top["Plan"]["Shared Read Blocks"]
    assert buffers <= BUFFERS_PER_ROW * batch + BUFFERS_FIXED, (
        f"{name}: {buffers} buffers for a batch of {batch}"
    )


async def prepare_all(c: asyncpg.Connection) -> None:
    """Prepare every hot statement and run it once on the empty tables: under the generic
    mode this is when its plan is made and cached."""
    for name, types in _PREPARE.items():
        await c.execute(f"PREPARE {name}({types}) AS {QUERIES[name]}")
        await explain(c, f"EXECUTE {name}({_EMPTY_ARGS[name]})")


async def outcome_args(c: asyncpg.Connection, leased: list[store.LeasedDelivery]) -> str:
    """The arguments of record_outcomes for `leased`, as SQL literals for EXECUTE."""
    now = datetime.now(UTC)
    webhooks = sorted({d.webhook_id for d in leased})
    literal: str = await c.fetchval(
        "SELECT format('%L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L',"
        " $1::bigint[], $2::uuid[], $3::text[], $4::float8[], $5::int[],"
        " $6::timestamptz[], $7::int[], $8::int[], $9::text[], $10::bool[],"
        " $11::text[], $12::text[], $13::text[])"
        " || ', ' || format('%L, %L, %L, %L, %L, %L, %L, %L, %L', $14::bigint[], $15::bool[],"
        " $16::bool[], $17::int[], $18::timestamptz[], $19::timestamptz[], $20::text[],"
        " $21::int[], $22::bigint[])"
        " || ', 5, 30, 600, 0, 0, 1, ' || format('%L', $23::timestamptz[])",
        # Failures that count toward the breaker: the health rows are written too, the breaker
        # opens, and every webhook is due for a failing report and a disable.
        [d.id for d in leased],
        [d.lease_token for d in leased],
        ["pending"] * len(leased),
        [30.0] * len(leased),
        [d.attempt for d in leased],
        [now] * len(leased),
        [5] * len(leased),
        [503] * len(leased),
        ["unavailable"] * len(leased),
        [False] * len(leased),
        ["status"] * len(leased),
        ["HTTP 503"] * len(leased),
        ["schedule"] * len(leased),
        webhooks,
        [False] * len(webhooks),
        [False] * len(webhooks),
        [len(leased)] * len(webhooks),
        [now] * len(webhooks),
        [now] * len(webhooks),
        ["HTTP 503"] * len(webhooks),
        [len(leased)] * len(webhooks),
        [d.id for d in leased],
        [d.lease_until for d in leased],
    )
    return literal


@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan", "analyzed"])
async def test_hot_statements_read_in_proportion_to_their_batch(
    hot: asyncpg.Connection, mode: str
) -> None:
    c = hot
    await c.execute(f"SET plan_cache_mode = {'auto' if mode == 'analyzed' else mode}")
    await prepare_all(c)
    await load_backlog(c)
    if mode == "analyzed":
        await c.execute("ANALYZE")

    lease_args = f"{BATCH}, 60, '{{}}', gen_random_uuid(), '{{}}', '{{}}', 1000, 0, 1000, 0.05"
    top = await explain(c, f"EXECUTE lease_batch({lease_args})")
    assert top["Plan"]["Actual Rows"] == BATCH
    assert_bounded("lease_batch", top, BATCH)

    # Lease for real, to have rows for the outcome write and the release.
    leased = (await store.lease_batch(c, BATCH, 60.0, per_webhook_cap=1000)).deliveries
    assert len(leased) == BATCH
    top = await explain(c, f"EXECUTE record_outcomes({await outcome_args(c, leased)})")
    assert_bounded("record_outcomes", top, BATCH)

    release = await c.fetchval(
        "SELECT format('%L, %L, %L', $1::bigint[], $2::uuid[], $3::timestamptz[])",
        [d.id for d in leased],
        [d.lease_token for d in leased],
        [d.lease_until for d in leased],
    )
    assert_bounded("release_leases", await explain(c, f"EXECUTE release_leases({release})"), BATCH)

    top = await explain(c, f"EXECUTE sweep_deliveries(86400, {BATCH}, NULL)")
    assert_bounded("sweep_deliveries", top, BATCH)
    top = await explain(c, f"EXECUTE sweep_attempts(86400, {BATCH}, NULL)")
    assert_bounded("sweep_attempts", top, BATCH)

    sweep_events = f"86400, {BATCH}, '-infinity', '00000000-0000-0000-0000-000000000000'"
    top = await explain(c, f"EXECUTE sweep_events({sweep_events})")
    assert_bounded("sweep_events", top, BATCH)


async def test_the_bound_catches_a_statement_that_reads_the_backlog(
    hot: asyncpg.Connection,
) -> None:
    """The check above can fail: a lookup on an unindexed column reads every row."""
    await hot.execute(
        "PREPARE canary(int, int) AS"
        " SELECT id FROM dispatcher.deliveries WHERE attempts = $1 LIMIT $2"
    )
    await hot.fetch("EXECUTE canary(99, 1)")
    await load_backlog(hot)
    top = await explain(hot, f"EXECUTE canary(99, {BATCH})")
    with pytest.raises(AssertionError, match=r"^canary: a sequential scan"):
        assert_bounded("canary", top, BATCH)
