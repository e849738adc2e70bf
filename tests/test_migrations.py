"""Migrations: applied in order, once, and they yield the schema the code expects."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from dispatcher.errors import DispatcherError
from dispatcher.ops import migrate
from tests.conftest import Receiver, deliver_all, fast_settings


@pytest.fixture
async def empty_db(empty_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(empty_dsn)
    yield conn
    await conn.close()


async def test_migrations_on_an_empty_database_yield_the_expected_schema(
    empty_db: asyncpg.Connection,
) -> None:
    with pytest.raises(DispatcherError, match="dispatcher migrate"):
        await migrate.check_migrations(empty_db)

    applied = await migrate.apply_migrations(empty_db)
    assert [m.version for m in applied] == [m.version for m in migrate.migrations()]
    assert await migrate.apply_migrations(empty_db) == []
    await migrate.check_migrations(empty_db)

    columns = await empty_db.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'dispatcher'"
    )
    found: dict[str, set[str]] = {}
    for r in columns:
        found.setdefault(r["table_name"], set()).add(r["column_name"])
    assert found["events"] == {"message_id", "event_type", "payload", "created_at"}
    assert {
        "id",
        "service_name",
        "url",
        "description",
        "secret",
        "event_types",
        "status",
        "created_at",
        "updated_at",
    } <= found["webhooks"]
    assert {"id", "message_id", "webhook_id", "status", "attempts", "run_at", "lease_token"} <= (
        found["deliveries"]
    )
    assert {
        "delivery_id",
        "attempt",
        "started_at",
        "duration_ms",
        "response_status",
        "response_body",
        "error_kind",
        "error_message",
    } <= found["attempts"]
    functions = {
        r["proname"]
        for r in await empty_db.fetch(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'dispatcher'::regnamespace"
        )
    }
    assert {"publish", "fan_out_events", "generate_secret"} <= functions


def test_migration_files_are_numbered_without_gaps() -> None:
    versions = [m.version for m in migrate.migrations()]
    assert versions == list(range(1, len(versions) + 1))


async def test_endpoint_health_migrates_existing_webhooks(
    empty_db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """007 on an installation with webhooks: each gets a health row, and a disabled one the
    reason it must have had (an operator's), with nothing else changed."""
    before = [m for m in migrate.migrations() if m.version < 7]
    through_007 = [m for m in migrate.migrations() if m.version <= 7]
    monkeypatch.setattr(migrate, "migrations", lambda: before)
    await migrate.apply_migrations(empty_db)
    await empty_db.execute(
        "INSERT INTO dispatcher.webhooks (service_name, url, event_types, status)"
        " VALUES ('on', 'https://on.example/', '{a}', 'active'),"
        "        ('off', 'https://off.example/', '{a}', 'disabled')"
    )
    await empty_db.execute("SELECT dispatcher.publish('a', '{}')")
    kept = await empty_db.fetch("SELECT * FROM dispatcher.webhooks ORDER BY id")
    monkeypatch.setattr(migrate, "migrations", lambda: through_007)

    assert [m.version for m in await migrate.apply_migrations(empty_db)] == [7]

    rows = await empty_db.fetch(
        "SELECT w.*, h.webhook_id AS health_row, h.consecutive_failures, h.breaker_until"
        " FROM dispatcher.webhooks w JOIN dispatcher.webhook_health h ON h.webhook_id = w.id"
        " ORDER BY w.id"
    )
    assert [
        (r["service_name"], r["status"], r["disabled_reason"], r["disabled_at"] is not None)
        for r in rows
    ] == [("on", "active", None, False), ("off", "disabled", "manual", True)]
    assert all((r["consecutive_failures"], r["breaker_until"]) == (0, None) for r in rows)
    columns = list(kept[0].keys())  # a Record iterates over its values, not its keys
    assert [{k: r[k] for k in columns} for r in rows] == [dict(k) for k in kept]
    assert await empty_db.fetchval("SELECT count(*) FROM dispatcher.deliveries") == 1


# Rows as an installation at 007 has them: pending (due, scheduled, leased with an expired and
# with a live lease), finished three ways, each with its attempt records.
_HISTORY_007 = """
-- The deliveries below are made by hand, not by the fan-out.
SELECT set_config('dispatcher.skip_fan_out', 'on', false);
INSERT INTO dispatcher.events (message_id, event_type, payload, created_at)
SELECT ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid, 'a',
       jsonb_build_object('i', i), now() - make_interval(hours => i)
FROM generate_series(1, 7) i;
-- Gaps in the ids, as deletes by retention leave them.
SELECT setval(pg_get_serial_sequence('dispatcher.deliveries', 'id'), 40);
INSERT INTO dispatcher.deliveries
    (message_id, webhook_id, status, attempts, run_at, lease_token, created_at, finished_at,
     last_response_status, last_error_kind, kind)
SELECT ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid, $1, s.status, s.attempts,
       now() + s.run_in, s.token, now() - make_interval(hours => i), now() - s.finished_ago,
       s.response, s.error, s.kind
FROM (VALUES
    (1, 'pending', 0, interval '-1 minute', NULL::uuid, NULL::interval, NULL::int, NULL, 'event'),
    (2, 'pending', 2, interval '-1 second', NULL, NULL, 503, 'status', 'resend'),
    (3, 'pending', 1, interval '-5 minutes', gen_random_uuid(), NULL, NULL, NULL, 'event'),
    (4, 'pending', 1, interval '1 hour', gen_random_uuid(), NULL, NULL, NULL, 'event'),
    (5, 'succeeded', 1, interval '-1 hour', NULL, interval '2 hours', 200, NULL, 'event'),
    (6, 'failed', 7, interval '-1 hour', NULL, interval '3 days', 500, 'status', 'event'),
    (7, 'cancelled', 0, interval '-1 hour', NULL, interval '1 minute', NULL, 'webhook_disabled',
     'test')
) AS s(i, status, attempts, run_in, token, finished_ago, response, error, kind);
INSERT INTO dispatcher.attempts (delivery_id, attempt, started_at, duration_ms, response_status,
                                 response_body, error_kind, error_message, retry_in_s,
                                 retry_reason)
SELECT d.id, n, d.created_at + make_interval(mins => n), 10 * n, 500, 'oops', 'status',
       'HTTP 500', 30, 'schedule'
FROM dispatcher.deliveries d, generate_series(1, greatest(d.attempts, 1)) n;
SELECT set_config('dispatcher.skip_fan_out', 'off', false);
"""


async def test_partitioned_history_migrates_every_row(
    empty_db: asyncpg.Connection,
    empty_dsn: str,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """008 on an installation with data in every table: every delivery and attempt is there
    after, with the same id and values, in the partition its status and time say; new rows get
    ids above the old ones; and the daemon delivers what was pending."""
    through_007 = [m for m in migrate.migrations() if m.version <= 7]
    through_008 = [m for m in migrate.migrations() if m.version <= 8]
    monkeypatch.setattr(migrate, "migrations", lambda: through_007)
    await migrate.apply_migrations(empty_db)
    webhook = await empty_db.fetchval(
        "INSERT INTO dispatcher.webhooks (service_name, url, event_types)"
        " VALUES ('w', $1, '{a}') RETURNING id",
        receiver.url,
    )
    await empty_db.execute(_HISTORY_007.replace("$1", str(int(webhook))))
    deliveries = await empty_db.fetch("SELECT * FROM dispatcher.deliveries ORDER BY id")
    attempts = await empty_db.fetch("SELECT * FROM dispatcher.attempts ORDER BY id")
    assert (len(deliveries), len(attempts)) == (7, 14)
    monkeypatch.setattr(migrate, "migrations", lambda: through_008)

    assert [m.version for m in await migrate.apply_migrations(empty_db)] == [8]

    assert [
        dict(r) for r in await empty_db.fetch("SELECT * FROM dispatcher.deliveries ORDER BY id")
    ] == [dict(r) for r in deliveries]
    assert [
        dict(r) for r in await empty_db.fetch("SELECT * FROM dispatcher.attempts ORDER BY id")
    ] == [dict(r) for r in attempts]
    placed = await empty_db.fetch(
        "SELECT tableoid::regclass::text AS part, count(*) AS n FROM dispatcher.deliveries"
        " GROUP BY 1 ORDER BY 1"
    )
    assert [(r["part"], r["n"]) for r in placed] == [
        ("dispatcher.deliveries_active", 4),
        ("dispatcher.deliveries_done_legacy", 3),
    ]
    assert await empty_db.fetchval("SELECT count(*) FROM dispatcher.attempts_legacy") == len(
        attempts
    )
    for table in ("deliveries_old", "attempts_old"):
        assert await empty_db.fetchval("SELECT to_regclass($1)", f"dispatcher.{table}") is None

    # New rows: ids above every old one, from the parent's identity.
    fresh = await empty_db.fetchval("SELECT dispatcher.publish('a', '{}')")
    new_id = await empty_db.fetchval(
        "SELECT id FROM dispatcher.deliveries WHERE message_id = $1", fresh
    )
    assert new_id > max(r["id"] for r in deliveries)

    monkeypatch.undo()  # the daemon applies any later migrations itself

    # The live lease's holder is gone (its lease backdated to expiry): the daemon delivers it,
    # the due rows, the expired lease and the new event, and appends their attempts.
    await empty_db.execute(
        "UPDATE dispatcher.deliveries SET run_at = now() WHERE lease_token IS NOT NULL"
    )
    await deliver_all(fast_settings(), empty_dsn)
    pending = [r["id"] for r in deliveries if r["status"] == "pending"]
    rows = await empty_db.fetch(
        "SELECT id, status, tableoid::regclass::text AS part FROM dispatcher.deliveries"
        " WHERE id = ANY($1::bigint[]) ORDER BY id",
        [*pending, new_id],
    )
    assert [(r["id"], r["status"]) for r in rows] == [(i, "succeeded") for i in [*pending, new_id]]
    assert len(receiver.requests) == 5
    assert (
        await empty_db.fetchval(
            "SELECT count(*) FROM dispatcher.attempts WHERE id > $1", max(r["id"] for r in attempts)
        )
        == 5
    )
    assert await empty_db.fetchval("SELECT count(*) FROM dispatcher.deliveries_active") == 0
