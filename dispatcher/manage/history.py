"""Events and what became of them: publish, resend, the delivery log and its figures.

Called by the CLI, the API and the console alike, as `admin` is for webhooks and the catalog.
SQL lives in sql/history.sql.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg

from dispatcher.delivery.health import OPERATOR_PREFIX
from dispatcher.manage.admin import check_known_types, found, get_webhook
from dispatcher.manage.validation import ValidationError, check_event_type, check_text, parse_json
from dispatcher.store import load_queries

Q = load_queries("history.sql")

DELIVERY_STATUSES = ("pending", "succeeded", "failed", "cancelled")
RESENDABLE_STATUSES = ("failed", "cancelled")


def _seconds(window: timedelta | None) -> float | None:
    return None if window is None else window.total_seconds()


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
    if event_type.startswith(OPERATOR_PREFIX):
        # Receivers of operator events must be able to trust that the daemon sent them.
        raise ValidationError(
            f"event type {event_type} is reserved: only the daemon publishes {OPERATOR_PREFIX}*"
            " operator events (try an operations webhook with"
            " `dispatcher webhooks test ID --event-type dispatcher.webhook.disabled`)"
        )
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
    return found(await conn.fetchrow(Q["get_event"], message_id), f"event {message_id}")


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
    row = found(await conn.fetchrow(Q["get_delivery"], delivery_id), f"delivery {delivery_id}")
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
