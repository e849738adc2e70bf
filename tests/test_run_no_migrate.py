"""`dispatcher run --no-migrate` refuses a schema that is not current, and changes nothing.

A real `dispatcher run` process on a database of its own: empty, or migrated with every
migration but the last (by the migrator itself, given the shorter list), the schema an older
release left behind.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import asyncpg
import pytest

from dispatcher.ops import migrate
from tests.conftest import daemon_process
from tests.test_lifecycle import read_log_until

pytestmark = pytest.mark.slow

# Every table, column and function of the dispatcher schema, and the migrations recorded.
SCHEMA = """
SELECT (SELECT coalesce(array_agg(c.table_name || '.' || c.column_name ORDER BY 1), '{}')
        FROM information_schema.columns c WHERE c.table_schema = 'dispatcher') AS columns,
       (SELECT coalesce(array_agg(p.oid::regprocedure::text ORDER BY 1), '{}')
        FROM pg_proc p WHERE p.pronamespace = to_regnamespace('dispatcher')) AS functions,
       to_regclass('dispatcher.schema_migrations') IS NOT NULL AS has_migrations_table
"""
APPLIED = "SELECT version, name, applied_at FROM dispatcher.schema_migrations ORDER BY version"


async def finished(proc: asyncio.subprocess.Process) -> tuple[int, list[str]]:
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            out = await proc.stdout.read()
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return code, out.decode().splitlines()


async def schema(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        found = dict(await conn.fetchrow(SCHEMA))
        applied = await conn.fetch(APPLIED) if found["has_migrations_table"] else []
        return {**found, "applied": [tuple(r) for r in applied]}
    finally:
        await conn.close()


def refusal(lines: list[str]) -> str:
    """The one error line: the last line, and the only one saying `error:`."""
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [lines[-1]], lines
    assert not any("Traceback" in line for line in lines), lines
    return errors[0]


async def test_an_outdated_schema_is_refused_and_left_as_it_is(
    empty_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    *older, last = migrate.migrations()
    conn = await asyncpg.connect(empty_dsn)
    try:
        monkeypatch.setattr(migrate, "migrations", lambda: older)
        await migrate.apply_migrations(conn)
        monkeypatch.undo()
    finally:
        await conn.close()
    before = await schema(empty_dsn)
    assert [v for v, _, _ in before["applied"]] == [m.version for m in older]

    async with daemon_process(empty_dsn, args=("run", "--no-migrate")) as proc:
        code, lines = await finished(proc)

    assert code == 1, lines
    assert refusal(lines) == (
        "error: database schema is not up to date"
        f" (missing {last.version:03d}_{last.name}); run `dispatcher migrate`"
    )
    assert await schema(empty_dsn) == before

    # What it says to do works, and then the same command starts.
    async with daemon_process(empty_dsn, args=("migrate",)) as proc:
        code, lines = await finished(proc)
    assert (code, lines) == (0, [f"applied {last.version:03d}_{last.name}"])
    async with daemon_process(empty_dsn, args=("run", "--no-migrate")) as proc:
        try:
            await read_log_until(proc, "daemon_started")
            proc.send_signal(signal.SIGTERM)
        finally:
            code, lines = await finished(proc)
    assert code == 0, lines


async def test_an_empty_database_is_refused_and_left_empty(empty_dsn: str) -> None:
    async with daemon_process(empty_dsn, args=("run", "--no-migrate")) as proc:
        code, lines = await finished(proc)

    assert code == 1, lines
    names = ", ".join(f"{m.version:03d}_{m.name}" for m in migrate.migrations())
    assert refusal(lines) == (
        f"error: database schema is not up to date (missing {names}); run `dispatcher migrate`"
    )
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await conn.fetchval("SELECT to_regnamespace('dispatcher')") is None
    finally:
        await conn.close()
