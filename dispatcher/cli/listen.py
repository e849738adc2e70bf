"""`dispatcher listen`: a local webhook receiver that prints and verifies what it is sent."""

from __future__ import annotations

import asyncio
from datetime import UTC

import asyncpg
import click
import orjson

from dispatcher.cli import Context, common_options, main
from dispatcher.manage import admin
from dispatcher.manage.testevent import SECRET_SHOWN_AS
from dispatcher.ops.receiver import Received, Rules, check_secret, listen

SHOWN_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def _path(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.startswith("/"):
        raise click.BadParameter("must start with /")
    return value.rstrip("/") or "/"


def _secret(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    try:
        return None if value is None else check_secret(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command(name="listen")
@common_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", default=9000, show_default=True, type=click.IntRange(0, 65535), help="0: any free."
)
@click.option(
    "--path",
    default="/",
    show_default=True,
    callback=_path,
    help="Accept POSTs to this path and below it only (others get 404); / accepts any path.",
)
@click.option(
    "--webhook",
    "webhook_id",
    type=int,
    metavar="ID",
    help="Verify signatures with this webhook's secret (and its previous one during a rotation),"
    " read from the database once at start-up.",
)
@click.option(
    "--secret",
    metavar="whsec_...",
    callback=_secret,
    help="Verify signatures with this secret instead of reading one from the database.",
)
@click.option(
    "--status",
    default=200,
    show_default=True,
    type=click.IntRange(200, 599),
    help="Status to answer (e.g. 503 to watch retries); a bad signature always gets 400.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per request.")
@click.pass_obj
def listen_command(
    obj: Context,
    host: str,
    port: int,
    path: str,
    webhook_id: int | None,
    secret: str | None,
    status: int,
    as_json: bool,
) -> None:
    """Receive webhooks locally: print each request, check its signature, answer --status.

    Only POST is accepted (other methods get 405). With --webhook or --secret, a request whose
    signature does not verify is answered 400; without them, nothing is checked. The secret is
    read once at start-up: restart after `webhooks rotate-secret`. The start line goes to stderr,
    the requests to stdout. For the daemon to deliver to 127.0.0.1 its allowed_networks must
    include it (e.g. DISPATCHER_ALLOWED_NETWORKS=127.0.0.0/8).
    """
    if webhook_id is not None and secret is not None:
        raise click.UsageError("give --webhook or --secret, not both")
    settings = obj.settings()
    secrets: tuple[str, ...] = ()
    if secret is not None:
        secrets, source = (secret,), "verifying with the given secret"
    elif webhook_id is not None:

        async def fetch(conn: asyncpg.Connection) -> asyncpg.Record:
            return await admin.get_webhook(conn, webhook_id)

        row = obj.run(fetch)
        secrets = (row["secret"],)
        source = f"verifying with webhook {webhook_id}'s secret"
        if row["previous_secret"]:
            secrets += (row["previous_secret"],)
            source += " and its previous one"
    else:
        source = "not verifying: no --webhook or --secret"
    rules = Rules(status=status, path=path, secrets=secrets, secret_header=settings.secret_header)
    shown_host = f"[{host}]" if ":" in host else host

    def ready(bound_port: int) -> None:
        click.echo(
            f"listening on http://{shown_host}:{bound_port}{path} (answering {status}; {source})",
            err=True,
        )

    asyncio.run(listen(host, port, rules, ready, print_json if as_json else print_received))


def print_json(received: Received) -> None:
    click.echo(orjson.dumps(received.as_json(), option=orjson.OPT_UTC_Z).decode())


def print_received(received: Received) -> None:
    at = received.received_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    click.echo(f"{at} UTC  {received.method} {received.path}")
    names = [*SHOWN_HEADERS, *(n for n, v in received.headers.items() if v == SECRET_SHOWN_AS)]
    for name in names:
        if name in received.headers:
            click.echo(f"  {name}: {received.headers[name]}")
    click.echo("")
    if received.body_is_json:
        body = orjson.dumps(received.body, option=orjson.OPT_INDENT_2).decode()
    else:
        body = received.body or "(empty body)"
    for line in body.splitlines():
        click.echo(f"  {line}")
    click.echo("")
    if not received.accepted:
        click.echo(f"  refused: {received.error}")
    elif received.verified is None:
        click.echo("  signature: not checked (no --webhook or --secret)")
    elif received.verified:
        click.echo("  signature: verified")
    else:
        click.echo(f"  signature: INVALID ({received.error})")
    click.echo(f"  answered {received.answered_status}")
    click.echo("")
