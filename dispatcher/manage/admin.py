"""Webhooks and the event-type catalog, for the CLI, the API and the console alike.

Every rule about what may be created or changed is checked here (or in `validation`, which
these call), so no surface can skip one. Events and deliveries are in `history`. SQL lives in
sql/admin.sql.
"""

from __future__ import annotations

import enum
from datetime import timedelta

import asyncpg

from dispatcher.errors import DispatcherError
from dispatcher.manage.health import OPERATOR_EVENT_TYPES
from dispatcher.manage.validation import (
    STORED_EVENT_TYPE_RE,
    ValidationError,
    check_description,
    check_event_type,
    check_event_types,
    check_max_concurrency,
    check_name,
    check_rate_limit,
    check_retry_policy,
    check_url,
    parse_json,
)
from dispatcher.store import load_queries

Q = load_queries("admin.sql")
BUILTIN_NAMES = list(OPERATOR_EVENT_TYPES)


class Keep(enum.Enum):
    """An edit's "leave this field as it is", where None means "clear it"."""

    KEEP = "keep"


KEEP = Keep.KEEP


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
    """Reject types missing from a non-empty event-type catalog; built-in ones are known."""
    unknown: list[str] = await conn.fetchval(Q["unknown_event_types"], types, BUILTIN_NAMES)
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
    rate_limit: float | None = None,
    retry_policy: str | None = None,
    max_concurrency: int | None = None,
) -> asyncpg.Record:
    """Check every field, then create the webhook; it is active at once.

    Event types are de-duplicated in order; unless `allow_unknown`, each must be in the
    catalog when the catalog is not empty. `rate_limit` is in requests per second (None: no
    limit); `retry_policy` None means the daemon's default; `max_concurrency` caps its
    attempts in flight over all instances (None: the daemon's per_endpoint_concurrency).
    """
    name, url = check_name(name), check_url(url)
    description = check_description(description)
    types = check_event_types(list(dict.fromkeys(event_types)))
    rate_limit = None if rate_limit is None else check_rate_limit(rate_limit)
    retry_policy = None if retry_policy is None else check_retry_policy(retry_policy)
    if max_concurrency is not None:
        max_concurrency = check_max_concurrency(max_concurrency)
    async with conn.transaction():
        if not allow_unknown:
            await check_known_types(conn, types)
        row: asyncpg.Record = await conn.fetchrow(
            Q["add_webhook"],
            name,
            url,
            description,
            types,
            rate_limit,
            retry_policy,
            max_concurrency,
        )
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
    rate_limit: float | Keep | None = KEEP,
    retry_policy: str | Keep | None = KEEP,
    max_concurrency: int | Keep | None = KEEP,
) -> asyncpg.Record:
    """Check and change a webhook's fields.

    None leaves a name, URL or description as it is; KEEP leaves the rate limit, the retry
    policy or the concurrency cap as it is, and None clears it (no limit; the daemon's default
    policy; the daemon's per_endpoint_concurrency).
    """
    flow = (rate_limit, retry_policy, max_concurrency)
    if (name, url, description) == (None, None, None) and all(f is KEEP for f in flow):
        raise ValidationError(
            "nothing to change: give a new name, URL, description, rate limit, retry policy or"
            " max concurrency"
        )
    url = None if url is None else check_url(url)
    name = None if name is None else check_name(name)
    description = None if description is None else check_description(description)
    if rate_limit is not None and rate_limit is not KEEP:
        rate_limit = check_rate_limit(rate_limit)
    if retry_policy is not None and retry_policy is not KEEP:
        retry_policy = check_retry_policy(retry_policy)
    if max_concurrency is not None and max_concurrency is not KEEP:
        max_concurrency = check_max_concurrency(max_concurrency)
    row = await conn.fetchrow(
        Q["update_webhook"],
        webhook_id,
        name,
        url,
        description,
        rate_limit is not KEEP,
        None if rate_limit is KEEP else rate_limit,
        retry_policy is not KEEP,
        None if retry_policy is KEEP else retry_policy,
        max_concurrency is not KEEP,
        None if max_concurrency is KEEP else max_concurrency,
    )
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


async def enable_webhook(conn: asyncpg.Connection, webhook_id: int) -> asyncpg.Record:
    """Enable a webhook: forget why it was disabled, and start its health afresh.

    The failure streak and the circuit breaker are reset, so it gets the full retry policy
    and the full time before it is called failing again; its last failure and last error stay.
    """
    async with conn.transaction():
        changed = await conn.fetchrow(Q["enable_webhook"], webhook_id)
        if changed is None or changed["old_status"] is None:
            raise NotFound(f"webhook {webhook_id} does not exist")
        return await get_webhook(conn, webhook_id)


async def disable_webhook(conn: asyncpg.Connection, webhook_id: int) -> tuple[asyncpg.Record, int]:
    """Disable a webhook by hand; return it and how many pending deliveries were cancelled.

    It is recorded as disabled_reason 'manual', at the database's now(); one that was already
    disabled keeps its reason and time.
    """
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
    if name in OPERATOR_EVENT_TYPES:
        raise AlreadyExists(f"event type {name} is built in: webhooks may always subscribe to it")
    description = check_description(description)
    if sample is not None:
        parse_json(sample, what="the sample")
    try:
        row: asyncpg.Record = await conn.fetchrow(Q["add_event_type"], name, description, sample)
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"event type {name} is already in the catalog") from None
    return row


async def list_event_types(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """List the catalog: the types people added, without the built-in ones."""
    rows: list[asyncpg.Record] = await conn.fetch(Q["list_event_types"])
    return rows


async def list_builtin_event_types(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """List the built-in operator event types, shaped as catalog rows (no sample, no date)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        Q["list_builtin_event_types"], BUILTIN_NAMES, list(OPERATOR_EVENT_TYPES.values())
    )
    return rows


async def remove_event_type(conn: asyncpg.Connection, name: str) -> None:
    """Remove a type from the catalog; a name the catalog cannot hold is simply not in it."""
    if name in OPERATOR_EVENT_TYPES:
        raise ValidationError(f"event type {name} is built in and cannot be removed")
    if not STORED_EVENT_TYPE_RE.fullmatch(name) or (
        await conn.fetchval(Q["remove_event_type"], name) is None
    ):
        raise NotFound(f"event type {name} is not in the catalog")


async def event_type_sample(conn: asyncpg.Connection, name: str) -> str | None:
    sample: str | None = await conn.fetchval(Q["event_type_sample"], name)
    return sample
