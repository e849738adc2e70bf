"""Management operations behind the CLI, the API and the console: one coroutine per task.

Every rule about what may be created or changed is checked here (or in `validation`, which
these call), so no surface can skip one. SQL lives in sql/admin.sql.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg

from dispatcher.errors import DispatcherError
from dispatcher.manage.validation import (
    STORED_EVENT_TYPE_RE,
    ValidationError,
    check_description,
    check_event_type,
    check_event_types,
    check_name,
    check_text,
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


DELIVERY_STATUSES = ("pending", "succeeded", "failed", "cancelled")
RESENDABLE_STATUSES = ("failed", "cancelled")


def _seconds(window: timedelta | None) -> float | None:
    return None if window is None else window.total_seconds()


def _require(row: asyncpg.Record | None, what: str) -> asyncpg.Record:
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
    return _require(await conn.fetchrow(Q["get_webhook"], webhook_id), f"webhook {webhook_id}")


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
    return _require(row, f"webhook {webhook_id}")


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
        current = _require(
            await conn.fetchrow(Q["lock_webhook"], webhook_id), f"webhook {webhook_id}"
        )
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
    return _require(row, f"webhook {webhook_id}")


async def set_status(conn: asyncpg.Connection, webhook_id: int, status: str) -> asyncpg.Record:
    row = await conn.fetchrow(Q["set_status"], webhook_id, status)
    return _require(row, f"webhook {webhook_id}")


async def disable_webhook(conn: asyncpg.Connection, webhook_id: int) -> tuple[asyncpg.Record, int]:
    """Disable a webhook; return it and how many pending deliveries were cancelled."""
    row = _require(await conn.fetchrow(Q["disable_webhook"], webhook_id), f"webhook {webhook_id}")
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


# --- events -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """What a publish did; `same_as_sent` is false when an existing id holds another event."""

    message_id: str
    created: bool
    deliveries: int
    same_as_sent: bool = True


async def publish_event(
    conn: asyncpg.Connection,
    event_type: str,
    data_json: str,
    message_id: uuid.UUID | None = None,
    *,
    allow_unknown: bool = False,
) -> Published:
    """Check and publish an event, idempotent on `message_id`, as `dispatcher.publish` is.

    The type must be a dotted name and, unless `allow_unknown`, in a non-empty catalog;
    `data_json` must be JSON that jsonb can store. It is stored as given.
    """
    check_event_type(event_type, allow_star=False)
    parse_json(data_json, what="the data")
    if not allow_unknown:
        await check_known_types(conn, [event_type])
    return await publish(conn, event_type, data_json, message_id)


async def publish(
    conn: asyncpg.Connection, event_type: str, data_json: str, message_id: uuid.UUID | None
) -> Published:
    """Publish without checks: callers outside this module want `publish_event`."""
    async with conn.transaction():
        row = await conn.fetchrow(Q["publish"], event_type, data_json, message_id)
        if row is None:
            # Another transaction inserted this id while ours waited on it: a new statement
            # sees that row.
            row = await conn.fetchrow(Q["published_before"], event_type, data_json, message_id)
            assert row is not None
        count: int = await conn.fetchval(Q["deliveries_of_message"], row["message_id"])
    return Published(str(row["message_id"]), row["created"], count, row["same_as_sent"])


async def get_event(conn: asyncpg.Connection, message_id: uuid.UUID) -> asyncpg.Record:
    return _require(await conn.fetchrow(Q["get_event"], message_id), f"event {message_id}")


async def event_deliveries(conn: asyncpg.Connection, message_id: uuid.UUID) -> list[asyncpg.Record]:
    """Every delivery of one event, oldest first."""
    rows: list[asyncpg.Record] = await conn.fetch(Q["event_deliveries"], message_id)
    return rows


async def resend_event(
    conn: asyncpg.Connection, message_id: uuid.UUID, webhook_id: int | None
) -> list[asyncpg.Record]:
    """Create new deliveries of a stored event; raise if there is nothing to send it to."""
    await get_event(conn, message_id)
    if webhook_id is not None:
        webhook = await get_webhook(conn, webhook_id)
        if webhook["status"] != "active":
            raise ValidationError(f"webhook {webhook_id} is disabled; enable it first")
    async with conn.transaction():
        rows: list[asyncpg.Record] = await conn.fetch(Q["resend_event"], message_id, webhook_id)
        if rows:
            await conn.execute(Q["notify"])
    if not rows:
        raise ValidationError(
            f"event {message_id} has no active webhook to resend to; name one with --webhook"
        )
    return rows


async def resend_delivery(conn: asyncpg.Connection, delivery_id: int) -> list[asyncpg.Record]:
    """Resend one delivery's event to that delivery's webhook, as a new delivery."""
    row, _ = await get_delivery(conn, delivery_id)
    if row["webhook_id"] is None or row["service_name"] is None:
        raise ValidationError(f"delivery {delivery_id}'s webhook was deleted; nothing to resend to")
    return await resend_event(conn, row["message_id"], row["webhook_id"])


# --- deliveries -------------------------------------------------------------------------


async def list_deliveries(
    conn: asyncpg.Connection,
    webhook_id: int | None,
    status: str | None,
    event_type: str | None,
    since: timedelta | None,
    limit: int,
    *,
    before_id: int | None = None,
) -> list[asyncpg.Record]:
    """List deliveries newest first (by id); `before_id` starts the page after that id."""
    if status is not None and status not in DELIVERY_STATUSES:
        raise ValidationError(
            f"invalid status {status!r}: use one of {', '.join(DELIVERY_STATUSES)}"
        )
    if event_type is not None:
        check_text(event_type, "the event type", "PostgreSQL")
    rows: list[asyncpg.Record] = await conn.fetch(
        Q["list_deliveries"], webhook_id, status, event_type, _seconds(since), limit, before_id
    )
    return rows


async def get_delivery(
    conn: asyncpg.Connection, delivery_id: int
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    row = _require(await conn.fetchrow(Q["get_delivery"], delivery_id), f"delivery {delivery_id}")
    attempts: list[asyncpg.Record] = await conn.fetch(Q["delivery_attempts"], delivery_id)
    return row, attempts


async def bulk_resend(
    conn: asyncpg.Connection,
    status: str,
    since: timedelta,
    webhook_id: int | None,
    dry_run: bool,
) -> tuple[int, int]:
    """Return (matched, resent); with dry_run nothing is written."""
    if status not in RESENDABLE_STATUSES:
        raise ValidationError(
            f"invalid status {status!r}: only {' or '.join(RESENDABLE_STATUSES)} deliveries"
            " are resent"
        )
    if webhook_id is not None:
        await get_webhook(conn, webhook_id)
    async with conn.transaction():
        row = await conn.fetchrow(
            Q["bulk_resend"], status, since.total_seconds(), webhook_id, dry_run
        )
        assert row is not None
        if row["resent"]:
            await conn.execute(Q["notify"])
    return row["matched"], row["resent"]


async def stats(conn: asyncpg.Connection, window: timedelta) -> dict[str, Any]:
    queue = await conn.fetchrow(Q["queue_stats"])
    assert queue is not None
    per_webhook = await conn.fetch(Q["webhook_stats"], window.total_seconds())
    return {
        "window_s": window.total_seconds(),
        "due_now": queue["due_now"],
        "scheduled": queue["scheduled"],
        "leased": queue["leased"],
        "oldest_due_s": queue["oldest_due_s"],
        "webhooks": [dict(r) for r in per_webhook],
    }
