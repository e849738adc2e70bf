"""`dispatcher webhooks ...`: add, list, show, edit, events, enable, disable, delete, test."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from typing import Any

import asyncpg
import click

from dispatcher.cli import Context, common_options, main
from dispatcher.cli.output import cell, emit_json, fields, plain, shorten, table
from dispatcher.cli.params import ID, Duration, DurationType, split_values
from dispatcher.cli.webhook_view import (
    concurrency,
    list_json,
    parse_max_concurrency,
    parse_rate_limit,
    parse_retry_policy,
    print_health,
    print_list,
    print_webhook,
    rate,
    webhook_json,
)
from dispatcher.delivery.netguard import refusal, target_warning
from dispatcher.errors import DispatcherError
from dispatcher.manage import admin
from dispatcher.manage.fields import FAILURE_FIELDS
from dispatcher.manage.testevent import TestResult, send_test
from dispatcher.manage.validation import check_event_type

DAY = timedelta(days=1)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
RATE_LIMIT_HELP = "Requests per second at most (a number, e.g. 5 or 0.5); none for no limit."
MAX_CONCURRENCY_HELP = (
    "Attempts in flight at once over all instances (1 to 1000); default: the daemon's"
    " per_endpoint_concurrency."
)
RETRY_POLICY_HELP = (
    "schedule (retry_schedule), exponential (with full jitter), or default: the daemon's"
    " retry_policy."
)


@main.group()
def webhooks() -> None:
    """Manage webhook endpoints."""


@webhooks.command()
@common_options
@click.option("--name", required=True, help='Service name, e.g. "Zapier".')
@click.option("--url", required=True, help="Endpoint URL (http or https).")
@click.option(
    "--events",
    "event_types",
    required=True,
    multiple=True,
    help="Event types to send, comma-separated or repeated; * for all.",
)
@click.option("--description", default="", help="Free text for operators.")
@click.option("--allow-unknown", is_flag=True, help="Accept types missing from the catalog.")
@click.option("--rate-limit", metavar="PER_SECOND", help=RATE_LIMIT_HELP)
@click.option("--retry-policy", metavar="POLICY", help=RETRY_POLICY_HELP)
@click.option("--max-concurrency", metavar="N", help=MAX_CONCURRENCY_HELP)
@json_option
@click.pass_obj
def add(
    obj: Context,
    name: str,
    url: str,
    event_types: tuple[str, ...],
    description: str,
    allow_unknown: bool,
    rate_limit: str | None,
    retry_policy: str | None,
    max_concurrency: str | None,
    as_json: bool,
) -> None:
    """Create a webhook; it is active at once. Prints its id and secret."""
    types = split_values(event_types)
    limit = None if rate_limit is None else parse_rate_limit(rate_limit)
    policy = None if retry_policy is None else parse_retry_policy(retry_policy)
    cap = None if max_concurrency is None else parse_max_concurrency(max_concurrency)
    row = obj.run(
        lambda conn: admin.create_webhook(
            conn,
            name,
            url,
            description,
            types,
            allow_unknown=allow_unknown,
            rate_limit=limit,
            retry_policy=policy,
            max_concurrency=cap,
        )
    )
    warn_if_refused(obj, row["url"])
    if as_json:
        emit_json(webhook_json(row))
        return
    click.echo(f"Created webhook {row['id']} ({row['service_name']}), active.")
    pairs: list[tuple[str, Any]] = [("url", row["url"]), ("events", row["event_types"])]
    if row["rate_limit"] is not None:
        pairs.append(("rate limit", rate(row["rate_limit"])))
    if row["retry_policy"] is not None:
        pairs.append(("retry policy", row["retry_policy"]))
    if row["max_concurrency"] is not None:
        pairs.append(("concurrency", concurrency(row["max_concurrency"])))
    fields([*pairs, ("secret", row["secret"])])
    click.echo("Receivers verify the webhook-signature header with this secret.")


@webhooks.command(name="list")
@common_options
@json_option
@click.pass_obj
def list_(obj: Context, as_json: bool) -> None:
    """List webhooks with their health and their deliveries over the last 24 hours.

    SUCCESS 24H is the share of the last 24 hours' finished deliveries that succeeded.
    """
    rows = obj.run(lambda conn: admin.list_webhooks(conn, DAY))
    if as_json:
        emit_json(list_json(rows))
        return
    if not rows:
        click.echo("No webhooks yet. Add one with `dispatcher webhooks add`.")
        return
    print_list(rows)


@webhooks.command()
@common_options
@click.argument("webhook_id", type=ID)
@json_option
@click.pass_obj
def show(obj: Context, webhook_id: int, as_json: bool) -> None:
    """Show every detail of a webhook, its secret and health included, and its recent failures."""

    async def work(conn: asyncpg.Connection) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
        row = await admin.get_webhook(conn, webhook_id)
        return row, await admin.recent_failures(conn, webhook_id)

    row, failures = obj.run(work)
    if as_json:
        emit_json(
            {
                **webhook_json(row),
                "secret": row["secret"],
                "previous_secret": row["previous_secret"],
                "previous_secret_expires_at": row["previous_secret_expires_at"],
                "recent_failures": [plain(f, FAILURE_FIELDS) for f in failures],
            }
        )
        return
    print_webhook(row, show_secret=True)
    print_health(row)
    if failures:
        click.echo("\nRecent failures:")
        table(
            [
                (
                    f["started_at"],
                    f["delivery_id"],
                    f["event_type"],
                    f["attempt"],
                    f["response_status"],
                    f["error_kind"],
                    shorten(f["error_message"], 60),
                )
                for f in failures
            ],
            ("at", "delivery", "event type", "attempt", "status", "error", "message"),
        )
    else:
        click.echo("\nNo failed attempts.")


def warn_if_refused(obj: Context, url: str) -> None:
    """Warn on stderr when the SSRF guard would refuse the URL as it resolves now."""
    warning = asyncio.run(target_warning(url, obj.settings().allowed))
    if warning:
        click.echo(f"warning: {warning}", err=True)


@webhooks.command()
@common_options
@click.argument("webhook_id", type=ID)
@click.option("--url", help="New endpoint URL.")
@click.option("--name", help="New service name.")
@click.option("--description", help="New description.")
@click.option("--rate-limit", metavar="PER_SECOND", help=RATE_LIMIT_HELP)
@click.option("--retry-policy", metavar="POLICY", help=RETRY_POLICY_HELP)
@click.option("--max-concurrency", metavar="N", help=MAX_CONCURRENCY_HELP)
@json_option
@click.pass_obj
def edit(
    obj: Context,
    webhook_id: int,
    url: str | None,
    name: str | None,
    description: str | None,
    rate_limit: str | None,
    retry_policy: str | None,
    max_concurrency: str | None,
    as_json: bool,
) -> None:
    """Change a webhook's URL, name, description, rate limit, retry policy or max concurrency."""
    if (url, name, description, rate_limit, retry_policy, max_concurrency) == (None,) * 6:
        raise click.UsageError(
            "nothing to change: give --url, --name, --description, --rate-limit,"
            " --retry-policy or --max-concurrency"
        )
    limit = admin.KEEP if rate_limit is None else parse_rate_limit(rate_limit)
    policy = admin.KEEP if retry_policy is None else parse_retry_policy(retry_policy)
    cap = admin.KEEP if max_concurrency is None else parse_max_concurrency(max_concurrency)
    row = obj.run(
        lambda conn: admin.edit_webhook(
            conn,
            webhook_id,
            name=name,
            url=url,
            description=description,
            rate_limit=limit,
            retry_policy=policy,
            max_concurrency=cap,
        )
    )
    if url is not None:
        warn_if_refused(obj, row["url"])
    if as_json:
        emit_json(webhook_json(row))
        return
    click.echo(f"Updated webhook {webhook_id}.")
    print_webhook(row)


