"""`dispatcher web`: serve the console and the HTTP API."""

from __future__ import annotations

import click
import uvloop

from dispatcher.cli import Context, common_options, main, redact
from dispatcher.manage import tokens as token_service


@main.command(name="web")
@common_options
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Address to serve on (default: the web_listen setting, 127.0.0.1:8080).",
)
@click.option(
    "--first-run-token",
    is_flag=True,
    help="If no token exists yet, create one and print it here to sign in with (`make run`).",
)
@click.option(
    "--no-migrate", is_flag=True, help="Refuse to start on an outdated schema instead of migrating."
)
@click.pass_obj
def web_command(obj: Context, listen: str | None, first_run_token: bool, no_migrate: bool) -> None:
    """Serve the web console and the HTTP API in the foreground until SIGTERM or SIGINT."""
    from dispatcher.ops.logs import configure_logging
    from dispatcher.web.server import serve_web

    overrides = {"web_listen": listen, "apply_migrations": False if no_migrate else None}
    settings = obj.settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    dsn = obj.dsn(settings)
    click.echo(f"database: {redact(dsn)}", err=True)
    host, _, port = settings.web_listen.rpartition(":")
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    click.echo(
        f"console: http://{shown}:{port}/  (API: /api/v1, its OpenAPI document: /api/openapi.json)",
        err=True,
    )

    async def sign_in_hint(conn: object) -> str | None:
        import asyncpg

        assert isinstance(conn, asyncpg.Connection)
        if await token_service.active_token_count(conn):
            return None
        if first_run_token:
            new = await token_service.create_token(conn, "first run", read_only=False)
            return new.token
        return ""

    if settings.apply_migrations:
        from dispatcher.ops import migrate

        obj.run(migrate.apply_migrations)
    hint = obj.run(sign_in_hint)
    if hint:
        click.echo(
            f"  sign in with this token (shown once; `dispatcher tokens` manages it):\n  {hint}",
            err=True,
        )
    elif hint == "":
        click.echo("  no token exists yet: create one to sign in with", err=True)
        click.echo("  dispatcher tokens create --name NAME", err=True)
    uvloop.run(serve_web(settings, dsn, settings.web_listen))
