"""`dispatcher event-types ...` (the optional catalog) and `dispatcher events ...`."""

from __future__ import annotations

import uuid

import asyncpg
import click

from dispatcher.cli import Context, common_options, main
from dispatcher.cli.output import emit_json, plain, shorten, table
from dispatcher.cli.params import ID, JSON
from dispatcher.manage import admin, history
from dispatcher.manage.fields import EVENT_TYPE_FIELDS

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
JSON_SOURCES = "JSON inline, @PATH to read a file, or - to read standard input"


@main.group(name="event-types")
def event_types() -> None:
    """Manage the optional catalog of known event types."""


@event_types.command(name="add")
@common_options
@click.argument("name")
@click.option("--description", default="", help="What the event means.")
@click.option(
    "--sample", type=JSON, metavar="JSON", help=f"Payload used by `webhooks test`: {JSON_SOURCES}."
)
@json_option
@click.pass_obj
def event_types_add(
    obj: Context, name: str, description: str, sample: str | None, as_json: bool
) -> None:
    """Add an event type to the catalog."""
    row = obj.run(lambda conn: admin.add_event_type(conn, name, description, sample))
    if as_json:
        emit_json(plain(row, EVENT_TYPE_FIELDS))
    else:
        click.echo(f"Added event type {row['name']}.")


@event_types.command(name="list")
@common_options
@json_option
@click.pass_obj
def event_types_list(obj: Context, as_json: bool) -> None:
    """List the catalog, then the built-in types. While the catalog is empty, any type may be used.

    --json lists the catalog only; the built-in operator types are never part of it.
    """

    async def work(conn: asyncpg.Connection) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        return await admin.list_event_types(conn), await admin.list_builtin_event_types(conn)

    rows, builtin = obj.run(work)
    if as_json:
        emit_json([{**plain(r, EVENT_TYPE_FIELDS), "webhooks": r["webhooks"]} for r in rows])
        return
    if not rows:
        click.echo("The catalog is empty: webhooks may subscribe to any event type.")
    else:
        table(
            [
                (r["name"], shorten(r["description"], 40), r["webhooks"], shorten(r["sample"], 40))
                for r in rows
            ],
            ("name", "description", "webhooks", "sample"),
        )
    click.echo("\nBuilt in, published by the daemon; a webhook gets them only by naming them:")
    table([(r["name"], r["webhooks"]) for r in builtin], ("name", "webhooks"))


@event_types.command(name="remove")
@common_options
@click.argument("name")
@click.pass_obj
def event_types_remove(obj: Context, name: str) -> None:
    """Remove an event type from the catalog (webhooks keep their subscriptions)."""
    obj.run(lambda conn: admin.remove_event_type(conn, name))
    click.echo(f"Removed event type {name}.")


@main.group()
def events() -> None:
    """Publish and resend events."""


@events.command()
@common_options
@click.argument("event_type")
@click.option(
    "--data", required=True, type=JSON, metavar="JSON", help=f"The event's payload: {JSON_SOURCES}."
)
@click.option(
    "--message-id", type=click.UUID, metavar="UUID", help="Idempotency key; generated if omitted."
)
@click.option("--allow-unknown", is_flag=True, help="Accept a type missing from the catalog.")
@json_option
@click.pass_obj
def publish(
    obj: Context,
    event_type: str,
    data: str,
    message_id: uuid.UUID | None,
    allow_unknown: bool,
    as_json: bool,
) -> None:
    """Publish an event, exactly as `SELECT dispatcher.publish(...)` does."""
    result = obj.run(
        lambda conn: history.publish_event(
            conn, event_type, data, message_id, allow_unknown=allow_unknown
        )
    )
    if result.created and not result.deliveries:
        click.echo(
            f"warning: no active webhook subscribes to {event_type}: the event is stored,"
            " but nothing is sent",
            err=True,
        )
    if as_json:
        emit_json(
            {
                "message_id": result.message_id,
                "created": result.created,
                "deliveries": result.deliveries,
            }
        )
    elif result.created:
        click.echo(f"Published {result.message_id} to {result.deliveries} webhook(s).")
    else:
        click.echo(f"Event {result.message_id} already exists; nothing new was published.")


@events.command()
@common_options
@click.argument("message_id", type=click.UUID)
@click.option(
    "--webhook",
    "webhook_id",
    type=ID,
    help="Resend to this webhook only (default: every active webhook that had it).",
)
@json_option
@click.pass_obj
def resend(obj: Context, message_id: uuid.UUID, webhook_id: int | None, as_json: bool) -> None:
    """Resend a stored event: a new delivery, fresh retries, the same messageId."""

    async def work(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        return await history.resend_event(conn, message_id, webhook_id)

    rows = obj.run(work)
    if as_json:
        emit_json([{"delivery_id": r["id"], "webhook_id": r["webhook_id"]} for r in rows])
        return
    for r in rows:
        click.echo(f"Queued delivery {r['id']} of {message_id} to webhook {r['webhook_id']}.")