@webhooks.command(name="events")
@common_options
@click.argument("webhook_id", type=ID)
@click.option("--add", "to_add", multiple=True, metavar="TYPE", help="Start sending these types.")
@click.option(
    "--remove", "to_remove", multiple=True, metavar="TYPE", help="Stop sending these types."
)
@click.option("--set", "to_set", multiple=True, metavar="TYPE", help="Replace the whole list.")
@click.option("--allow-unknown", is_flag=True, help="Accept types missing from the catalog.")
@json_option
@click.pass_obj
def events_(
    obj: Context,
    webhook_id: int,
    to_add: tuple[str, ...],
    to_remove: tuple[str, ...],
    to_set: tuple[str, ...],
    allow_unknown: bool,
    as_json: bool,
) -> None:
    """Edit the list of event types a webhook is sent (comma-separated or repeated)."""
    if not (to_add or to_remove or to_set):
        raise click.UsageError("nothing to change: give --add, --remove or --set")
    replace = split_values(to_set) if to_set else None
    add = split_values(to_add)
    remove = split_values(to_remove)
    row = obj.run(
        lambda conn: admin.change_event_types(conn, webhook_id, add, remove, replace, allow_unknown)
    )
    if as_json:
        emit_json(webhook_json(row))
        return
    click.echo(f"Webhook {webhook_id} now receives: {', '.join(row['event_types'])}")


@webhooks.command(name="rotate-secret")
@common_options
@click.argument("webhook_id", type=ID)
@click.option(
    "--grace",
    default="24h",
    show_default=True,
    metavar="DURATION",
    type=DurationType(allow_zero=True, maximum=admin.MAX_GRACE),
    help="How long the old secret keeps signing too (at most 7d; 0 to drop it at once).",
)
@json_option
@click.pass_obj
def rotate_secret(obj: Context, webhook_id: int, grace: Duration, as_json: bool) -> None:
    """Give a webhook a new secret; during the grace period requests carry both signatures."""
    row = obj.run(lambda conn: admin.rotate_secret(conn, webhook_id, grace.delta))
    if as_json:
        emit_json(
            {
                **webhook_json(row),
                "previous_secret_expires_at": row["previous_secret_expires_at"],
            }
        )
        return
    click.echo(
        f"Webhook {webhook_id} has a new secret (see `dispatcher webhooks show {webhook_id}`)."
    )
    if row["previous_secret_expires_at"]:
        until = cell(row["previous_secret_expires_at"])
        click.echo(
            f"The old secret also signs every request until {until} UTC;"
            " the secret header already carries the new one."
        )
    else:
        click.echo("The old secret no longer signs anything.")


