"""Webhooks and the event-type catalog, for the CLI, the API and the console alike.

Every rule about what may be created or changed is checked here (or in `validation`, which
these call), so no surface can skip one. Events and deliveries are in `history`. SQL lives in
sql/admin.sql.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from dispatcher.errors import DispatcherError
from dispatcher.manage.validation import (
    STORED_EVENT_TYPE_RE,
    ValidationError,
    check_description,
    check_event_type,
    check_event_types,
    check_name,
    check_url,
    parse_json,
)
from dispatcher.store import load_queries

Q = load_queries("admin.sql")


class NotFound(DispatcherError):
    """An id that names nothing."""


class AlreadyExists(DispatcherError):
    """A name or id that is already taken."""


class UnknownEventTypes(ValidationError):
    """Event types missing from a non-empty catalog; `types` lists them."""

    def __init__(self, types: list[str]) -> None:
        super().__init__(
            f"unknown event type {', '.join(types)}: not in the event-type catalog"
            " (see `dispatcher event-types list`; pass --allow-unknown to use it anyway)"
        )
        self.types = types


def found(row: asyncpg.Record | None, what: str) -> asyncpg.Record:
    """Return `row`, or raise NotFound naming `what` when there is none."""
    if row is None:
        raise NotFound(f"{what} does not exist")
    return row


# --- webhooks ---------------------------------------------------------------------------


async def check_known_types(conn: asyncpg.Connection, types: list[str]) -> None:
    """Reject types missing from a non-empty event-type catalog."""
    unknown: list[str] = await conn.fetchval(Q["unknown_event_types"], types)
    if unknown:
        raise UnknownEventTypes(unknown)


async def create_webhook(
    conn: asyncpg.Connection,
    name: str,
    url: str,
    description: str,
    event_types: list[str],
    *,
    allow_unknown: bool = False,
) -> asyncpg.Record:
    """Check every field, then create the webhook; it is active at once.

    Event types are de-duplicated in order; unless `allow_unknown`, each must be in the
    catalog when the catalog is not empty.
    """
    name, url = check_name(name), check_url(url)
    description = check_description(description)
    types = check_event_types(list(dict.fromkeys(event_types)))
    async with conn.transaction():
        if not allow_unknown:
            await check_known_types(conn, types)
        return await add_webhook(conn, name, url, description, types)


async def add_webhook(
    conn: asyncpg.Connection, name: str, url: str, description: str, event_types: list[str]
) -> asyncpg.Record:
    """Insert a webhook as given: callers outside this module want `create_webhook`."""
    row: asyncpg.Record = await conn.fetchrow(Q["add_webhook"], name, url, description, event_types)
    return row


async def get_webhook(conn: asyncpg.Connection, webhook_id: int) -> asyncpg.Record:
    return found(await conn.fetchrow(Q["get_webhook"], webhook_id), f"webhook {webhook_id}")


async def list_webhooks(conn: asyncpg.Connection, window: timedelta | None) -> list[asyncpg.Record]:
    """List webhooks with their deliveries over `window`; with None, without counts."""
    if window is None:
        bare: list[asyncpg.Record] = await conn.fetch(Q["list_webhooks_only"])
        return bare
    rows: list[asyncpg.Record] = await conn.fetch(Q["list_webhooks"], window.total_seconds())
    return rows


async def recent_failures(
    conn: asyncpg.Connection, webhook_id: int, limit: int = 5
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(Q["recent_failures"], webhook_id, limit)
    return rows


async def edit_webhook(
    conn: asyncpg.Connection,
    webhook_id: int,
    name: str | None = None,
    url: str | None = None,
    description: str | None = None,
) -> asyncpg.Record:
    """Check and change a webhook's name, URL or description; None leaves a field as it is."""
    if name is None and url is None and description is None:
        raise ValidationError("nothing to change: give a new name, URL or description")
    url = None if url is None else check_url(url)
    name = None if name is None else check_name(name)
    description = None if description is None else check_description(description)
    return await update_webhook(conn, webhook_id, name, url, description)


async def update_webhook(
    conn: asyncpg.Connection,
    webhook_id: int,
    name: str | None,
    url: str | None,
    description: str | None,
) -> asyncpg.Record:
    """Write the fields as given: callers outside this module want `edit_webhook`."""
    row = await conn.fetchrow(Q["update_webhook"], webhook_id, name, url, description)
    return found(row, f"webhook {webhook_id}")


