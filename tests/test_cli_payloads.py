"""Payloads and event types checked before the database: JSON that jsonb cannot store, payloads
from a file or stdin, types missing from the catalog, and types without a dot."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import orjson
import pytest

from tests.conftest import Cli, add_webhook

BAD_TYPE_HINT = "use a dotted name of letters, digits, '_' and '-', such as customer.updated"
NUL = "the value contains \\u0000 (the NUL character), which PostgreSQL jsonb cannot store"
SURROGATE = (
    "the value contains an unpaired surrogate \\ud800, which is not a Unicode character and"
    " which PostgreSQL jsonb cannot store"
)
NUMBER = (
    "the value holds a number PostgreSQL jsonb cannot store: at most 131072 digits before"
    " the decimal point and 16383 after it"
)
UNSTORABLE = [
    ('{"a": NaN}', "the value is not valid JSON: NaN is not a JSON number"),
    ("[Infinity]", "the value is not valid JSON: Infinity is not a JSON number"),
    ('{"a": -Infinity}', "the value is not valid JSON: -Infinity is not a JSON number"),
    ('"\\u0000"', NUL),
    ('{"k\\u0000": 1}', NUL),
    ('{"a": ["x", "\\ud800"]}', SURROGATE),
    ("1e131072", NUMBER),
    ("[1e-16384]", NUMBER),
]


async def rows(db: asyncpg.Pool, table: str) -> int:
    n: int = await db.fetchval(f"SELECT count(*) FROM dispatcher.{table}")
    return n


@pytest.mark.parametrize(("text", "message"), UNSTORABLE)
async def test_the_database_refuses_what_the_cli_now_checks_first(
    db: asyncpg.Pool, text: str, message: str
) -> None:
    """Each of these reaches PostgreSQL as an error, so the CLI's check is not redundant."""
    with pytest.raises(asyncpg.PostgresError):
        await db.fetchval("SELECT $1::jsonb", text)


@pytest.mark.parametrize(("text", "message"), UNSTORABLE)
@pytest.mark.parametrize(
    "command",
    [["events", "publish", "a.b", "--data"], ["event-types", "add", "a.b", "--sample"]],
    ids=["data", "sample"],
)
async def test_json_jsonb_cannot_store_is_a_usage_error_naming_the_option(
    cli: Cli, db: asyncpg.Pool, command: list[str], text: str, message: str
) -> None:
    await add_webhook(db, "https://x.example/in", ["*"])
    result = await cli(*command, text)
    option = command[-1]
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Usage: ")
    assert result.output.endswith(f"Error: Invalid value for '{option}': {message}\n")
    assert "database" not in result.output
    assert await rows(db, "events") == await rows(db, "event_types") == 0


async def test_what_jsonb_can_store_passes_exactly(cli: Cli, db: asyncpg.Pool) -> None:
    text = '{"big": 1e131071, "small": 1e-16383, "emoji": "\\ud83d\\ude00", "n": "\\u0001"}'
    await cli.ok("events", "publish", "a.b", "--data", text)
    assert await db.fetchval("SELECT payload = $1::jsonb FROM dispatcher.events", text) is True


# --- payloads from a file or stdin ------------------------------------------------------


def big_payload() -> tuple[str, dict[str, object]]:
    """About 200 KiB: more than one command-line argument may carry on Linux (128 KiB)."""
    value = {"items": [{"i": i, "text": "x" * 190} for i in range(1000)]}
    text = orjson.dumps(value).decode()
    assert len(text) > 200 * 1024
    return text, value


async def test_data_from_a_file(cli: Cli, db: asyncpg.Pool, tmp_path: Path) -> None:
    text, value = big_payload()
    path = tmp_path / "payload.json"
    path.write_text(text)
    await add_webhook(db, "https://x.example/in", ["a.b"])

    out = await cli.ok("events", "publish", "a.b", "--data", f"@{path}")

    assert out.startswith("Published ")
    stored = await db.fetchval("SELECT payload::text FROM dispatcher.events")
    assert orjson.loads(stored) == value


async def test_data_from_stdin(cli: Cli, db: asyncpg.Pool) -> None:
    text, value = big_payload()
    await add_webhook(db, "https://x.example/in", ["a.b"])

    data = orjson.loads(
        await cli.ok("events", "publish", "a.b", "--data", "-", "--json", input=text)
    )

    assert (data["created"], data["deliveries"]) == (True, 1)
    stored = await db.fetchval("SELECT payload::text FROM dispatcher.events")
    assert orjson.loads(stored) == value


