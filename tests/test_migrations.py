"""Migrations: applied in order, once, and they yield the schema the code expects."""

from __future__ import annotations

import asyncpg
import pytest

from dispatcher.errors import DispatcherError
from dispatcher.ops import migrate
from tests.conftest import _drop, with_database


@pytest.fixture
async def empty_db(server_dsn: str) -> object:
    name = "dispatcher_empty_migrate_test"
    await _drop(server_dsn, name)
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    conn = await asyncpg.connect(with_database(server_dsn, name))
    yield conn
    await conn.close()
    await _drop(server_dsn, name)


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
    monkeypatch.setattr(migrate, "migrations", lambda: before)
    await migrate.apply_migrations(empty_db)
    await empty_db.execute(
        "INSERT INTO dispatcher.webhooks (service_name, url, event_types, status)"
        " VALUES ('on', 'https://on.example/', '{a}', 'active'),"
        "        ('off', 'https://off.example/', '{a}', 'disabled')"
    )
    await empty_db.execute("SELECT dispatcher.publish('a', '{}')")
    kept = await empty_db.fetch("SELECT * FROM dispatcher.webhooks ORDER BY id")
    monkeypatch.undo()
    # 007 alone: later migrations have tests of their own.
    through_7 = [m for m in migrate.migrations() if m.version <= 7]
    monkeypatch.setattr(migrate, "migrations", lambda: through_7)

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
