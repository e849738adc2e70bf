"""`dispatcher webhooks ...` and endpoint health: rate limits and retry policies on add and edit,
why a webhook is disabled, the health column and details, and the built-in operator types.

Each health state is made by writing the webhook_health row in SQL, as the daemon would."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from click.testing import Result

from dispatcher.manage.health import retry_text
from tests.conftest import Cli, Receiver, add_webhook, publish

OPERATOR_TYPES = [
    "dispatcher.webhook.disabled",
    "dispatcher.webhook.failing",
    "dispatcher.webhook.recovered",
]


def assert_error(result: Result, message: str) -> None:
    """Exit code 1 and exactly one `error: ...` line."""
    assert (result.exit_code, result.output) == (1, f"error: {message}\n")


def shown(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


async def health_row(db: asyncpg.Pool, webhook_id: int) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT * FROM dispatcher.webhook_health WHERE webhook_id = $1", webhook_id
    )
    assert row is not None
    return row


async def webhook_row(db: asyncpg.Pool, webhook_id: int) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM dispatcher.webhooks WHERE id = $1", webhook_id)
    assert row is not None
    return row


# --- rate limit and retry policy on add and edit ----------------------------------------


async def test_add_sets_rate_limit_and_retry_policy(cli: Cli, db: asyncpg.Pool) -> None:
    out = await cli.ok(
        "webhooks", "add", "--name", "CRM", "--url", "https://crm.example/in", "--events", "a.b",
        "--rate-limit", "2.5", "--retry-policy", "exponential",
    )  # fmt: skip
    assert "rate limit:   2.5/s\n" in out and "retry policy: exponential\n" in out
    row = await webhook_row(db, 1)
    assert (row["rate_limit"], row["retry_policy"]) == (2.5, "exponential")
    # The lease reads the trigger-kept copy.
    assert (await health_row(db, 1))["rate_limit"] == 2.5

    data = await cli.json(
        "webhooks", "add", "--name", "B", "--url", "https://b.example/in", "--events", "a.b",
        "--rate-limit", "100000", "--retry-policy", "schedule",
    )  # fmt: skip
    assert (data["rate_limit"], data["retry_policy"]) == (100000, "schedule")
    plain = await cli.json(
        "webhooks", "add", "--name", "C", "--url", "https://c.example/in", "--events", "a.b",
        "--rate-limit", "none", "--retry-policy", "default",
    )  # fmt: skip
    assert (plain["rate_limit"], plain["retry_policy"]) == (None, None)


RATE_HINT = "--rate-limit must be a number of requests per second greater than 0"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", f"{RATE_HINT}, got 'abc'"),
        ("0", f"{RATE_HINT}, got '0'"),
        ("-3", f"{RATE_HINT}, got '-3'"),
        ("nan", f"{RATE_HINT}, got 'nan'"),
        ("inf", f"{RATE_HINT}, got 'inf'"),
        ("", f"{RATE_HINT}, got ''"),
        ("100000.5", "--rate-limit must be at most 100000 requests per second, got '100000.5'"),
    ],
)
async def test_a_bad_rate_limit_is_one_line(
    cli: Cli, db: asyncpg.Pool, value: str, message: str
) -> None:
    add = ("webhooks", "add", "--name", "X", "--url", "https://x.example/", "--events", "a.b")
    assert_error(await cli(*add, "--rate-limit", value), message)
    assert await db.fetchval("SELECT count(*) FROM dispatcher.webhooks") == 0
    wid, _ = await add_webhook(db, "https://x.example/", ["a.b"])
    assert_error(await cli("webhooks", "edit", str(wid), "--rate-limit", value), message)
    assert (await webhook_row(db, wid))["rate_limit"] is None


async def test_a_bad_retry_policy_is_one_line(cli: Cli, db: asyncpg.Pool) -> None:
    message = (
        "--retry-policy must be schedule or exponential, or default for the daemon's default"
        " policy, got 'linear'"
    )
    add = ("webhooks", "add", "--name", "X", "--url", "https://x.example/", "--events", "a.b")
    assert_error(await cli(*add, "--retry-policy", "linear"), message)
    wid, _ = await add_webhook(db, "https://x.example/", ["a.b"])
    assert_error(await cli("webhooks", "edit", str(wid), "--retry-policy", "linear"), message)


async def test_edit_sets_and_clears_only_what_is_given(cli: Cli, db: asyncpg.Pool) -> None:
    wid, _ = await add_webhook(db, "https://x.example/", ["a.b"], name="X")
    data = await cli.json("webhooks", "edit", str(wid), "--rate-limit", "10")
    assert (data["rate_limit"], data["retry_policy"], data["service_name"]) == (10, None, "X")
    data = await cli.json("webhooks", "edit", str(wid), "--retry-policy", "exponential")
    assert (data["rate_limit"], data["retry_policy"]) == (10, "exponential")
    out = await cli.ok("webhooks", "edit", str(wid), "--name", "Y")
    assert "rate limit:   10/s\n" in out and "retry policy: exponential\n" in out

    data = await cli.json("webhooks", "edit", str(wid), "--rate-limit", "none")
    assert (data["rate_limit"], data["retry_policy"]) == (None, "exponential")
    assert (await health_row(db, wid))["rate_limit"] is None
    data = await cli.json("webhooks", "edit", str(wid), "--retry-policy", "default")
    assert (data["rate_limit"], data["retry_policy"], data["service_name"]) == (None, None, "Y")


# --- disable and enable -----------------------------------------------------------------

STREAK = """
UPDATE dispatcher.webhook_health
SET consecutive_failures = 14, first_failure_at = now() - interval '3 days',
    last_failure_at = now() - interval '1 minute', last_error = 'HTTP 503',
    breaker_failures = 14, breaker_until = now() + interval '5 minutes',
    breaker_opened_at = now() - interval '1 minute', breaker_trips = 3,
    probe_delivery_id = 99, failing_since = now() - interval '3 days'
