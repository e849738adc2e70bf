"""How the CLI fails: exit code 2 for a malformed value, 1 with one `error:` line for the rest,
silence on a closed pipe, and connection errors that say which setting holds the address."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import click
import orjson
import pytest
from click.testing import CliRunner

from dispatcher.cli import main
from tests.conftest import Cli, add_webhook, daemon_process, publish

MAX_ID = "9223372036854775807"
TOO_BIG = "9223372036854775808"
OUT_OF_RANGE = "is out of range: ids run from 1 to 9223372036854775807."


def dispatcher(
    dsn: str | None, *args: str, stdin: str = "", stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    """Run the real `dispatcher` command in a process of its own, stdin not a terminal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    if dsn is not None:
        env["DISPATCHER_DATABASE_URL"] = dsn
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        env=env,
        input=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )


# --- item: a closed pipe is not an error ------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "args", [["stats"], ["webhooks", "list"], ["deliveries", "list", "--json"]]
)
async def test_a_closed_pipe_exits_quietly_like_git(
    dsn: str, db: asyncpg.Pool, args: list[str]
) -> None:
    """`dispatcher stats | head -1` once the reader is gone: nothing on stderr, status 141."""
    await add_webhook(db, "https://x.example/in", ["a.b"])
    await publish(db, "a.b")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has already gone: the first write fails with EPIPE
    try:
        done = await asyncio.to_thread(dispatcher, dsn, *args, stdout=write_end)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


