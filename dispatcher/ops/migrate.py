"""Apply the numbered SQL files in sql/migrations once each, in order, under an advisory lock."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from dispatcher.errors import DispatcherError

# Any constant works; it only has to be the same for every instance sharing a database.
MIGRATION_LOCK_KEY = 0x7765626863686B  # "webhchk"

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS dispatcher;
CREATE TABLE IF NOT EXISTS dispatcher.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Return the packaged migrations in version order."""
    found = []
    for entry in resources.files("dispatcher.sql").joinpath("migrations").iterdir():
        match = re.fullmatch(r"(\d{3})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def apply_migrations(conn: asyncpg.Connection) -> list[Migration]:
    """Apply every migration not applied yet; return the ones applied now."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_BOOTSTRAP)
        done = {
            r["version"]
            for r in await conn.fetch("SELECT version FROM dispatcher.schema_migrations")
        }
        applied = []
        for migration in migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO dispatcher.schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied.append(migration)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def check_migrations(conn: asyncpg.Connection) -> None:
    """Raise unless every packaged migration has been applied."""
    exists = await conn.fetchval("SELECT to_regclass('dispatcher.schema_migrations') IS NOT NULL")
    done = set()
    if exists:
        done = {
            r["version"]
            for r in await conn.fetch("SELECT version FROM dispatcher.schema_migrations")
        }
    missing = [m for m in migrations() if m.version not in done]
    if missing:
        names = ", ".join(f"{m.version:03d}_{m.name}" for m in missing)
        raise DispatcherError(
            f"database schema is not up to date (missing {names}); run `dispatcher migrate`"
        )