WHERE webhook_id = $1
"""


async def test_disable_records_manual_and_enable_starts_afresh(cli: Cli, db: asyncpg.Pool) -> None:
    wid, _ = await add_webhook(db, "https://x.example/", ["a.b"])
    await db.execute(STREAK, wid)
    before = await health_row(db, wid)

    data = await cli.json("webhooks", "disable", str(wid))
    row = await webhook_row(db, wid)
    assert (row["status"], row["disabled_reason"]) == ("disabled", "manual")
    assert row["disabled_at"] is not None
    assert (data["disabled_reason"], data["health"]["state"]) == ("manual", "disabled")
    assert datetime.fromisoformat(data["disabled_at"]) == row["disabled_at"]
    out = await cli.ok("webhooks", "show", str(wid))
    assert f"disabled:     manual at {shown(row['disabled_at'])}\n" in out
    assert "Health: disabled\n" in out
    # Disabling does not touch the health: the streak is still there to look at.
    assert await health_row(db, wid) == before

    data = await cli.json("webhooks", "enable", str(wid))
    assert (data["status"], data["disabled_reason"], data["disabled_at"]) == ("active", None, None)
    # Enabling keeps when the endpoint last failed: the stored time, not a fresh one.
    last_failure_at = data["health"].pop("last_failure_at")
    assert datetime.fromisoformat(last_failure_at) == before["last_failure_at"]
    assert data["health"] == {
        "state": "ok",
        "consecutive_failures": 0,
        "first_failure_at": None,
        "last_error": "HTTP 503",
        "breaker": {"state": "closed", "until": None, "opened_at": None, "trips": 0},
        "rate_limited_at": None,
    }
    health = await health_row(db, wid)
    assert dict(health) == {
        **dict(before),
        "consecutive_failures": 0,
        "first_failure_at": None,
        "breaker_failures": 0,
        "breaker_until": None,
        "breaker_opened_at": None,
        "breaker_trips": 0,
        "probe_delivery_id": None,
        "failing_since": None,
    }
    row = await webhook_row(db, wid)
    assert (row["disabled_reason"], row["disabled_at"]) == (None, None)


async def test_enable_of_an_active_webhook_leaves_its_health(cli: Cli, db: asyncpg.Pool) -> None:
    wid, _ = await add_webhook(db, "https://x.example/", ["a.b"])
    await db.execute(STREAK, wid)
    before = await health_row(db, wid)
    assert (await cli.json("webhooks", "enable", str(wid)))["health"]["state"] == "breaker_open"
    assert await health_row(db, wid) == before


async def test_disabling_again_keeps_the_daemons_reason(cli: Cli, db: asyncpg.Pool) -> None:
    wid, _ = await add_webhook(db, "https://x.example/", ["a.b"])
    await db.execute(
        "UPDATE dispatcher.webhooks SET status = 'disabled', disabled_reason = 'gone',"
        " disabled_at = now() - interval '1 day' WHERE id = $1",
        wid,
    )
    before = await webhook_row(db, wid)
    data = await cli.json("webhooks", "disable", str(wid))
    assert (data["disabled_reason"], data["cancelled"]) == ("gone", 0)
    assert (await webhook_row(db, wid))["disabled_at"] == before["disabled_at"]


async def test_enable_of_a_missing_webhook_says_so(cli: Cli) -> None:
    assert_error(await cli("webhooks", "enable", "42"), "webhook 42 does not exist")


# --- health as shown --------------------------------------------------------------------

# state name -> (SQL run with $1 = the webhook id, the health column's text with {t} for the
# time it names, the JSON state, the breaker's JSON state)
STATES: dict[str, tuple[str, str, str, str]] = {
    "ok": ("SELECT $1::bigint", "ok", "ok", "closed"),
    "failing": (
        "UPDATE dispatcher.webhook_health SET consecutive_failures = 3,"
        " first_failure_at = now() - interval '2 hours', last_failure_at = now(),"
        " last_error = 'connect: refused' WHERE webhook_id = $1"
        " RETURNING first_failure_at AS t",
        "failing since {t}",
        "failing",
        "closed",
    ),
    "breaker_open": (
        "UPDATE dispatcher.webhook_health SET consecutive_failures = 12,"
        " first_failure_at = now() - interval '1 hour', breaker_until = now() + interval '1 hour',"
        " breaker_opened_at = now(), breaker_trips = 2 WHERE webhook_id = $1"
        " RETURNING breaker_until AS t",
        "breaker open until {t}",
        "breaker_open",
        "open",
    ),
    "half_open": (
        "UPDATE dispatcher.webhook_health SET consecutive_failures = 12,"
        " first_failure_at = now() - interval '1 hour',"
        " breaker_until = now() - interval '1 second', breaker_opened_at = now() - interval"
        " '1 minute', breaker_trips = 1 WHERE webhook_id = $1 RETURNING first_failure_at AS t",
        "failing since {t}",
        "failing",
        "half-open",
    ),
    "rate_limited": (
        "WITH w AS (UPDATE dispatcher.webhooks SET rate_limit = 5 WHERE id = $1 RETURNING id)"
        " UPDATE dispatcher.webhook_health SET throttled_at = now() - interval '10 seconds'"
        " WHERE webhook_id = (SELECT id FROM w)",
        "rate-limited",
        "rate_limited",
        "closed",
    ),
    "throttled_long_ago": (
        "UPDATE dispatcher.webhook_health SET throttled_at = now() - interval '2 minutes'"
        " WHERE webhook_id = $1",
        "ok",
        "ok",
        "closed",
    ),
    "gone": (
        "UPDATE dispatcher.webhooks SET status = 'disabled', disabled_reason = 'gone',"
        " disabled_at = now() WHERE id = $1",
        "disabled: gone",
        "disabled",
        "closed",
    ),
    "failing_disabled": (
        "WITH w AS (UPDATE dispatcher.webhooks SET status = 'disabled', disabled_reason ="
        " 'failing', disabled_at = now() WHERE id = $1 RETURNING id)"
        " UPDATE dispatcher.webhook_health SET consecutive_failures = 20,"
        " first_failure_at = now() - interval '6 days', breaker_until = now() + interval"
        " '5 minutes' WHERE webhook_id = (SELECT id FROM w)",
        "disabled: failing",
        "disabled",
        "open",
    ),
    "manual": (
        "UPDATE dispatcher.webhooks SET status = 'disabled', disabled_reason = 'manual',"
        " disabled_at = now() WHERE id = $1",
        "disabled",
        "disabled",
        "closed",
    ),
}


@pytest.mark.parametrize("name", list(STATES))
async def test_each_health_state_in_list_show_and_json(
    cli: Cli, db: asyncpg.Pool, name: str
) -> None:
    sql, text, state, breaker = STATES[name]
    wid, _ = await add_webhook(db, "https://x.example/", ["a.b"], name="X")
    moment = await db.fetchval(sql, wid)
    if "{t}" in text:
        text = text.format(t=shown(moment))

    listed = (await cli.ok("webhooks", "list")).splitlines()
    assert listed[0].endswith("SUCCESS 24H  HEALTH")
    assert listed[1].endswith(f"  -            {text}"), listed[1]
    [item] = await cli.json("webhooks", "list")
    assert (item["health"]["state"], item["health"]["breaker"]["state"]) == (state, breaker)

    out = await cli.ok("webhooks", "show", str(wid))
    assert f"\nHealth: {text}\n" in out
    data = await cli.json("webhooks", "show", str(wid))
    assert data["health"] == item["health"]
    assert (data["health"]["state"], data["health"]["breaker"]["state"]) == (state, breaker)


async def test_show_details_the_streak_breaker_and_rate_limit(cli: Cli, db: asyncpg.Pool) -> None:
    wid, _ = await add_webhook(db, "https://x.example/", ["a.b"], name="X")
    await db.execute("UPDATE dispatcher.webhooks SET rate_limit = 0.5 WHERE id = $1", wid)
    await db.execute(STREAK, wid)
    await db.execute(
        "UPDATE dispatcher.webhook_health SET throttled_at = now() WHERE webhook_id = $1", wid
    )
    h = await health_row(db, wid)

    out = await cli.ok("webhooks", "show", str(wid))
    assert (
        f"Health: breaker open until {shown(h['breaker_until'])}\n"
        "  consecutive failures: 14\n"
        f"  first failure:        {shown(h['first_failure_at'])}\n"
        f"  last failure:         {shown(h['last_failure_at'])}\n"
        "  last error:           HTTP 503\n"
        f"  breaker:              open until {shown(h['breaker_until'])}"
        f" (trip 3, opened at {shown(h['breaker_opened_at'])})\n"
        f"  rate limit:           0.5/s, holding deliveries back at {shown(h['throttled_at'])}\n"
    ) in out
    assert "rate limit:   0.5/s\n" in out

    data = await cli.json("webhooks", "show", str(wid))

    def at(value: Any) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value)

    health = data["health"]
    assert health["consecutive_failures"] == 14 and health["last_error"] == "HTTP 503"
    assert at(health["first_failure_at"]) == h["first_failure_at"]
    assert at(health["last_failure_at"]) == h["last_failure_at"]
    assert at(health["rate_limited_at"]) == h["throttled_at"]
    assert at(health["breaker"]["until"]) == h["breaker_until"]
    assert at(health["breaker"]["opened_at"]) == h["breaker_opened_at"]
    assert health["breaker"]["trips"] == 3


async def test_list_shows_the_success_rate_of_the_last_24_hours(cli: Cli, db: asyncpg.Pool) -> None:
    await add_webhook(db, "https://x.example/", ["a.b"], name="X")
    for _ in range(5):
        await publish(db, "a.b")
    # 3 succeeded, 1 failed, 1 pending; one more success is too old to count.
    await db.execute(
        "UPDATE dispatcher.deliveries SET status = (ARRAY['succeeded', 'succeeded', 'succeeded',"
        " 'failed', 'pending'])[id]::text, finished_at = CASE WHEN id < 5 THEN now() END"
    )
    await publish(db, "a.b")
    await db.execute(
        "UPDATE dispatcher.deliveries SET status = 'succeeded', finished_at = now(),"
        " created_at = now() - interval '25 hours' WHERE id = 6"
    )
    [line] = (await cli.ok("webhooks", "list")).splitlines()[1:]
    assert line.endswith("  5               1           75.0%        ok"), line
    [item] = await cli.json("webhooks", "list")
    assert (item["deliveries_24h"], item["failed_24h"], item["succeeded_24h"]) == (5, 1, 3)
    assert item["success_rate_24h"] == 0.75


# --- the built-in operator event types --------------------------------------------------


async def test_operator_types_are_known_to_a_non_empty_catalog(cli: Cli, db: asyncpg.Pool) -> None:
    await cli.ok("event-types", "add", "order.paid")
    data = await cli.json(
        "webhooks", "add", "--name", "Ops", "--url", "https://ops.example/", "--events",
        "dispatcher.webhook.disabled,order.paid",
    )  # fmt: skip
    assert data["event_types"] == ["dispatcher.webhook.disabled", "order.paid"]
    events = ("webhooks", "events", str(data["id"]))
    out = await cli.ok(*events, "--add", "dispatcher.webhook.failing,dispatcher.webhook.recovered")
    assert out == (
        f"Webhook {data['id']} now receives: dispatcher.webhook.disabled, order.paid,"
        " dispatcher.webhook.failing, dispatcher.webhook.recovered\n"
    )
    # A typo still is one.
    result = await cli(*events, "--add", "dispatcher.webhook.disable")
    assert result.exit_code == 1
    assert "unknown event type dispatcher.webhook.disable" in result.output
    # They are built in, not catalog rows.
    assert await db.fetchval("SELECT array_agg(name) FROM dispatcher.event_types") == ["order.paid"]
    assert [t["name"] for t in await cli.json("event-types", "list")] == ["order.paid"]
    listed = await cli.ok("event-types", "list")
    assert listed.endswith(
        "Built in, published by the daemon; a webhook gets them only by naming them:\n"
        "NAME                          WEBHOOKS\n"
        "dispatcher.webhook.disabled   1\n"
        "dispatcher.webhook.failing    1\n"
        "dispatcher.webhook.recovered  1\n"
    )


async def test_operator_types_cannot_be_added_or_removed(cli: Cli, db: asyncpg.Pool) -> None:
    for name in OPERATOR_TYPES:
        assert_error(
            await cli("event-types", "add", name),
            f"event type {name} is built in: webhooks may always subscribe to it",
        )
        assert_error(
            await cli("event-types", "remove", name),
            f"event type {name} is built in and cannot be removed",
        )
    assert await db.fetchval("SELECT count(*) FROM dispatcher.event_types") == 0


# --- why an attempt's retry is when it is ---------------------------------------------------


@pytest.mark.parametrize(
    ("retry_in_s", "reason", "text"),
    [
        (120.0, "retry_after", "retry in 120 s (Retry-After)"),
        (10.0, "throttle", "retry in 10 s (throttle minimum)"),
        (0.0, "schedule", "retry in 0 s (policy)"),
        (2.5, "schedule", "retry in 2.5 s (policy)"),
        (3600.0, "retry_after", "retry in 3,600 s (Retry-After)"),
        (None, "gone", "final (410 Gone, webhook disabled)"),
        (None, "exhausted", "final (no attempts left)"),
        (None, "not_retryable", "final (not retryable)"),
        (None, None, ""),
    ],
)
def test_retry_text(retry_in_s: float | None, reason: str | None, text: str) -> None:
    assert retry_text(retry_in_s, reason) == text


async def test_deliveries_show_says_why_each_retry_is_when_it_is(
    cli: Cli, db: asyncpg.Pool
) -> None:
    await add_webhook(db, "https://crm.example/in", ["a.b"])
    await publish(db, "a.b")
    await db.execute(
        "INSERT INTO dispatcher.attempts (delivery_id, attempt, started_at, duration_ms,"
        " response_status, error_kind, error_message, retry_in_s, retry_reason)"
        " VALUES (1, 1, now(), 3, 429, 'status', 'HTTP 429', 120, 'retry_after'),"
        "        (1, 2, now(), 3, 503, 'status', 'HTTP 503', 10, 'throttle'),"
        "        (1, 3, now(), 3, 410, 'status', 'HTTP 410', NULL, 'gone')"
    )
    out = await cli.ok("deliveries", "show", "1")
    lines = [line for line in out.splitlines() if line.startswith(("1 ", "2 ", "3 "))]
    assert [line.rstrip().endswith(end) for line, end in zip(lines, (
        "retry in 120 s (Retry-After)",
        "retry in 10 s (throttle minimum)",
        "final (410 Gone, webhook disabled)",
    ), strict=True)] == [True, True, True], out  # fmt: skip
    shown = await cli.json("deliveries", "show", "1")
    assert [(a["retry_in_s"], a["retry_reason"]) for a in shown["attempts_log"]] == [
        (120.0, "retry_after"),
        (10.0, "throttle"),
        (None, "gone"),
    ]


async def test_only_the_daemon_publishes_operator_types(
    cli: Cli, db: asyncpg.Pool, receiver: Receiver
) -> None:
    wid, _ = await add_webhook(db, receiver.url + "/ops", ["dispatcher.webhook.disabled"])
    result = await cli("events", "publish", "dispatcher.webhook.disabled", "--data", "{}")
    assert_error(
        result,
        "event type dispatcher.webhook.disabled is reserved: only the daemon publishes"
        " dispatcher.* operator events (try an operations webhook with"
        " `dispatcher webhooks test ID --event-type dispatcher.webhook.disabled`)",
    )
    assert await db.fetchval("SELECT count(*) FROM dispatcher.events") == 0
    # What the message suggests works: a signed test event of that type, to that webhook only.
    await cli.ok("webhooks", "test", str(wid), "--event-type", "dispatcher.webhook.disabled")
    [request] = receiver.requests
    assert orjson.loads(request.body)["type"] == "dispatcher.webhook.disabled"