@webhooks.command()
@common_options
@click.argument("webhook_id", type=ID)
@json_option
@click.pass_obj
def disable(obj: Context, webhook_id: int, as_json: bool) -> None:
    """Stop sending to a webhook: nothing new is queued and pending deliveries are cancelled."""
    row, cancelled = obj.run(lambda conn: admin.disable_webhook(conn, webhook_id))
    if as_json:
        emit_json({**webhook_json(row), "cancelled": cancelled})
    else:
        click.echo(f"Webhook {webhook_id} is disabled; {cancelled} pending deliveries cancelled.")


@webhooks.command()
@common_options
@click.argument("webhook_id", type=ID)
@json_option
@click.pass_obj
def enable(obj: Context, webhook_id: int, as_json: bool) -> None:
    """Start sending to a webhook again; what it missed while disabled is not replayed.

    It starts afresh: its failure streak and circuit breaker are reset.
    """
    row = obj.run(lambda conn: admin.enable_webhook(conn, webhook_id))
    if as_json:
        emit_json(webhook_json(row))
    else:
        click.echo(f"Webhook {webhook_id} is {row['status']}.")


@webhooks.command()
@common_options
@click.argument("webhook_id", type=ID)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def delete(obj: Context, webhook_id: int, yes: bool) -> None:
    """Delete a webhook; its pending deliveries are never sent. The delivery log is kept."""
    if not yes:
        row = obj.run(lambda conn: admin.get_webhook(conn, webhook_id))
        # Without a terminal the answer is not echoed: end the prompt with a newline, so what
        # is printed next starts a line of its own.
        suffix = ": " if sys.stdin.isatty() else ":\n"
        try:
            confirmed = click.confirm(
                f"Delete webhook {webhook_id} ({row['service_name']}, {row['url']})?",
                prompt_suffix=suffix,
            )
        except click.Abort:  # end of input, or Ctrl-C
            confirmed = False
        if not confirmed:
            raise DispatcherError("not deleted")
    cancelled = obj.run(lambda conn: admin.delete_webhook(conn, webhook_id))
    click.echo(f"Deleted webhook {webhook_id}; {cancelled} pending deliveries cancelled.")


@webhooks.command()
@common_options
@click.argument("webhook_id", type=ID)
@click.option(
    "--event-type",
    help="Type of the test event (default: the webhook's first type). Its catalog sample is"
    " the payload, if it has one.",
)
@json_option
@click.pass_obj
def test(obj: Context, webhook_id: int, event_type: str | None, as_json: bool) -> None:
    """Send a test event now and show the request and the response.

    Exits with code 1 when the endpoint did not answer 2xx, after printing everything.
    """
    settings = obj.settings()
    if event_type is not None:
        check_event_type(event_type, allow_star=False)

    async def work(conn: asyncpg.Connection) -> TestResult:
        webhook = await admin.get_webhook(conn, webhook_id)
        if webhook["status"] != "active":
            click.echo(
                f"note: webhook {webhook_id} is {webhook['status']}: the daemon is not delivering"
                " to it; sending the test anyway.",
                err=True,
            )
        return await send_test(conn, settings, webhook, event_type)

    result = obj.run(work)
    if as_json:
        emit_json(result.as_json())
    else:
        print_test(result)
    o = result.outcome
    if not o.ok:
        if o.response_status is not None:
            answer = f"it answered {o.response_status}"
        elif o.error_kind == "blocked_address":
            # The response line above says it too, but the error line is what is read first.
            answer = f"blocked_address: {refusal(result.url)}"
        else:
            answer = f"no response: {o.error_kind}"
        raise DispatcherError(f"webhook {webhook_id} did not accept the test event ({answer})")


def print_test(result: TestResult) -> None:
    o = result.outcome
    click.echo(f"Request  POST {result.url}")
    for name, value in result.request_headers:
        click.echo(f"  {name}: {value}")
    click.echo("")
    click.echo(f"  {result.request_body}")
    click.echo("")
    if o.response_status is None:
        click.echo(f"Response none: {o.error_kind}: {o.error_message}  ({o.duration_ms} ms)")
    else:
        verdict = "delivered" if o.ok else "failed"
        click.echo(f"Response {o.response_status} ({verdict}) in {o.duration_ms} ms")
        for name, value in o.response_headers or ():
            click.echo(f"  {name}: {value}")
        click.echo("")
        body = o.response_body or ""
        click.echo(f"  {body}" + (" …(truncated)" if o.response_truncated else ""))
    click.echo("")
    click.echo(
        f"Recorded as test delivery {result.delivery_id} (message {result.message_id});"
        f" see `dispatcher deliveries show {result.delivery_id}`."
    )
