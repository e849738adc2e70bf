"""The API and endpoint health: rate_limit and retry_policy on create and PATCH, why a webhook is
disabled, the health object in every webhook, and the built-in operator event types. Every
response is checked against the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import pytest

from tests.api_support import Api
from tests.conftest import WebApp, add_webhook, publish

V1 = "/api/v1"
OPERATOR_TYPES = [
    "dispatcher.webhook.disabled",
    "dispatcher.webhook.failing",
    "dispatcher.webhook.recovered",
]
HEALTHY = {
    "state": "ok",
    "consecutive_failures": 0,
    "first_failure_at": None,
    "last_failure_at": None,
    "last_error": None,
    "breaker": {"state": "closed", "until": None, "opened_at": None, "trips": 0},
    "rate_limited_at": None,
}


@pytest.fixture
def api(web_app: WebApp) -> Api:
    return Api(web_app)


async def create(api: Api, **fields: Any) -> dict[str, Any]:
    body = {"service_name": "CRM", "url": "https://crm.example/hook", "event_types": ["a.b"]}
    body.update(fields)
    created: dict[str, Any] = await api.ok("POST", f"{V1}/webhooks", body, status=201)
    return created


def at(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


# --- rate_limit and retry_policy --------------------------------------------------------


async def test_create_and_patch_set_and_clear_flow_control(api: Api, db: asyncpg.Pool) -> None:
    webhook = await create(api, rate_limit=2.5, retry_policy="exponential")
    assert (webhook["rate_limit"], webhook["retry_policy"]) == (2.5, "exponential")
    assert webhook["health"] == HEALTHY
    path = f"{V1}/webhooks/{webhook['id']}"
    assert (await api.ok("GET", path))["rate_limit"] == 2.5

    changed = await api.ok("PATCH", path, {"rate_limit": 100000})
    assert (changed["rate_limit"], changed["retry_policy"]) == (100000, "exponential")
    changed = await api.ok("PATCH", path, {"service_name": "New"})
    assert (changed["rate_limit"], changed["retry_policy"]) == (100000, "exponential")
    changed = await api.ok("PATCH", path, {"rate_limit": None, "retry_policy": "schedule"})
    assert (changed["rate_limit"], changed["retry_policy"]) == (None, "schedule")
    changed = await api.ok("PATCH", path, {"retry_policy": None})
    assert (changed["rate_limit"], changed["retry_policy"]) == (None, None)
    row = await db.fetchrow(
        "SELECT w.rate_limit, w.retry_policy, h.rate_limit AS copy FROM dispatcher.webhooks w"
        " JOIN dispatcher.webhook_health h ON h.webhook_id = w.id WHERE w.id = $1",
        webhook["id"],
    )
    assert tuple(row) == (None, None, None)

    plain = await create(api)
    assert (plain["rate_limit"], plain["retry_policy"]) == (None, None)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("rate_limit", 0, "rate_limit must be a number of requests per second greater than 0"),
        ("rate_limit", -1, "greater than 0 and at most 100000, or null for no limit; got -1"),
        ("rate_limit", 100001, "at most 100000"),
        ("rate_limit", "5", 'got "5"'),
        ("rate_limit", True, "greater than 0"),
        ("retry_policy", "linear", "retry_policy must be schedule or exponential, or null"),
        ("retry_policy", 3, "got 3"),
    ],
)
async def test_bad_flow_control_is_a_422_naming_the_field(
    api: Api, db: asyncpg.Pool, field: str, value: Any, words: str
) -> None:
    body = {"service_name": "X", "url": "https://x.example/", "event_types": ["a.b"], field: value}
    reply = await api.problem("POST", f"{V1}/webhooks", body)
    assert reply.body["field"] == field and words in reply.detail, reply.detail
    webhook = await create(api)
    reply = await api.problem("PATCH", f"{V1}/webhooks/{webhook['id']}", {field: value})
    assert reply.body["field"] == field and words in reply.detail, reply.detail
    assert await db.fetchval("SELECT count(*) FROM dispatcher.webhooks") == 1


async def test_a_rate_limit_beyond_a_double_is_refused(api: Api) -> None:
    body = b'{"service_name": "X", "url": "https://x.example/", "event_types": ["a.b"],'
    reply = await api.call(
        "POST",
        f"{V1}/webhooks",
        data=body + b' "rate_limit": 1e400}',
        headers={"Content-Type": "application/json"},
    )
    assert (reply.status, reply.body["field"]) == (422, "rate_limit")


# --- disable and enable -----------------------------------------------------------------


async def test_disable_records_manual_and_enable_resets_health(api: Api, db: asyncpg.Pool) -> None:
    webhook = await create(api)
    path = f"{V1}/webhooks/{webhook['id']}"
    await db.execute(
        "UPDATE dispatcher.webhook_health SET consecutive_failures = 11,"
        " first_failure_at = now() - interval '2 days', last_failure_at = now(),"
        " last_error = 'connect: refused', breaker_failures = 11,"
        " breaker_until = now() + interval '1 minute', breaker_opened_at = now(),"
        " breaker_trips = 2, failing_since = now() - interval '1 day' WHERE webhook_id = $1",
        webhook["id"],
    )
    disabled = await api.ok("POST", f"{path}/disable")
    stored = await db.fetchval(
        "SELECT disabled_at FROM dispatcher.webhooks WHERE id = $1", webhook["id"]
    )
    assert (disabled["status"], disabled["disabled_reason"]) == ("disabled", "manual")
    assert at(disabled["disabled_at"]) == stored and disabled["cancelled"] == 0
    assert disabled["health"]["state"] == "disabled"
    assert disabled["health"]["breaker"]["state"] == "open"
    assert (await api.ok("GET", path))["disabled_reason"] == "manual"

    enabled = await api.ok("POST", f"{path}/enable")
    assert (enabled["status"], enabled["disabled_reason"], enabled["disabled_at"]) == (
        "active",
        None,
        None,
    )
    last_failure = enabled["health"]["last_failure_at"]
    assert enabled["health"] == {
        **HEALTHY,
        "last_failure_at": last_failure,
        "last_error": "connect: refused",
    }
    assert last_failure is not None
    row = await db.fetchrow(
        "SELECT consecutive_failures, first_failure_at, breaker_failures, breaker_until,"
        " breaker_opened_at, breaker_trips, probe_delivery_id, failing_since"
        " FROM dispatcher.webhook_health WHERE webhook_id = $1",
        webhook["id"],
    )
    assert tuple(row) == (0, None, 0, None, None, 0, None, None)


# --- health as shown --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "state", "breaker"),
    [
        ("SELECT $1::bigint", "ok", "closed"),
        (
            "UPDATE dispatcher.webhook_health SET consecutive_failures = 2,"
            " first_failure_at = now() - interval '1 hour' WHERE webhook_id = $1",
            "failing",
            "closed",
        ),
        (
            "UPDATE dispatcher.webhook_health SET consecutive_failures = 10,"
            " first_failure_at = now(), breaker_until = now() + interval '30 seconds',"
            " breaker_opened_at = now(), breaker_trips = 1 WHERE webhook_id = $1",
            "breaker_open",
            "open",
        ),
        (
            "UPDATE dispatcher.webhook_health SET breaker_until = now() - interval '1 second',"
            " breaker_opened_at = now() - interval '31 seconds', breaker_trips = 1"
            " WHERE webhook_id = $1",
            "ok",
            "half-open",
        ),
        (
            "UPDATE dispatcher.webhook_health SET throttled_at = now() WHERE webhook_id = $1",
            "rate_limited",
            "closed",
        ),
        (
            "UPDATE dispatcher.webhooks SET status = 'disabled', disabled_reason = 'gone',"
            " disabled_at = now() WHERE id = $1",
            "disabled",
            "closed",
        ),
    ],
)
async def test_every_webhook_object_carries_the_same_health(
    api: Api, db: asyncpg.Pool, sql: str, state: str, breaker: str
) -> None:
    webhook = await create(api)
    await db.execute(sql, webhook["id"])
    got = await api.ok("GET", f"{V1}/webhooks/{webhook['id']}")
    [listed] = (await api.ok("GET", f"{V1}/webhooks"))["webhooks"]
    patched = await api.ok("PATCH", f"{V1}/webhooks/{webhook['id']}", {"description": "d"})
    assert (got["health"]["state"], got["health"]["breaker"]["state"]) == (state, breaker)
    assert listed["health"] == got["health"] == patched["health"]


async def test_list_has_the_success_rate_of_the_last_24_hours(api: Api, db: asyncpg.Pool) -> None:
    idle = await create(api, service_name="Idle", event_types=["x.y"])
    busy = await create(api, service_name="Busy")
    for _ in range(4):
        await publish(db, "a.b")
    await db.execute(
        "UPDATE dispatcher.deliveries SET finished_at = now(),"
        " status = CASE WHEN id = 1 THEN 'failed' ELSE 'succeeded' END"
    )
    listed = (await api.ok("GET", f"{V1}/webhooks"))["webhooks"]
    figures = [
        (w["id"], w["deliveries_24h"], w["failed_24h"], w["succeeded_24h"], w["success_rate_24h"])
        for w in listed
    ]
    assert figures == [(idle["id"], 0, 0, 0, None), (busy["id"], 4, 1, 3, 0.75)]


# --- the built-in operator event types --------------------------------------------------


async def test_operator_types_are_built_in(api: Api, db: asyncpg.Pool) -> None:
    await api.ok("POST", f"{V1}/event-types", {"name": "order.paid"}, status=201)
    webhook = await create(api, event_types=["dispatcher.webhook.disabled"])
    assert webhook["event_types"] == ["dispatcher.webhook.disabled"]
    changed = await api.ok(
        "PATCH",
        f"{V1}/webhooks/{webhook['id']}",
        {"add_event_types": ["dispatcher.webhook.failing", "order.paid"]},
    )
    assert changed["event_types"] == [
        "dispatcher.webhook.disabled",
        "dispatcher.webhook.failing",
        "order.paid",
    ]
    reply = await api.problem("POST", f"{V1}/webhooks", {
        "service_name": "X", "url": "https://x.example/", "event_types": ["dispatcher.webhook.x"]
    })  # fmt: skip
    assert reply.body["unknown_event_types"] == ["dispatcher.webhook.x"]

    listed = await api.ok("GET", f"{V1}/event-types")
    assert [t["name"] for t in listed["event_types"]] == ["order.paid"]
    assert [(t["name"], t["webhooks"]) for t in listed["builtin_event_types"]] == [
        ("dispatcher.webhook.disabled", 1),
        ("dispatcher.webhook.failing", 1),
        ("dispatcher.webhook.recovered", 0),
    ]
    assert all(t["description"] for t in listed["builtin_event_types"])

    for name in OPERATOR_TYPES:
        reply = await api.problem("POST", f"{V1}/event-types", {"name": name}, status=409)
        assert "is built in" in reply.detail
        reply = await api.problem("DELETE", f"{V1}/event-types/{name}")
        assert "is built in and cannot be removed" in reply.detail
    assert await db.fetchval("SELECT count(*) FROM dispatcher.event_types") == 1


async def test_a_webhook_added_in_sql_shows_health_too(api: Api, db: asyncpg.Pool) -> None:
    wid, _ = await add_webhook(db, "https://x.example/", ["a.b"])
    got = await api.ok("GET", f"{V1}/webhooks/{wid}")
    assert got["health"] == HEALTHY and got["disabled_reason"] is None


async def test_only_the_daemon_publishes_operator_types(api: Api, db: asyncpg.Pool) -> None:
    body = {"event_type": "dispatcher.webhook.failing", "data": {}}
    reply = await api.problem("POST", f"{V1}/events", body)
    assert "reserved" in reply.detail and "dispatcher.webhook.failing" in reply.detail
    assert await db.fetchval("SELECT count(*) FROM dispatcher.events") == 0