async def test_sample_from_a_file_and_from_stdin(
    cli: Cli, db: asyncpg.Pool, tmp_path: Path
) -> None:
    path = tmp_path / "sample.json"
    path.write_text('\ufeff{"from": "file"}')  # an editor's byte-order mark is not JSON
    await cli.ok("event-types", "add", "a.file", "--sample", f"@{path}")
    await cli.ok("event-types", "add", "a.stdin", "--sample", "-", input='{"from": "stdin"}')
    samples = await db.fetch("SELECT name, sample FROM dispatcher.event_types ORDER BY name")
    assert [(r["name"], orjson.loads(r["sample"])) for r in samples] == [
        ("a.file", {"from": "file"}),
        ("a.stdin", {"from": "stdin"}),
    ]


async def test_an_unreadable_payload_file_is_one_line_naming_the_path(
    cli: Cli, db: asyncpg.Pool, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.json"
    result = await cli("events", "publish", "a.b", "--data", f"@{missing}")
    assert result.exit_code == 2
    assert result.output.endswith(
        f"Error: Invalid value for '--data': cannot read {missing}: No such file or directory\n"
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    result = await cli("event-types", "add", "a.b", "--sample", f"@{bad}")
    assert result.exit_code == 2
    assert f"Error: Invalid value for '--sample': {bad} is not valid JSON: " in result.output
    assert await rows(db, "events") == await rows(db, "event_types") == 0


# --- event types: the catalog, and the dot -----------------------------------------------


UNKNOWN_HINT = (
    " not in the event-type catalog (see `dispatcher event-types list`;"
    " pass --allow-unknown to use it anyway)"
)


async def test_publish_refuses_a_type_missing_from_a_non_empty_catalog(
    cli: Cli, db: asyncpg.Pool
) -> None:
    await add_webhook(db, "https://x.example/in", ["*"])
    await cli.ok("event-types", "add", "customer.updated")

    assert await cli.error("events", "publish", "custmer.updated", "--data", "{}") == (
        f"error: unknown event type custmer.updated:{UNKNOWN_HINT}\n"
    )
    assert await rows(db, "events") == 0

    data = await cli.json("events", "publish", "custmer.updated", "--data", "{}", "--allow-unknown")
    assert (data["created"], data["deliveries"]) == (True, 1)
    await cli.ok("events", "publish", "customer.updated", "--data", "{}")
    assert await rows(db, "events") == 2


async def test_publish_to_no_webhook_warns_on_stderr(cli: Cli, db: asyncpg.Pool) -> None:
    await add_webhook(db, "https://x.example/in", ["order.paid"])
    await add_webhook(db, "https://y.example/in", ["customer.updated"], status="disabled")
    warning = (
        "warning: no active webhook subscribes to customer.updated: the event is stored,"
        " but nothing is sent\n"
    )

    result = await cli("events", "publish", "customer.updated", "--data", "{}", "--json")

    assert result.exit_code == 0
    assert orjson.loads(result.stdout)["deliveries"] == 0
    assert result.stderr == warning
    reached = await cli("events", "publish", "order.paid", "--data", "{}")
    assert (reached.exit_code, reached.stderr) == (0, "")
    assert reached.stdout.endswith(" to 1 webhook(s).\n")


@pytest.mark.parametrize(
    "command",
    [
        ["events", "publish", "customer", "--data", "{}"],
        ["event-types", "add", "customer"],
        ["webhooks", "add", "--name", "n", "--url", "https://x.example/", "--events", "customer"],
        ["webhooks", "events", "{wid}", "--add", "customer"],
        ["webhooks", "events", "{wid}", "--set", "customer"],
        ["webhooks", "test", "{wid}", "--event-type", "customer"],
    ],
)
async def test_a_type_without_a_dot_is_refused(
    cli: Cli, db: asyncpg.Pool, command: list[str]
) -> None:
    wid, _ = await add_webhook(db, "https://x.example/in", ["a.b"])
    output = await cli.error(*[c.replace("{wid}", str(wid)) for c in command])
    assert output.startswith(f"error: invalid event type 'customer': {BAD_TYPE_HINT}")
    assert await rows(db, "events") == await rows(db, "event_types") == 0
    assert await db.fetchval("SELECT event_types FROM dispatcher.webhooks") == ["a.b"]


async def test_a_dotless_type_the_database_holds_can_still_be_removed(
    cli: Cli, db: asyncpg.Pool
) -> None:
    """The CHECK constraint accepts `customer`: a subscription stored by SQL can be taken off."""
    wid, _ = await add_webhook(db, "https://x.example/in", ["customer", "a.b"])
    out = await cli.ok("webhooks", "events", str(wid), "--remove", "customer")
    assert out == f"Webhook {wid} now receives: a.b\n"