@pytest.mark.slow
async def test_head_reads_the_first_line_and_nothing_is_reported(
    dsn: str, db: asyncpg.Pool
) -> None:
    """The real pipeline, with enough output to outlast head's one line."""
    for i in range(400):
        await add_webhook(db, f"https://x{i}.example/in", ["a.b"], name=f"service {i}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env["DISPATCHER_DATABASE_URL"] = dsn
    script = (
        f"'{sys.executable}' -m dispatcher webhooks list --json | head -1;"
        ' echo "status=${PIPESTATUS[0]}" >&2'
    )
    done = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout == "[\n"
    assert done.stderr in ("status=141\n", "status=0\n")  # 0 if the writes won the race


# --- item: ids out of the bigint range are usage errors ---------------------------------


ID_COMMANDS = [
    (["webhooks", "show", "{id}"], "'WEBHOOK_ID'"),
    (["webhooks", "edit", "{id}", "--name", "x"], "'WEBHOOK_ID'"),
    (["webhooks", "events", "{id}", "--add", "a.b"], "'WEBHOOK_ID'"),
    (["webhooks", "rotate-secret", "{id}"], "'WEBHOOK_ID'"),
    (["webhooks", "disable", "{id}"], "'WEBHOOK_ID'"),
    (["webhooks", "enable", "{id}"], "'WEBHOOK_ID'"),
    (["webhooks", "delete", "{id}", "--yes"], "'WEBHOOK_ID'"),
    (["webhooks", "test", "{id}"], "'WEBHOOK_ID'"),
    (["deliveries", "show", "{id}"], "'DELIVERY_ID'"),
    (["deliveries", "list", "--webhook", "{id}"], "'--webhook'"),
    (["deliveries", "resend", "--since", "1h", "--webhook", "{id}"], "'--webhook'"),
    (
        ["events", "resend", "00000000-0000-0000-0000-000000000001", "--webhook", "{id}"],
        "'--webhook'",
    ),
]


@pytest.mark.parametrize(("args", "name"), ID_COMMANDS)
@pytest.mark.parametrize("value", [TOO_BIG, "99999999999999999999", "0", "1" * 5000])
async def test_an_id_beyond_bigint_is_a_usage_error_naming_it(
    cli: Cli, db: asyncpg.Pool, args: list[str], name: str, value: str
) -> None:
    await add_webhook(db, "https://x.example/in", ["a.b"])
    result = await cli(*[a.format(id=value) for a in args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Usage: ")
    assert result.output.endswith(f"Error: Invalid value for {name}: {value} {OUT_OF_RANGE}\n")
    assert "database" not in result.output
    assert await db.fetchval("SELECT status FROM dispatcher.webhooks") == "active"


@pytest.mark.parametrize(("args", "name"), ID_COMMANDS)
async def test_the_largest_id_reaches_the_database(
    cli: Cli, db: asyncpg.Pool, args: list[str], name: str
) -> None:
    """The bound is the column's, not tighter: the largest bigint parses and names nothing."""
    result = await cli(*[a.format(id=MAX_ID) for a in args])
    if args[:2] == ["deliveries", "list"]:  # a filter that matches nothing
        assert (result.exit_code, result.output) == (0, "No deliveries match.\n")
        return
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ")
    assert MAX_ID in result.output or "does not exist" in result.output
    assert "database:" not in result.output


# --- item: exit code 2 for a malformed value, 1 for the rest ----------------------------


@pytest.mark.parametrize(
    ("args", "last_line"),
    [
        (
            ["deliveries", "list", "--since", "2x"],
            "Error: Invalid value for '--since': invalid duration '2x':"
            " use forms like 90s, 15m, 2h, 7d",
        ),
        (
            ["stats", "--window", "forever"],
            "Error: Invalid value for '--window': invalid duration 'forever':"
            " use forms like 90s, 15m, 2h, 7d",
        ),
        (
            ["deliveries", "resend", "--since", "soon"],
            "Error: Invalid value for '--since': invalid duration 'soon':"
            " use forms like 90s, 15m, 2h, 7d",
        ),
        (
            ["webhooks", "rotate-secret", "1", "--grace", "week"],
            "Error: Invalid value for '--grace': invalid duration 'week':"
            " use forms like 90s, 15m, 2h, 7d",
        ),
        (
            ["webhooks", "rotate-secret", "1", "--grace", "8d"],
            "Error: Invalid value for '--grace': '8d' is too long: at most 168h",
        ),
        (
            ["deliveries", "list", "--limit", "0"],
            "Error: Invalid value for '--limit': 0 is not in the range 1<=x<=10000.",
        ),
        (
            ["deliveries", "list", "--status", "done"],
            "Error: Invalid value for '--status': 'done' is not one of"
            " 'pending', 'succeeded', 'failed', 'cancelled'.",
        ),
        (
            ["deliveries", "list", "--webhook", "x"],
            "Error: Invalid value for '--webhook': 'x' is not a valid integer.",
        ),
        (
            ["events", "resend", "12345"],
            "Error: Invalid value for 'MESSAGE_ID': '12345' is not a valid UUID.",
        ),
        (
            ["events", "publish", "a.b", "--data", "{"],
            "Error: Invalid value for '--data': the value is not valid JSON:"
            " Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
    ],
)
async def test_a_malformed_value_exits_2_with_one_line_naming_the_option(
    cli: Cli, db: asyncpg.Pool, args: list[str], last_line: str
) -> None:
    await add_webhook(db, "https://x.example/in", ["a.b"])
    secret = await db.fetchval("SELECT secret FROM dispatcher.webhooks")
    result = await cli(*args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Usage: ")
    assert result.output.endswith(f"\n{last_line}\n")
    assert [line for line in result.output.splitlines() if line.startswith("Error")] == [last_line]
    assert await db.fetchval("SELECT secret FROM dispatcher.webhooks") == secret
    assert await db.fetchval("SELECT count(*) FROM dispatcher.events") == 0


async def test_a_valid_value_that_names_nothing_exits_1(cli: Cli, db: asyncpg.Pool) -> None:
    for args, message in [
        (["webhooks", "show", "5"], "webhook 5 does not exist"),
        (["deliveries", "show", "5"], "delivery 5 does not exist"),
        (["deliveries", "resend", "--since", "1h", "--webhook", "5"], "webhook 5 does not exist"),
        (["webhooks", "rotate-secret", "5", "--grace", "0"], "webhook 5 does not exist"),
    ]:
        assert await cli.error(*args) == f"error: {message}\n"


# --- item: --config and --database-url in every position -------------------------------


def all_commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += all_commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


@pytest.mark.parametrize("path", all_commands(main), ids=lambda p: " ".join(p) or "main")
def test_every_group_and_command_takes_config_and_database_url(path: tuple[str, ...]) -> None:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    options = {opt for param in command.params for opt in param.opts}
    assert {"--config", "--database-url"} <= options


COMMANDS = [
    ("webhooks", "list", "--json"),
    ("events", "publish", "a.b", "--data", "{}"),
    ("deliveries", "list"),
    ("event-types", "list"),
]


def placed(command: tuple[str, ...], option: list[str], position: int) -> list[str]:
    """Put `option` before the group (0), after the group (1), or after the command (2)."""
    words = list(command)
    if position == 0:
        return [*option, *words]
    if position == 1:
        return [words[0], *option, *words[1:]]
    return [*words[:2], *option, *words[2:]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("position", [0, 1, 2], ids=["before", "on-group", "after"])
@pytest.mark.parametrize("via", ["--config", "--database-url"])
def test_config_and_database_url_work_in_every_position(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    dsn: str,
    command: tuple[str, ...],
    position: int,
    via: str,
) -> None:
    for name in ("DISPATCHER_CONFIG", "DISPATCHER_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'database_url = "{dsn}"\n')
    option = ["--config", str(cfg)] if via == "--config" else ["--database-url", dsn]
    result = CliRunner().invoke(main, placed(command, option, position))
    assert result.exit_code == 0, result.output


# --- item: connection failures say where the address comes from -------------------------

CLOSED = "postgresql://app:hunter2@127.0.0.1:1/x"
REFUSED = "Connect call failed ('127.0.0.1', 1)"


@pytest.mark.parametrize("source", ["flag", "env", "config", "env-config"])
def test_connection_failure_names_the_setting_and_where_it_was_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str
) -> None:
    for name in ("DISPATCHER_CONFIG", "DISPATCHER_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'database_url = "{CLOSED}"\n')
    args = ["webhooks", "list"]
    where = {
        "flag": "set by --database-url",
        "env": "set by $DISPATCHER_DATABASE_URL",
        "config": f"set in {cfg}",
        "env-config": f"set in {cfg}",
    }[source]
    if source == "flag":
        args += ["--database-url", CLOSED]
    elif source == "env":
        monkeypatch.setenv("DISPATCHER_DATABASE_URL", CLOSED)
    elif source == "config":
        args += ["--config", str(cfg)]
    else:
        monkeypatch.setenv("DISPATCHER_CONFIG", str(cfg))
    result = CliRunner().invoke(main, args)
    assert (result.exit_code, result.output) == (
        1,
        f"error: cannot connect to the database at 127.0.0.1:1 (database_url, {where}):"
        f" {REFUSED}\n",
    )
    assert "hunter2" not in result.output


def test_a_socket_directory_is_named_as_the_socket_path(tmp_path: Path) -> None:
    url = f"postgresql://app:hunter2@/x?host={tmp_path}&port=5999"
    result = CliRunner().invoke(main, ["--database-url", url, "stats"])
    assert result.exit_code == 1
    assert result.output.startswith(
        f"error: cannot connect to the database at {tmp_path}/.s.PGSQL.5999"
        " (database_url, set by --database-url): "
    )
    assert "hunter2" not in result.output


@pytest.mark.slow
async def test_the_daemon_logs_the_database_it_is_waiting_for() -> None:
    async with daemon_process(CLOSED) as proc:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            while True:
                line = await proc.stdout.readline()
                assert line, "the daemon exited"
                if line.startswith(b"{") and b"database_unavailable" in line:
                    break
    record = orjson.loads(line)
    assert record["database"] == "127.0.0.1:1"
    assert "hunter2" not in line.decode()


# --- item: declining a deletion, in a real process without a terminal -------------------


@pytest.mark.slow
async def test_delete_prompt_ends_its_line_without_a_terminal(dsn: str, db: asyncpg.Pool) -> None:
    wid, _ = await add_webhook(db, "https://x.example/in", ["a.b"], name="Zapier")
    prompt = f"Delete webhook {wid} (Zapier, https://x.example/in)? [y/N]:\n"

    declined = await asyncio.to_thread(dispatcher, dsn, "webhooks", "delete", str(wid), stdin="n\n")
    assert (declined.returncode, declined.stdout, declined.stderr) == (
        1,
        prompt,
        "error: not deleted\n",
    )
    assert await db.fetchval("SELECT count(*) FROM dispatcher.webhooks") == 1

    accepted = await asyncio.to_thread(dispatcher, dsn, "webhooks", "delete", str(wid), stdin="y\n")
    assert (accepted.returncode, accepted.stdout, accepted.stderr) == (
        0,
        f"{prompt}Deleted webhook {wid}; 0 pending deliveries cancelled.\n",
        "",
    )
    assert await db.fetchval("SELECT count(*) FROM dispatcher.webhooks") == 0


# --- a database that was never migrated -------------------------------------------------------


async def test_an_unmigrated_database_says_to_run_migrate(empty_dsn: str) -> None:
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["--database-url", empty_dsn, "webhooks", "list"]
    )
    assert result.exit_code == 1
    assert result.output == (
        "error: the database has no dispatcher schema, or an older one"
        ' (relation "dispatcher.webhooks" does not exist);'
        " run `dispatcher migrate` (the daemon also migrates when it starts)\n"
    )