async def change_event_types(
    conn: asyncpg.Connection,
    webhook_id: int,
    add: list[str],
    remove: list[str],
    replace: list[str] | None,
    allow_unknown: bool,
) -> asyncpg.Record:
    """Add, remove or replace a webhook's event types in one transaction.

    Added and replacing types must be dotted names (or `*`); a type to remove need only be a
    name the database accepts, so a dotless subscription stored by SQL can be taken off.
    """
    if replace is not None:
        replace = check_event_types(list(dict.fromkeys(replace)))
    add = [check_event_type(t) for t in dict.fromkeys(add)]
    remove = [check_event_type(t, dotted=False) for t in dict.fromkeys(remove)]
    async with conn.transaction():
        current = found(await conn.fetchrow(Q["lock_webhook"], webhook_id), f"webhook {webhook_id}")
        types = list(current["event_types"]) if replace is None else list(replace)
        missing = [t for t in remove if t not in types]
        if missing:
            raise ValidationError(f"webhook {webhook_id} is not subscribed to {', '.join(missing)}")
        types = [t for t in types if t not in remove]
        types += [t for t in add if t not in types]
        if not types:
            raise ValidationError(
                "the event type list would be empty: a webhook needs at least one type"
                " (disable it instead)"
            )
        if not allow_unknown:
            await check_known_types(conn, [t for t in types if t not in current["event_types"]])
        row: asyncpg.Record = await conn.fetchrow(Q["set_event_types"], webhook_id, types)
        return row


MAX_GRACE = timedelta(days=7)


async def rotate_secret(
    conn: asyncpg.Connection, webhook_id: int, grace: timedelta
) -> asyncpg.Record:
    """Give a webhook a new secret; the old one also signs until the grace period ends."""
    if grace < timedelta(0):
        raise ValidationError("invalid grace period: it cannot be negative")
    if grace > MAX_GRACE:
        raise ValidationError("invalid grace period: at most 7 days (168h)")
    row = await conn.fetchrow(Q["rotate_secret"], webhook_id, grace.total_seconds())
    return found(row, f"webhook {webhook_id}")


async def set_status(conn: asyncpg.Connection, webhook_id: int, status: str) -> asyncpg.Record:
    row = await conn.fetchrow(Q["set_status"], webhook_id, status)
    return found(row, f"webhook {webhook_id}")


async def disable_webhook(conn: asyncpg.Connection, webhook_id: int) -> tuple[asyncpg.Record, int]:
    """Disable a webhook; return it and how many pending deliveries were cancelled."""
    row = found(await conn.fetchrow(Q["disable_webhook"], webhook_id), f"webhook {webhook_id}")
    cancelled: int = row["cancelled"]
    return row, cancelled


async def delete_webhook(conn: asyncpg.Connection, webhook_id: int) -> int:
    """Delete a webhook; return how many pending deliveries were cancelled."""
    row = await conn.fetchrow(Q["delete_webhook"], webhook_id)
    if row is None or row["id"] is None:
        raise NotFound(f"webhook {webhook_id} does not exist")
    cancelled: int = row["cancelled"]
    return cancelled


# --- the event-type catalog -------------------------------------------------------------


async def add_event_type(
    conn: asyncpg.Connection, name: str, description: str, sample: str | None
) -> asyncpg.Record:
    """Check and add a type to the catalog; `sample` is JSON text for `webhooks test`."""
    check_event_type(name, allow_star=False)
    description = check_description(description)
    if sample is not None:
        parse_json(sample, what="the sample")
    try:
        row: asyncpg.Record = await conn.fetchrow(Q["add_event_type"], name, description, sample)
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"event type {name} is already in the catalog") from None
    return row


async def list_event_types(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(Q["list_event_types"])
    return rows


async def remove_event_type(conn: asyncpg.Connection, name: str) -> None:
    """Remove a type from the catalog; a name the catalog cannot hold is simply not in it."""
    if not STORED_EVENT_TYPE_RE.fullmatch(name) or (
        await conn.fetchval(Q["remove_event_type"], name) is None
    ):
        raise NotFound(f"event type {name} is not in the catalog")


async def event_type_sample(conn: asyncpg.Connection, name: str) -> str | None:
    sample: str | None = await conn.fetchval(Q["event_type_sample"], name)
    return sample
