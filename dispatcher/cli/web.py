"""`dispatcher web`: serve the console and the HTTP API."""

from __future__ import annotations

import asyncpg
import click
import uvloop

from dispatcher.cli import Context, DatabaseError, common_options, main, redact
from dispatcher.manage import tokens as token_service
from dispatcher.settings import Settings

FIRST_RUN_TOKEN_NAME = "first run"

listen_option = click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Where to serve the console (default: the web_listen setting, 127.0.0.1:8080).",
)
first_run_option = click.option(
    "--first-run-token",
    is_flag=True,
    help="If no token exists yet, create one and print it here to sign in with.",
)


def announce_console(obj: Context, settings: Settings, first_run_token: bool) -> None:
    """Print the console's address and how to sign in (migrating first, to count tokens)."""
    host, _, port = settings.web_listen.rpartition(":")
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    click.echo(
        f"console: http://{shown}:{port}/  (API: /api/v1, document: /api/openapi.json)", err=True
    )

    async def sign_in_token(conn: asyncpg.Connection) -> str | None:
        from dispatcher.ops import migrate

        if settings.apply_migrations:
            await migrate.apply_migrations(conn)
        if await token_service.active_token_count(conn):
            return None
        if first_run_token:
            return (await token_service.create_token(conn, FIRST_RUN_TOKEN_NAME, False)).token
        return ""

    try:
        token = obj.run(sign_in_token)
    except DatabaseError as exc:
        # Not fatal: the server waits for the database, as under systemd at boot.
        click.echo(f"  {exc}; the console waits for the database", err=True)
        return
    if token:
        # On the terminal only, once; never in the structured log.
        click.echo(
            "  sign in with this token (shown once; `dispatcher tokens` manages it):", err=True
        )
        click.echo(f"  {token}", err=True)
    elif token == "":
        click.echo("  no token exists yet; create one to sign in with:", err=True)
        click.echo("  dispatcher tokens create --name NAME", err=True)
    else:
        click.echo("  sign in with a token from `dispatcher tokens create --name NAME`", err=True)


@main.command(name="web")
@common_options
@listen_option
@first_run_option
@click.option(
    "--no-migrate", is_flag=True, help="Refuse to start on an outdated schema instead of migrating."
)
@click.pass_obj
def web_command(obj: Context, listen: str | None, first_run_token: bool, no_migrate: bool) -> None:
    """Serve the web console and the HTTP API in the foreground until SIGTERM or SIGINT."""
    from dispatcher.ops.logs import configure_logging
    from dispatcher.web.server import serve_web

    settings = obj.settings(web_listen=listen, apply_migrations=False if no_migrate else None)
    configure_logging(settings.log_level, settings.log_format)
    dsn = obj.dsn(settings)
    click.echo(f"database: {redact(dsn)}", err=True)
    announce_console(obj, settings, first_run_token)
    uvloop.run(serve_web(settings, dsn, settings.web_listen))
