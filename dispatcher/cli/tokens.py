"""`dispatcher tokens ...`: the bearer tokens of the HTTP API and the console."""

from __future__ import annotations

import click

from dispatcher.cli import Context, common_options, main
from dispatcher.cli.output import emit_json, plain, table
from dispatcher.cli.params import ID
from dispatcher.manage import tokens as token_service
from dispatcher.manage.fields import TOKEN_FIELDS

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@main.group(name="tokens")
def tokens() -> None:
    """Manage the tokens that sign in to the HTTP API and the console."""


@tokens.command(name="create")
@common_options
@click.option("--name", required=True, help="Who or what uses the token, to tell tokens apart.")
@click.option("--read-only", is_flag=True, help="May read, but not change or see secrets.")
@json_option
@click.pass_obj
def tokens_create(obj: Context, name: str, read_only: bool, as_json: bool) -> None:
    """Create a token and print it once: only its hash is stored."""
    new = obj.run(lambda conn: token_service.create_token(conn, name, read_only))
    if as_json:
        emit_json({**plain(new.row, TOKEN_FIELDS), "token": new.token})
        return
    access = "read-only" if read_only else "read-write"
    click.echo(f"Created {access} token {new.row['id']} ({new.row['name']}).", err=True)
    click.echo("Copy it now: it is not shown again.", err=True)
    click.echo(new.token)


@tokens.command(name="list")
@common_options
@json_option
@click.pass_obj
def tokens_list(obj: Context, as_json: bool) -> None:
    """List tokens (their prefixes, never the tokens)."""
    rows = obj.run(token_service.list_tokens)
    if as_json:
        emit_json([plain(r, TOKEN_FIELDS) for r in rows])
        return
    if not rows:
        click.echo("No tokens. Create one with: dispatcher tokens create --name NAME")
        return
    table(
        [
            (
                r["id"],
                r["name"],
                r["prefix"] + "…",
                "read-only" if r["read_only"] else "read-write",
                r["created_at"],
                r["last_used_at"],
                "revoked" if r["revoked_at"] else "active",
            )
            for r in rows
        ],
        ["id", "name", "prefix", "access", "created", "last used", "status"],
    )


@tokens.command(name="revoke")
@common_options
@click.argument("token_id", type=ID, metavar="ID")
@click.pass_obj
def tokens_revoke(obj: Context, token_id: int) -> None:
    """Revoke a token now; console sessions opened with it end too."""
    row = obj.run(lambda conn: token_service.revoke_token(conn, token_id))
    click.echo(f"Revoked token {row['id']} ({row['name']}).")
