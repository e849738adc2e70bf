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
