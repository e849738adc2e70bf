"""`dispatcher deliveries ...` (the delivery log and bulk recovery) and `dispatcher stats`."""

from __future__ import annotations

import click

from dispatcher.cli import Context, common_options, main
from dispatcher.cli.output import ago, emit_json, fields, plain, shorten, table
from dispatcher.cli.params import DURATION, ID, Duration
from dispatcher.manage import history
from dispatcher.manage.fields import ATTEMPT_FIELDS, DELIVERY_FIELDS
from dispatcher.manage.health import retry_text

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
STATUSES = click.Choice(["pending", "succeeded", "failed", "cancelled"])


@main.group()
def deliveries() -> None:
    """Read the delivery log and resend failures."""


@deliveries.command(name="list")
@common_options
@click.option("--webhook", "webhook_id", type=ID, help="Only this webhook.")
@click.option("--status", type=STATUSES, help="Only deliveries in this state.")
@click.option("--event-type", help="Only events of this type.")
@click.option(
    "--since", type=DURATION, metavar="DURATION", help="Only deliveries created this recently (2h)."
)
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@json_option
@click.pass_obj
def list_(
    obj: Context,
    webhook_id: int | None,
    status: str | None,
    event_type: str | None,
    since: Duration | None,
    limit: int,
    as_json: bool,
) -> None:
    """List deliveries, newest first."""
    window = None if since is None else since.delta
    rows = obj.run(
        lambda conn: history.list_deliveries(conn, webhook_id, status, event_type, window, limit)
    )
    if as_json:
        emit_json([plain(r, DELIVERY_FIELDS) for r in rows])
        return
    if not rows:
        click.echo("No deliveries match.")
        return
    table(
        [
            (
                r["id"],
                r["created_at"],
                f"{r['webhook_id']} {shorten(r['service_name'] or '(deleted)', 20)}",
                r["event_type"],
                r["status"] + ("" if r["kind"] == "event" else f" ({r['kind']})"),
                r["attempts"],
                r["last_response_status"] or r["last_error_kind"],
                str(r["message_id"]),
            )
            for r in rows
        ],
        ("id", "created", "webhook", "event type", "status", "attempts", "last", "message id"),
    )


@deliveries.command()
@common_options
@click.argument("delivery_id", type=ID)
@json_option
@click.pass_obj
def show(obj: Context, delivery_id: int, as_json: bool) -> None:
    """Show a delivery and every attempt: status, time, duration, error, response."""
    row, attempts = obj.run(lambda conn: history.get_delivery(conn, delivery_id))
    if as_json:
        emit_json(
            {
                **plain(row, DELIVERY_FIELDS),
                "url": row["url"],
                "payload": plain(row, ("payload",))["payload"],
                "leased": row["leased"],
                "attempts_log": [plain(a, ATTEMPT_FIELDS) for a in attempts],
            }
        )
        return
    fields(
        [
            ("delivery", row["id"]),
            ("message id", str(row["message_id"])),
            ("event type", row["event_type"]),
            ("webhook", f"{row['webhook_id']} {row['service_name'] or '(deleted)'}"),
            ("url", row["url"]),
            ("kind", row["kind"]),
            ("status", row["status"] + (" (in flight)" if row["leased"] else "")),
            ("attempts", row["attempts"]),
            ("created", row["created_at"]),
            ("finished", row["finished_at"]),
            ("next attempt", row["next_attempt_at"]),
            ("payload", shorten(row["payload"], 100)),
        ]
    )
    if not attempts:
        click.echo("\nNo attempts yet.")
        return
    click.echo("\nAttempts:")
    table(
        [
            (
                a["attempt"],
                a["started_at"],
                f"{a['duration_ms']} ms",
                a["response_status"],
                a["error_kind"],
                shorten(a["error_message"], 50),
                shorten(a["response_body"], 40) + (" …" if a["response_truncated"] else ""),
                retry_text(a["retry_in_s"], a["retry_reason"]),
            )
            for a in attempts
        ],
        ("#", "started", "took", "status", "error", "message", "response", "then"),
    )


@deliveries.command()
@common_options
@click.option(
    "--status",
    type=click.Choice(["failed", "cancelled"]),
    default="failed",
    show_default=True,
    help="Which finished deliveries to resend.",
)
@click.option(
    "--since", type=DURATION, metavar="DURATION", required=True, help="How far back to look (24h)."
)
@click.option("--webhook", "webhook_id", type=ID, help="Only this webhook.")
@click.option("--dry-run", is_flag=True, help="Only count what would be resent.")
@json_option
@click.pass_obj
def resend(
    obj: Context,
    status: str,
    since: Duration,
    webhook_id: int | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Resend failed deliveries in bulk, each as a new delivery with fresh retries.

    An (event, webhook) pair that already has a newer delivery is skipped, so running the
    same recovery twice does not send twice.
    """
    matched, resent = obj.run(
        lambda conn: history.bulk_resend(conn, status, since.delta, webhook_id, dry_run)
    )
    if as_json:
        emit_json({"matched": matched, "resent": resent, "dry_run": dry_run})
        return
    scope = f" of webhook {webhook_id}" if webhook_id is not None else ""
    click.echo(f"{matched} {status} deliveries{scope} from the last {since.text} to resend.")
    click.echo("Dry run: nothing was sent." if dry_run else f"Queued {resent} new deliveries.")


@main.command()
@common_options
@click.option(
    "--window",
    default="24h",
    show_default=True,
    type=DURATION,
    metavar="DURATION",
    help="Period for the per-webhook counts.",
)
@json_option
@click.pass_obj
def stats(obj: Context, window: Duration, as_json: bool) -> None:
    """Show queue depth, leases in flight, the oldest due delivery, and outcomes per webhook."""
    data = obj.run(lambda conn: history.stats(conn, window.delta))
    if as_json:
        emit_json(data)
        return
    fields(
        [
            ("due now", data["due_now"]),
            ("scheduled later", data["scheduled"]),
            ("in flight (leased)", data["leased"]),
            ("oldest due", ago(data["oldest_due_s"])),
        ]
    )
    if data["webhooks"]:
        click.echo(f"\nLast {window.text} by webhook:")
        table(
            [
                (
                    w["webhook_id"],
                    shorten(w["service_name"], 30),
                    w["status"],
                    w["succeeded"],
                    w["failed"],
                    w["pending"],
                )
                for w in data["webhooks"]
            ],
            ("id", "name", "status", "succeeded", "failed", "pending now"),
        )
