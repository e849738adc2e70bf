"""API tokens and console sessions: create, list, revoke, and check what a request presents."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from dispatcher.manage.admin import NotFound
from dispatcher.manage.validation import ValidationError
from dispatcher.store import load_queries

Q = load_queries("tokens.sql")

# A recognisable prefix lets secret scanners (and people) tell our tokens from other strings.
TOKEN_PREFIX = "dwt_"
SESSION_LIFETIME = timedelta(hours=12)


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a token, directly or through a console session."""

    token_id: int
    name: str
    read_only: bool
    # Set only for console sessions: the value every state-changing form must carry.
    csrf_token: str | None = None


@dataclass(frozen=True)
class NewToken:
    """A token as created: `token` is shown once and never stored."""

    token: str
    row: asyncpg.Record


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


async def create_token(conn: asyncpg.Connection, name: str, read_only: bool) -> NewToken:
    """Create a token; only its hash is stored, so this is the one time it can be shown."""
    name = name.strip()
    if not name:
        raise ValidationError("invalid token name: it is empty")
    if len(name) > 200:
        raise ValidationError("invalid token name: longer than 200 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row: asyncpg.Record = await conn.fetchrow(
        Q["create_token"], name, _digest(token), token[: len(TOKEN_PREFIX) + 6], read_only
    )
    return NewToken(token, row)


async def list_tokens(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(Q["list_tokens"])
    return rows


async def revoke_token(conn: asyncpg.Connection, token_id: int) -> asyncpg.Record:
    """Revoke a token at once; console sessions opened with it end too."""
    row = await conn.fetchrow(Q["revoke_token"], token_id)
    if row is None:
        raise NotFound(f"token {token_id} does not exist")
    return row


async def active_token_count(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval(Q["active_token_count"])
    return count


async def authenticate_token(conn: asyncpg.Connection, token: str) -> Principal | None:
    """Return who a bearer token belongs to, or None if it is unknown or revoked."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = await conn.fetchrow(Q["authenticate_token"], _digest(token))
    return None if row is None else Principal(row["id"], row["name"], row["read_only"])


async def open_session(conn: asyncpg.Connection, principal: Principal) -> tuple[str, str]:
    """Start a console session for a token; return (session id for the cookie, CSRF token)."""
    session_id = secrets.token_urlsafe(32)
    csrf_token = secrets.token_urlsafe(32)
    await conn.execute(Q["purge_sessions"])
    await conn.execute(
        Q["create_session"],
        _digest(session_id),
        principal.token_id,
        csrf_token,
        SESSION_LIFETIME.total_seconds(),
    )
    return session_id, csrf_token


async def authenticate_session(conn: asyncpg.Connection, session_id: str) -> Principal | None:
    """Return who a console session acts as, or None if it ended, expired or was revoked."""
    row = await conn.fetchrow(Q["authenticate_session"], _digest(session_id))
    if row is None:
        return None
    return Principal(row["id"], row["name"], row["read_only"], row["csrf_token"])


async def end_session(conn: asyncpg.Connection, session_id: str) -> None:
    await conn.execute(Q["end_session"], _digest(session_id))
