"""The `dispatcher` command: argument parsing and printing only; the work is done elsewhere."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import click
import uvloop

from dispatcher import __version__
from dispatcher.errors import DispatcherError
from dispatcher.ops import migrate
from dispatcher.settings import ENV_PREFIX, Settings, config_file, load_settings
from dispatcher.store import database_target

T = TypeVar("T")


@dataclass
class Context:
    config: str | None = None
    database_url: str | None = None
    _settings: Settings | None = None

    def settings(self, **overrides: Any) -> Settings:
        if self._settings is None or overrides:
            self._settings = load_settings(
                self.config, overrides={"database_url": self.database_url, **overrides}
            )
        return self._settings

    def dsn(self, settings: Settings) -> str:
        """Return the configured database URL, or start the embedded server and return its."""
        if settings.database_url:
            return settings.database_url
        from dispatcher.ops import embedded

        return embedded.attach(settings.state_dir)

    def run(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `work` with one connection, in a fresh event loop."""
        # Resolved before the loop starts: starting the embedded server runs its own loop.
        dsn = self.dsn(self.settings())

        async def go() -> T:
            try:
                conn = await asyncpg.connect(dsn)
            except (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise DatabaseError(
                    f"cannot connect to the database at {database_target(dsn)}"
                    f" ({self.database_url_source()}): {connect_error(exc)}"
                ) from None
            try:
                return await work(conn)
            except OSError as exc:
                if not conn.is_closed():
                    raise
                raise DatabaseError(f"database: connection lost: {connect_error(exc)}") from None
            finally:
                await conn.close()

        return asyncio.run(go())

    def database_url_source(self) -> str:
        """Say which setting holds the database address, and where it was set."""
        if self.database_url:
            return "database_url, set by --database-url"
        if os.environ.get(ENV_PREFIX + "DATABASE_URL"):
            return f"database_url, set by ${ENV_PREFIX}DATABASE_URL"
        config = config_file(self.config)
        if config and self.settings().database_url:
            return f"database_url, set in {config}"
        return "the embedded server: no database_url is set"


class DatabaseError(DispatcherError):
    """The database could not be reached, or failed a statement; the message says which."""


def connect_error(exc: BaseException) -> str:
    """The reason alone: '[Errno 111] Connect call failed' says no more without its errno."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return first_line(exc)


class Group(click.Group):
    """Turn DispatcherError into one line on stderr and exit code 1, never a traceback.

    Every command and group added to it, at any depth, accepts --config and --database-url.
    """

    # Subgroups are of this class too, so they get the options and pass them on.
    group_class = type

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        names = {p.name for p in cmd.params}
        if not names & {"config", "database_url"}:
            common_options(cmd)
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            # Output still buffered is written here, where a closed pipe can be handled.
            sys.stdout.flush()
            return result
        except BrokenPipeError:
            # The reader went away (`dispatcher stats | head -1`): stop quietly, like git, and
            # point stdout at /dev/null so the interpreter's flush at exit has nowhere to fail.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(EXIT_BROKEN_PIPE)
        except DispatcherError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError) as exc:
            click.echo(
                "error: the database has no dispatcher schema, or an older one"
                f" ({first_line(exc)}); run `dispatcher migrate`"
                " (the daemon also migrates when it starts)",
                err=True,
            )
            sys.exit(1)
        except asyncpg.CheckViolationError as exc:
            click.echo(f"error: rejected by the database: {first_line(exc)}", err=True)
            sys.exit(1)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            click.echo(f"error: database: {first_line(exc)}", err=True)
            sys.exit(1)
        except OSError as exc:
            click.echo(f"error: {first_line(exc)}", err=True)
            sys.exit(1)


# What a shell reports for a process killed by SIGPIPE (128 + 13), as git is.
EXIT_BROKEN_PIPE = 141


def first_line(exc: BaseException) -> str:
    """The message alone: asyncpg appends DETAIL and HINT lines to str(exc)."""
    message = getattr(exc, "message", None) or str(exc)
    return str(message).splitlines()[0] if message else type(exc).__name__


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Store --config/--database-url wherever they appear: before or after the subcommand."""
    if value is not None:
        setattr(ctx.ensure_object(Context), str(param.name), value)


def common_options(f: Any) -> Any:
    """Accept --config and --database-url on the group and on every subcommand."""
    f = click.option(
        "--database-url",
        metavar="URL",
        expose_value=False,
        callback=_remember,
        help="PostgreSQL URL (default: $DISPATCHER_DATABASE_URL, else the embedded server).",
    )(f)
    return click.option(
        "--config",
        metavar="PATH",
        expose_value=False,
        callback=_remember,
        help="TOML config file (default: $DISPATCHER_CONFIG; else defaults and environment).",
    )(f)


@click.group(cls=Group)
@click.version_option(__version__, prog_name="webhook-dispatcher")
@common_options
@click.pass_context
def main(ctx: click.Context) -> None:
    """Deliver events published in PostgreSQL as signed webhooks."""
    ctx.ensure_object(Context)


@main.command()
@common_options
@click.option(
    "--no-migrate", is_flag=True, help="Refuse to start on an outdated schema instead of migrating."
)
@click.option(
    "--web",
    "with_console",
    is_flag=True,
    help="Also serve the console and the HTTP API on web_listen (for trials; see `web`).",
)
@click.option(
    "--listen",
    "web_listen",
    metavar="HOST:PORT",
    help="With --web: where (default: the web_listen setting).",
)
@click.option(
    "--first-run-token",
    is_flag=True,
    help="With --web: if no token exists yet, create one and print it to sign in with.",
)
@click.pass_obj
def run(
    obj: Context,
    no_migrate: bool,
    with_console: bool,
    web_listen: str | None,
    first_run_token: bool,
) -> None:
    """Run the delivery daemon in the foreground until SIGTERM or SIGINT."""
    from dispatcher.daemon import serve
    from dispatcher.ops.logs import configure_logging

    settings = obj.settings(web_listen=web_listen, apply_migrations=False if no_migrate else None)
    configure_logging(settings.log_level, settings.log_format)
    dsn = obj.dsn(settings)
    click.echo(f"database: {redact(dsn)}", err=True)
    if not settings.database_url:
        click.echo("  connect with: dispatcher db psql (or psql with the URL above)", err=True)
    config = config_file(obj.config)
    click.echo(f"config: {config or 'none (defaults and DISPATCHER_* variables)'}", err=True)
    if settings.allowed_networks:
        # The SSRF guard's exceptions decide what this daemon may reach: say them at start.
        allowed = ", ".join(settings.allowed_networks)
        click.echo(f"  allowed_networks: {allowed} (private targets permitted)", err=True)
    if with_console:
        from dispatcher.cli.web import announce_console
        from dispatcher.web.server import serve_with_console

        announce_console(obj, settings, first_run_token)
        uvloop.run(serve_with_console(settings, dsn))
        return
    uvloop.run(serve(settings, dsn))


@main.command(name="migrate")
@common_options
@click.pass_obj
def migrate_command(obj: Context) -> None:
    """Apply pending schema migrations and exit."""
    applied = obj.run(migrate.apply_migrations)
    if applied:
        for m in applied:
            click.echo(f"applied {m.version:03d}_{m.name}")
    else:
        click.echo("schema is up to date")


@main.command(name="database-url")
@common_options
@click.pass_obj
def database_url(obj: Context) -> None:
    """Print the database URL in use; an embedded server is started and kept running."""
    settings = obj.settings()
    dsn = obj.dsn(settings)
    if not settings.database_url:
        from dispatcher.ops.embedded import EmbeddedServer

        # The URL is for use after this command exits, so the server must outlive it.
        EmbeddedServer(settings.state_dir).keep_running()
        click.echo("The embedded server keeps running; `dispatcher db stop` stops it.", err=True)
    click.echo(dsn)


def redact(dsn: str) -> str:
    """Hide the password in a URL before printing it."""
    parts = urlsplit(dsn)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return dsn


# Register the management commands (they import `main` and `Context` from here).
from dispatcher.cli import db, deliveries, events, listen, tokens, web, webhooks  # noqa: E402, F401
