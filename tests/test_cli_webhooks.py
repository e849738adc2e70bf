"""`dispatcher webhooks ...` against a real database: output for people and scripts, one-line
errors with exit code 1, usage errors with exit code 2, and the same input rules in the schema."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import orjson
import pytest
from aiohttp import web
from click.testing import Result

from tests.conftest import Cli, Receiver, add_webhook, deliver_all, fast_settings, publish

WEBHOOK_FIELDS = [
    "id",
    "service_name",
    "url",
    "description",
    "event_types",
    "status",
    "created_at",
    "updated_at",
    "rate_limit",
    "max_concurrency",
    "retry_policy",
    "disabled_reason",
    "disabled_at",
    "health",
]
LIST_FIELDS = [
    "id",
    "service_name",
    "url",
    "status",
    "event_types",
    "event_type_count",
    "deliveries_24h",
    "failed_24h",
]
FAILURE_FIELDS = [
    "delivery_id",
    "message_id",
    "event_type",
    "attempt",
    "started_at",
    "response_status",
    "error_kind",
    "error_message",
]
BAD_TYPE_HINT = "use a dotted name of letters, digits, '_' and '-', such as customer.updated, or *"


def assert_error(result: Result, message: str) -> None:
    """Exit code 1 and exactly one `error: ...` line, no traceback."""
    assert isinstance(result.exception, SystemExit), result.exception
    assert (result.exit_code, result.output) == (1, f"error: {message}\n")


def assert_usage_error(result: Result, message: str) -> None:
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Usage: ")
    assert result.output.endswith(f"Error: {message}\n")
    assert "Traceback" not in result.output


def assert_error_after_prompt(result: Result, wid: int, answer: str) -> None:
    """The prompt ends its line (stdin is no terminal), then CliRunner echoes the answer."""
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert result.stdout == f"Delete webhook {wid} (Zapier, https://x.example/in)? [y/N]:\n{answer}"
    assert result.stderr == "error: not deleted\n"


def shown(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


async def webhook_row(db: asyncpg.Pool, webhook_id: int) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM dispatcher.webhooks WHERE id = $1", webhook_id)
    assert row is not None
    return row


async def count(db: asyncpg.Pool, table: str) -> int:
    n: int = await db.fetchval(f"SELECT count(*) FROM dispatcher.{table}")
    return n


# --- add --------------------------------------------------------------------------------


async def test_add_prints_id_and_secret_and_stores_the_webhook(cli: Cli, db: asyncpg.Pool) -> None:
    out = await cli.ok(
        "webhooks",
        "add",
        "--name",
        "  Zapier  ",
        "--url",
        "https://hooks.example.com/zap",
        "--events",
        "customer.created, customer.updated",
        "--events",
        "customer.created,invoice.paid",
        "--description",
        "CRM sync",
    )
    row = await webhook_row(db, 1)
    assert out == (
        "Created webhook 1 (Zapier), active.\n"
        "url:    https://hooks.example.com/zap\n"
        "events: customer.created, customer.updated, invoice.paid\n"
        f"secret: {row['secret']}\n"
        "Receivers verify the webhook-signature header with this secret.\n"
    )
    assert row["service_name"] == "Zapier"
    assert row["description"] == "CRM sync"
    assert row["event_types"] == ["customer.created", "customer.updated", "invoice.paid"]
    assert row["status"] == "active"
    assert row["secret"].startswith("whsec_")


async def test_add_json_has_the_stable_fields_and_no_secret(cli: Cli, db: asyncpg.Pool) -> None:
    result = await cli(
        "webhooks", "add", "--name", "Billing", "--url", "http://b.example/x", "--events", "*"
    )
    assert result.exit_code == 0
    result = await cli(
        "webhooks",
        "add",
        "--name",
        "CRM",
        "--url",
        "https://crm.example/hook?x=1",
        "--events",
        "a.b",
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.output)
    row = await webhook_row(db, 2)
    assert list(data) == WEBHOOK_FIELDS
    assert data == {
        "id": 2,
        "service_name": "CRM",
        "url": "https://crm.example/hook?x=1",
        "description": "",
        "event_types": ["a.b"],
        "status": "active",
        "created_at": data["created_at"],
        "updated_at": data["updated_at"],
        "rate_limit": None,
        "max_concurrency": None,
        "retry_policy": None,
        "disabled_reason": None,
        "disabled_at": None,
        "health": data["health"],
    }
    assert data["health"]["state"] == "ok"
    assert datetime.fromisoformat(data["created_at"]) == row["created_at"]
    assert datetime.fromisoformat(data["updated_at"]) == row["updated_at"]
    secret = row["secret"]
    assert secret not in result.output
    assert secret.removeprefix("whsec_") not in result.output
    assert "secret" not in result.output


async def test_add_accepts_the_length_limits_exactly(cli: Cli, db: asyncpg.Pool) -> None:
    url = "https://example.com/" + "a" * (2048 - len("https://example.com/"))
    data = await cli.json("webhooks", "add", "--name", "n" * 200, "--url", url, "--events", "a.b")
    assert (len(data["service_name"]), len(data["url"])) == (200, 2048)
    assert await count(db, "webhooks") == 1


# --- list -------------------------------------------------------------------------------


async def test_list_when_empty(cli: Cli) -> None:
    assert await cli.ok("webhooks", "list") == (
        "No webhooks yet. Add one with `dispatcher webhooks add`.\n"
    )
    assert await cli.json("webhooks", "list") == []


async def test_list_human_shows_counts_of_the_last_24_hours(cli: Cli, db: asyncpg.Pool) -> None:
    zap, _ = await add_webhook(db, "https://zap.example/in", ["t.a", "t.b"], name="Zapier")
    bill, _ = await add_webhook(db, "https://bill.example/in", ["t.a"], name="Billing")
    await add_webhook(db, "https://off.example/in", ["*"], name="Off", status="disabled")
    for _ in range(3):
        await publish(db, "t.a")
    await publish(db, "t.b")
    await db.execute(
        "UPDATE dispatcher.deliveries SET status = 'failed', finished_at = now()"
        " WHERE id IN (SELECT id FROM dispatcher.deliveries WHERE webhook_id = $1"
        " ORDER BY id LIMIT 2)",
        bill,
    )
    # Older than the window: not counted.
    await db.execute(
        "UPDATE dispatcher.deliveries SET created_at = now() - interval '25 hours'"
        " WHERE id = (SELECT min(id) FROM dispatcher.deliveries WHERE webhook_id = $1)",
        zap,
    )

    assert await cli.ok("webhooks", "list") == (
        "ID  NAME     URL                      STATUS    EVENTS  DELIVERIES 24H  FAILED 24H"
        "  SUCCESS 24H  HEALTH\n"
        "1   Zapier   https://zap.example/in   active    2       3               0           -"
        "            ok\n"
        "2   Billing  https://bill.example/in  active    1       3               2           0.0%"
        "         ok\n"
        "3   Off      https://off.example/in   disabled  1       0               0           -"
        "            disabled\n"
    )


async def test_list_json_counts_real_deliveries_and_never_shows_secrets(
    cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    async def handler(request: web.Request, rec: Receiver) -> web.Response:
        return web.Response(status=500 if request.path == "/fail" else 200)

    receiver.handler = handler
    good, good_secret = await add_webhook(db, receiver.url + "/ok", ["t.a"], name="Good")
    bad, bad_secret = await add_webhook(db, receiver.url + "/fail", ["t.a", "t.b"], name="Bad")
    off, off_secret = await add_webhook(db, receiver.url + "/off", ["*"], "Off", "disabled")
    for _ in range(3):
        await publish(db, "t.a")
    await publish(db, "t.b")
    await deliver_all(fast_settings(retry_schedule=()), dsn)
    assert (len(receiver.on("/ok")), len(receiver.on("/fail"))) == (3, 4)
    # One of Good's deliveries is older than 24 hours.
    await db.execute(
        "UPDATE dispatcher.deliveries SET created_at = now() - interval '2 days'"
        " WHERE id = (SELECT min(id) FROM dispatcher.deliveries WHERE webhook_id = $1)",
        good,
    )

    result = await cli("webhooks", "list", "--json")
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.output)
    assert [{k: item[k] for k in LIST_FIELDS} for item in data] == [
        {
            "id": good,
            "service_name": "Good",
            "url": receiver.url + "/ok",
            "status": "active",
            "event_types": ["t.a"],
            "event_type_count": 1,
            "deliveries_24h": 2,
            "failed_24h": 0,
        },
        {
            "id": bad,
            "service_name": "Bad",
            "url": receiver.url + "/fail",
            "status": "active",
            "event_types": ["t.a", "t.b"],
            "event_type_count": 2,
            "deliveries_24h": 4,
            "failed_24h": 4,
        },
        {
            "id": off,
            "service_name": "Off",
            "url": receiver.url + "/off",
            "status": "disabled",
            "event_types": ["*"],
            "event_type_count": 1,
            "deliveries_24h": 0,
            "failed_24h": 0,
        },
    ]
    for secret in (good_secret, bad_secret, off_secret):
        assert secret not in result.output
        assert secret.removeprefix("whsec_") not in result.output
    assert "secret" not in result.output
    human = await cli.ok("webhooks", "list")
    assert all(s.removeprefix("whsec_") not in human for s in (good_secret, bad_secret))


async def test_list_json_has_every_documented_webhook_field(cli: Cli, db: asyncpg.Pool) -> None:
    await cli.ok(
        "webhooks",
        "add",
        "--name",
        "Zapier",
        "--url",
        "https://zap.example/in",
        "--events",
        "a.b",
        "--description",
        "CRM sync",
    )
    row = await webhook_row(db, 1)

    [item] = await cli.json("webhooks", "list")

    assert set(item) == {
        *WEBHOOK_FIELDS,
        "event_type_count",
        "deliveries_24h",
        "failed_24h",
        "succeeded_24h",
        "success_rate_24h",
    }
    assert item["description"] == "CRM sync"
    assert datetime.fromisoformat(item["created_at"]) == row["created_at"]
    assert datetime.fromisoformat(item["updated_at"]) == row["updated_at"]


# --- show -------------------------------------------------------------------------------


async def test_show_human_prints_every_detail_and_the_secret(cli: Cli, db: asyncpg.Pool) -> None:
    await cli.ok(
        "webhooks",
        "add",
        "--name",
        "Zapier",
        "--url",
        "https://zap.example/in",
        "--events",
        "a.b,c.d",
        "--description",
        "CRM sync",
    )
    row = await webhook_row(db, 1)
    assert await cli.ok("webhooks", "show", "1") == (
        "id:           1\n"
        "name:         Zapier\n"
        "url:          https://zap.example/in\n"
        "description:  CRM sync\n"
        "status:       active\n"
        "events:       a.b, c.d\n"
        "rate limit:   none\n"
        "concurrency:  default (the daemon's per_endpoint_concurrency)\n"
        "retry policy: default (the daemon's retry_policy)\n"
        f"secret:       {row['secret']}\n"
        f"created:      {shown(row['created_at'])}\n"
        f"updated:      {shown(row['updated_at'])}\n"
        "\n"
        "Health: ok\n"
        "  consecutive failures: 0\n"
        "  first failure:        -\n"
        "  last failure:         -\n"
        "  last error:           -\n"
        "  breaker:              closed\n"
        "  rate limit:           none\n"
        "\n"
        "No failed attempts.\n"
    )


async def test_show_json_has_secret_and_recent_failures(
    cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    async def fail(request: web.Request, rec: Receiver) -> web.Response:
        return web.Response(status=503, text="down")

    receiver.handler = fail
    wid, secret = await add_webhook(db, receiver.url + "/hook", ["t.x"], name="Flaky")
    mid = await publish(db, "t.x")
    await deliver_all(fast_settings(retry_schedule=(0,)), dsn)
    delivery_id = await db.fetchval("SELECT id FROM dispatcher.deliveries")

    data = await cli.json("webhooks", "show", str(wid))
    row = await webhook_row(db, wid)
    assert list(data) == [
        *WEBHOOK_FIELDS,
        "secret",
        "previous_secret",
        "previous_secret_expires_at",
        "recent_failures",
    ]
    assert data["secret"] == secret
    assert (data["id"], data["service_name"], data["url"]) == (wid, "Flaky", receiver.url + "/hook")
    assert (data["event_types"], data["status"], data["description"]) == (["t.x"], "active", "")
    assert datetime.fromisoformat(data["updated_at"]) == row["updated_at"]
    failures = data["recent_failures"]
    assert [list(f) for f in failures] == [FAILURE_FIELDS] * 2
    # Newest first.
    assert [(f["attempt"], f["response_status"], f["error_kind"]) for f in failures] == [
        (2, 503, "status"),
        (1, 503, "status"),
    ]
    assert {(f["delivery_id"], f["message_id"], f["event_type"]) for f in failures} == {
        (delivery_id, mid, "t.x")
    }
    assert {f["error_message"] for f in failures} == {"HTTP 503"}

    human = await cli.ok("webhooks", "show", str(wid))
    assert f"secret:       {secret}\n" in human
    lines = human.split("\nRecent failures:\n")[1].splitlines()
    assert " ".join(lines[0].split()) == "AT DELIVERY EVENT TYPE ATTEMPT STATUS ERROR MESSAGE"
    assert [line.split()[2:7] for line in lines[1:]] == [
        [str(delivery_id), "t.x", "2", "503", "status"],
        [str(delivery_id), "t.x", "1", "503", "status"],
    ]


# --- edit, events, enable, disable ------------------------------------------------------


async def test_edit_changes_only_what_is_given(cli: Cli, db: asyncpg.Pool) -> None:
    wid, secret = await add_webhook(db, "https://old.example/in", ["a.b"], name="Old")
    before = await webhook_row(db, wid)

    data = await cli.json("webhooks", "edit", str(wid), "--url", " https://new.example/in ")
    assert list(data) == WEBHOOK_FIELDS
    assert (data["url"], data["service_name"], data["description"]) == (
        "https://new.example/in",
        "Old",
        "",
    )
    out = await cli.ok("webhooks", "edit", str(wid), "--name", " New ", "--description", "d")
    row = await webhook_row(db, wid)
    assert out == (
        f"Updated webhook {wid}.\n"
        f"id:           {wid}\n"
        "name:         New\n"
        "url:          https://new.example/in\n"
        "description:  d\n"
        "status:       active\n"
        "events:       a.b\n"
        "rate limit:   none\n"
        "concurrency:  default (the daemon's per_endpoint_concurrency)\n"
        "retry policy: default (the daemon's retry_policy)\n"
        f"created:      {shown(row['created_at'])}\n"
        f"updated:      {shown(row['updated_at'])}\n"
    )
    assert secret not in out
    assert (row["service_name"], row["url"], row["description"]) == (
        "New",
        "https://new.example/in",
        "d",
    )
    assert (row["secret"], row["created_at"], row["event_types"]) == (
        secret,
        before["created_at"],
        ["a.b"],
    )
    assert row["updated_at"] > before["updated_at"]


async def test_events_add_remove_and_set(cli: Cli, db: asyncpg.Pool) -> None:
    wid, _ = await add_webhook(db, "https://x.example/in", ["a.b", "c.d"])

    out = await cli.ok("webhooks", "events", str(wid), "--add", "e.f,a.b", "--add", "g.h")
    assert out == f"Webhook {wid} now receives: a.b, c.d, e.f, g.h\n"
    out = await cli.ok("webhooks", "events", str(wid), "--remove", "a.b", "--remove", "e.f")
    assert out == f"Webhook {wid} now receives: c.d, g.h\n"
    data = await cli.json("webhooks", "events", str(wid), "--set", "x.y, *")
    assert list(data) == WEBHOOK_FIELDS
    assert data["event_types"] == ["x.y", "*"]
    data = await cli.json("webhooks", "events", str(wid), "--set", "p.q", "--add", "r.s")
    assert data["event_types"] == ["p.q", "r.s"]
    assert (await webhook_row(db, wid))["event_types"] == ["p.q", "r.s"]


async def test_disable_cancels_pending_and_enable_restores(cli: Cli, db: asyncpg.Pool) -> None:
    wid, _ = await add_webhook(db, "https://x.example/in", ["a.b"])
    other, _ = await add_webhook(db, "https://y.example/in", ["a.b"])
    await publish(db, "a.b")
    await publish(db, "a.b")

    assert await cli.ok("webhooks", "disable", str(wid)) == (
        f"Webhook {wid} is disabled; 2 pending deliveries cancelled.\n"
    )
    rows = await db.fetch(
        "SELECT webhook_id, status, last_error_kind FROM dispatcher.deliveries ORDER BY id"
    )
    assert sorted((r["webhook_id"], r["status"], r["last_error_kind"]) for r in rows) == [
        (wid, "cancelled", "webhook_disabled"),
        (wid, "cancelled", "webhook_disabled"),
        (other, "pending", None),
        (other, "pending", None),
    ]
    data = await cli.json("webhooks", "enable", str(wid))
    assert list(data) == WEBHOOK_FIELDS
    assert (data["id"], data["status"]) == (wid, "active")
    data = await cli.json("webhooks", "disable", str(wid))
    assert list(data) == [*WEBHOOK_FIELDS, "cancelled"]
    assert (data["status"], data["cancelled"]) == ("disabled", 0)
    # Disabling a disabled webhook cancels nothing, whatever is pending.
    again = await cli.ok("webhooks", "disable", str(wid))
    assert again == f"Webhook {wid} is disabled; 0 pending deliveries cancelled.\n"
    assert await cli.ok("webhooks", "enable", str(wid)) == f"Webhook {wid} is active.\n"
    assert (
        await db.fetchval(
            "SELECT count(*) FROM dispatcher.deliveries"
            " WHERE webhook_id = $1 AND status = 'pending'",
            wid,
        )
        == 0
    )


# --- delete -----------------------------------------------------------------------------


@pytest.mark.parametrize("answer", ["n\n", "\n", ""])
async def test_delete_declined_is_an_error_line_and_deletes_nothing(
    cli: Cli, db: asyncpg.Pool, answer: str
) -> None:
    """'n', the default (Enter), and end of input all decline: one `error:` line, exit 1."""
    wid, _ = await add_webhook(db, "https://x.example/in", ["a.b"], name="Zapier")
    await publish(db, "a.b")

    result = await cli("webhooks", "delete", str(wid), input=answer)

    assert_error_after_prompt(result, wid, answer)
    assert "Aborted" not in result.output
    assert await count(db, "webhooks") == 1
    assert await db.fetchval("SELECT status FROM dispatcher.deliveries") == "pending"


async def test_delete_asks_and_y_deletes_cancelling_pending(cli: Cli, db: asyncpg.Pool) -> None:
    wid, _ = await add_webhook(db, "https://x.example/in", ["a.b"], name="Zapier")
    await publish(db, "a.b")
    await publish(db, "a.b")

    result = await cli("webhooks", "delete", str(wid), input="y\n")

    # Not a terminal: the prompt ends its line (CliRunner then echoes the answer).
    assert (result.exit_code, result.stdout) == (
        0,
        f"Delete webhook {wid} (Zapier, https://x.example/in)? [y/N]:\ny\n"
        f"Deleted webhook {wid}; 2 pending deliveries cancelled.\n",
    )
    assert await count(db, "webhooks") == 0
    rows = await db.fetch("SELECT status, last_error_kind FROM dispatcher.deliveries")
    assert [tuple(r) for r in rows] == [("cancelled", "webhook_deleted")] * 2


async def test_delete_with_yes_does_not_ask(cli: Cli, db: asyncpg.Pool) -> None:
    wid, _ = await add_webhook(db, "https://x.example/in", ["a.b"])
    out = await cli.ok("webhooks", "delete", str(wid), "--yes")
    assert out == f"Deleted webhook {wid}; 0 pending deliveries cancelled.\n"
    assert await count(db, "webhooks") == 0


# --- errors: exit 1, one line -----------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["show", "999"],
        ["show", "999", "--json"],
        ["edit", "999", "--name", "x"],
        ["events", "999", "--add", "a.b"],
        ["events", "999", "--remove", "a.b"],
        ["disable", "999"],
        ["enable", "999"],
        ["delete", "999"],
        ["delete", "999", "--yes"],
        ["test", "999"],
        ["test", "999", "--event-type", "a.b"],
    ],
)
async def test_unknown_id_is_one_line_and_exit_1(
    cli: Cli, db: asyncpg.Pool, args: list[str]
) -> None:
    await add_webhook(db, "https://x.example/in", ["a.b"])
    result = await cli("webhooks", *args, input="y\n")
    assert_error(result, "webhook 999 does not exist")
    assert await count(db, "webhooks") == 1
    assert await count(db, "deliveries") == 0


LONG_URL = "https://example.com/" + "a" * (2049 - len("https://example.com/"))

BAD_URLS = [
    ("ftp://example.com/h", "invalid URL 'ftp://example.com/h': the scheme must be http or https"),
    (
        "https://user:pw@example.com/h",
        "invalid URL 'https://user:pw@example.com/h': user-info (user:password@) is not allowed",
    ),
    (
        "https://user@example.com/h",
        "invalid URL 'https://user@example.com/h': user-info (user:password@) is not allowed",
    ),
    ("https:///no-host", "invalid URL 'https:///no-host': it has no host"),
    ("http://", "invalid URL 'http://': it has no host"),
    (LONG_URL, "invalid URL: longer than 2048 characters"),
    ("https://exa mple.com/", "invalid URL 'https://exa mple.com/': it contains whitespace"),
    ("https://example.com/a\tb", "invalid URL 'https://example.com/a\\tb': it contains whitespace"),
    ("   ", "invalid URL: it is empty"),
]


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
async def test_add_rejects_invalid_url(cli: Cli, db: asyncpg.Pool, url: str, message: str) -> None:
    result = await cli("webhooks", "add", "--name", "n", "--url", url, "--events", "a.b")
    assert_error(result, message)
    assert await count(db, "webhooks") == 0


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
async def test_edit_rejects_invalid_url(cli: Cli, db: asyncpg.Pool, url: str, message: str) -> None:
    wid, _ = await add_webhook(db, "https://x.example/in", ["a.b"])
    result = await cli("webhooks", "edit", str(wid), "--url", url)
    assert_error(result, message)
    assert (await webhook_row(db, wid))["url"] == "https://x.example/in"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "invalid service name: it is empty"),
        ("   \t ", "invalid service name: it is empty"),
        ("n" * 201, "invalid service name: longer than 200 characters"),
    ],
)
async def test_invalid_name_is_rejected_by_add_and_edit(
    cli: Cli, db: asyncpg.Pool, name: str, message: str
) -> None:
    result = await cli(
        "webhooks", "add", "--name", name, "--url", "https://x.example/", "--events", "a"
    )
    assert_error(result, message)
    assert await count(db, "webhooks") == 0
    wid, _ = await add_webhook(db, "https://x.example/in", ["a.b"], name="Kept")
    assert_error(await cli("webhooks", "edit", str(wid), "--name", name), message)
    assert (await webhook_row(db, wid))["service_name"] == "Kept"


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (",", "the event type list is empty: give at least one type, or *"),
        (" , ,", "the event type list is empty: give at least one type, or *"),
        ("bad type", f"invalid event type 'bad type': {BAD_TYPE_HINT}"),
        ("a..b", f"invalid event type 'a..b': {BAD_TYPE_HINT}"),
        ("ok.type,.lead", f"invalid event type '.lead': {BAD_TYPE_HINT}"),
        ("trail.", f"invalid event type 'trail.': {BAD_TYPE_HINT}"),
        ("**", f"invalid event type '**': {BAD_TYPE_HINT}"),
    ],
)
async def test_add_rejects_bad_event_lists(
    cli: Cli, db: asyncpg.Pool, events: str, message: str
) -> None:
    result = await cli(
        "webhooks", "add", "--name", "n", "--url", "https://x.example/", "--events", events
    )
    assert_error(result, message)
    assert await count(db, "webhooks") == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", ","], "the event type list is empty: give at least one type, or *"),
        (["--add", "bad type"], f"invalid event type 'bad type': {BAD_TYPE_HINT}"),
        (["--set", "a..b"], f"invalid event type 'a..b': {BAD_TYPE_HINT}"),
        (["--remove", "a b"], f"invalid event type 'a b': {BAD_TYPE_HINT}"),
        (
            ["--remove", "a.b,c.d"],
            "the event type list would be empty: a webhook needs at least one type"
            " (disable it instead)",
        ),
        (["--remove", "zz.top"], "webhook {wid} is not subscribed to zz.top"),
        (["--remove", "a.b", "--remove", "x.y"], "webhook {wid} is not subscribed to x.y"),
    ],
)
async def test_events_rejects_bad_changes(
    cli: Cli, db: asyncpg.Pool, args: list[str], message: str
) -> None:
    wid, _ = await add_webhook(db, "https://x.example/in", ["a.b", "c.d"])
    result = await cli("webhooks", "events", str(wid), *args)
    assert_error(result, message.format(wid=wid))
    assert (await webhook_row(db, wid))["event_types"] == ["a.b", "c.d"]


async def test_unknown_type_is_rejected_once_the_catalog_has_types(
    cli: Cli, db: asyncpg.Pool
) -> None:
    # An empty catalog accepts anything.
    await cli.ok("webhooks", "add", "--name", "a", "--url", "https://a.example/", "--events", "z.z")
    await cli.ok("event-types", "add", "customer.updated")
    hint = (
        " not in the event-type catalog (see `dispatcher event-types list`;"
        " pass --allow-unknown to use it anyway)"
    )

    result = await cli(
        "webhooks",
        "add",
        "--name",
        "b",
        "--url",
        "https://b.example/",
        "--events",
        "customer.updated,customer.updatd,x.y",
    )
    assert_error(result, f"unknown event type customer.updatd, x.y:{hint}")
    assert await count(db, "webhooks") == 1
    assert_error(
        await cli("webhooks", "events", "1", "--add", "q.q"), f"unknown event type q.q:{hint}"
    )
    assert_error(
        await cli("webhooks", "events", "1", "--set", "q.q"), f"unknown event type q.q:{hint}"
    )

    # Known types, '*', and a type the webhook already has are all fine.
    await cli.ok("webhooks", "events", "1", "--add", "customer.updated,*")
    data = await cli.json(
        "webhooks",
        "add",
        "--name",
        "b",
        "--url",
        "https://b.example/",
        "--events",
        "customer.updated,x.y",
        "--allow-unknown",
    )
    assert data["event_types"] == ["customer.updated", "x.y"]
    data = await cli.json("webhooks", "events", "1", "--add", "q.q", "--allow-unknown")
    assert data["event_types"] == ["z.z", "customer.updated", "*", "q.q"]


# --- usage errors: exit 2 ---------------------------------------------------------------


async def test_usage_errors_exit_2(cli: Cli, db: asyncpg.Pool) -> None:
    wid, _ = await add_webhook(db, "https://x.example/in", ["a.b"])
    assert_usage_error(
        await cli("webhooks", "add", "--name", "n", "--events", "a.b"),
        "Missing option '--url'.",
    )
    assert_usage_error(
        await cli("webhooks", "edit", str(wid)),
        "nothing to change: give --url, --name, --description, --rate-limit,"
        " --retry-policy or --max-concurrency",
    )
    assert_usage_error(
        await cli("webhooks", "events", str(wid)),
        "nothing to change: give --add, --remove or --set",
    )
    assert_usage_error(
        await cli("webhooks", "show", "abc"),
        "Invalid value for 'WEBHOOK_ID': 'abc' is not a valid integer.",
    )
    assert await count(db, "webhooks") == 1


# --- the same rules in the schema -------------------------------------------------------

INSERT_WEBHOOK = (
    "INSERT INTO dispatcher.webhooks (service_name, url, event_types) VALUES ($1, $2, $3)"
)


@pytest.mark.parametrize(
    ("name", "url", "types", "constraint"),
    [
        ("n", "ftp://example.com/", ["a.b"], "webhooks_url_valid"),
        ("n", "https://u:p@example.com/", ["a.b"], "webhooks_url_valid"),
        ("n", "https://u@example.com/", ["a.b"], "webhooks_url_valid"),
        ("n", "https:///path", ["a.b"], "webhooks_url_valid"),
        ("n", "https://exa mple.com/", ["a.b"], "webhooks_url_valid"),
        ("n", "https://example.com/a b", ["a.b"], "webhooks_url_valid"),
        ("n", "https://example.com/" + "a" * 2029, ["a.b"], "webhooks_url_valid"),
        ("n", "", ["a.b"], "webhooks_url_valid"),
        ("", "https://example.com/", ["a.b"], "webhooks_service_name_valid"),
        ("   ", "https://example.com/", ["a.b"], "webhooks_service_name_valid"),
        ("n" * 201, "https://example.com/", ["a.b"], "webhooks_service_name_valid"),
        ("n", "https://example.com/", [], "webhooks_event_types_valid"),
        ("n", "https://example.com/", ["bad type"], "webhooks_event_types_valid"),
        ("n", "https://example.com/", ["a..b"], "webhooks_event_types_valid"),
        ("n", "https://example.com/", ["a.b", ""], "webhooks_event_types_valid"),
        ("n", "https://example.com/", ["a.b", None], "webhooks_event_types_valid"),
    ],
)
async def test_database_rejects_invalid_webhooks_without_the_cli(
    db: asyncpg.Pool, name: str, url: str, types: list[str | None], constraint: str
) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await db.execute(INSERT_WEBHOOK, name, url, types)
    assert caught.value.constraint_name == constraint
    assert await count(db, "webhooks") == 0


@pytest.mark.parametrize("name", ["\t", "\n", " \t\r\n "])
async def test_database_rejects_a_whitespace_only_name(db: asyncpg.Pool, name: str) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(INSERT_WEBHOOK, name, "https://example.com/", ["a.b"])


async def test_database_rejects_invalid_updates_without_the_cli(db: asyncpg.Pool) -> None:
    wid, _ = await add_webhook(db, "https://x.example/in", ["a.b"])
    for column, value in [
        ("url", "gopher://x.example/"),
        ("service_name", ""),
        ("event_types", []),
        ("event_types", ["no spaces"]),
    ]:
        with pytest.raises(asyncpg.CheckViolationError):
            await db.execute(
                f"UPDATE dispatcher.webhooks SET {column} = $2 WHERE id = $1", wid, value
            )
    row = await webhook_row(db, wid)
    assert (row["url"], row["service_name"], row["event_types"]) == (
        "https://x.example/in",
        "test",
        ["a.b"],
    )


async def test_database_accepts_what_the_cli_accepts(db: asyncpg.Pool) -> None:
    rows = [
        ("n" * 200, "HTTPS://Example.com:8443/p?q=1#f", ["*"]),
        ("n", "http://127.0.0.1:9/x", ["customer.updated", "a-b_c.D9"]),
        ("n", "https://example.com/" + "a" * 2028, ["a"]),
    ]
    for name, url, types in rows:
        await db.execute(INSERT_WEBHOOK, name, url, types)
    assert await count(db, "webhooks") == 3


@pytest.mark.parametrize("event_type", ["*", "a b", "", "a..b", ".a", "a.", "a/b"])
async def test_database_rejects_invalid_event_types_on_events(
    db: asyncpg.Pool, event_type: str
) -> None:
    await add_webhook(db, "https://x.example/in", ["*"])
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await db.execute(
            "INSERT INTO dispatcher.events (event_type, payload) VALUES ($1, '{}')", event_type
        )
    assert caught.value.constraint_name == "events_event_type_valid"
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("SELECT dispatcher.publish($1, '{}'::jsonb)", event_type)
    assert await count(db, "events") == 0
    assert await count(db, "deliveries") == 0
