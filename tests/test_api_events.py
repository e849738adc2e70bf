"""The event-type and events API: the catalog, idempotent publishing, reading, resending."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from dispatcher.web.api_events import IDEMPOTENCY_NAMESPACE
from tests.api_support import Api
from tests.conftest import Cli, WebApp, add_webhook, deliver_all, fast_settings

V1 = "/api/v1"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def api(web_app: WebApp) -> Api:
    return Api(web_app)


async def count(db: asyncpg.Pool, table: str) -> int:
    n: int = await db.fetchval(f"SELECT count(*) FROM dispatcher.{table}")
    return n


# --- the event-type catalog -----------------------------------------------------------------


async def test_event_types_add_list_remove(api: Api, db: asyncpg.Pool, cli: Cli) -> None:
    listed = await api.ok("GET", f"{V1}/event-types")
    assert listed["event_types"] == []
    assert [t["name"] for t in listed["builtin_event_types"]] == [
        "dispatcher.webhook.disabled",
        "dispatcher.webhook.failing",
        "dispatcher.webhook.recovered",
    ]
    added = await api.ok(
        "POST",
        f"{V1}/event-types",
        {"name": "order.paid", "description": "Paid", "sample": {"order": 1}},
        status=201,
    )
    assert (added["name"], added["sample"], added["webhooks"]) == ("order.paid", {"order": 1}, 0)
    await add_webhook(db, "https://x.example/", ["order.paid"])
    listed = (await api.ok("GET", f"{V1}/event-types"))["event_types"]
    assert [(t["name"], t["description"], t["webhooks"]) for t in listed] == [
        ("order.paid", "Paid", 1)
    ]
    assert "order.paid" in await cli.ok("event-types", "list")

    reply = await api.problem("POST", f"{V1}/event-types", {"name": "order.paid"}, status=409)
    assert "already in the catalog" in reply.detail
    assert (await api.call("DELETE", f"{V1}/event-types/order.paid")).status == 204
    await api.problem("DELETE", f"{V1}/event-types/order.paid", status=404)
    assert await count(db, "event_types") == 0


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, "'name' is required"),
        ({"name": "nodot"}, "invalid event type"),
        ({"name": "*"}, "invalid event type"),
        ({"name": 3}, "'name' must be a string"),
        ({"name": "a.b\u0000"}, "invalid event type"),
        ({"name": "a.b", "description": "\u0000"}, "\\u0000"),
        ({"name": "a.b", "sample": {"k": "\u0000"}}, "\\u0000"),
        ({"name": "a.b", "extra": 1}, "unknown field 'extra'"),
    ],
)
async def test_event_type_add_rejects_hostile_bodies(
    api: Api, db: asyncpg.Pool, body: Any, words: str
) -> None:
    reply = await api.problem("POST", f"{V1}/event-types", body)
    assert words in reply.detail
    assert await count(db, "event_types") == 0


@pytest.mark.parametrize("name", ["nodot", "a%20b", "%00", "x" * 3000, "*"])
async def test_removing_a_name_the_catalog_cannot_hold_is_a_404(api: Api, name: str) -> None:
    await api.problem("DELETE", f"{V1}/event-types/{name}", status=404)


# --- publishing -----------------------------------------------------------------------------


async def test_publish_creates_once_per_message_id(api: Api, db: asyncpg.Pool) -> None:
    await add_webhook(db, "https://x.example/", ["order.paid"])
    message_id = str(uuid.uuid4())
    body = {"event_type": "order.paid", "data": {"order": 1}, "message_id": message_id}

    first = await api.call("POST", f"{V1}/events", body)
    assert first.status == 201
    assert first.body == {"message_id": message_id, "created": True, "deliveries": 1}
    assert first.headers["Location"] == f"{V1}/events/{message_id}"
    again = await api.call("POST", f"{V1}/events", {**body, "data": {"order": 1.0}})
    assert again.status == 200
    assert again.body == {"message_id": message_id, "created": False, "deliveries": 1}
    assert await count(db, "events") == await count(db, "deliveries") == 1

    reply = await api.problem("POST", f"{V1}/events", {**body, "data": {"order": 2}}, status=409)
    assert reply.body["message_id"] == message_id and "another type or payload" in reply.detail
    await api.problem("POST", f"{V1}/events", {**body, "event_type": "order.sent"}, status=409)
    assert await count(db, "events") == await count(db, "deliveries") == 1


async def test_an_idempotency_key_names_the_same_event_on_retry(api: Api, db: asyncpg.Pool) -> None:
    await add_webhook(db, "https://x.example/", ["*"])
    body = {"event_type": "order.paid", "data": {"order": 1}}
    key = {"Idempotency-Key": "order-1-paid"}

    first = await api.call("POST", f"{V1}/events", body, headers=key)
    retry = await api.call("POST", f"{V1}/events", body, headers=key)
    other = await api.call("POST", f"{V1}/events", body, headers={"Idempotency-Key": "order-2"})

    assert (first.status, retry.status, other.status) == (201, 200, 201)
    expected = str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, "order-1-paid"))
    assert first.body["message_id"] == retry.body["message_id"] == expected
    assert other.body["message_id"] != expected
    assert await count(db, "events") == await count(db, "deliveries") == 2
    changed = await api.call("POST", f"{V1}/events", {**body, "data": {"order": 9}}, headers=key)
    assert changed.status == 409
    both = await api.call("POST", f"{V1}/events", {**body, "message_id": expected}, headers=key)
    assert both.status == 422 and both.body["field"] == "message_id"
    for bad in ("", " ", "x" * 256, "a\tb"):
        reply = await api.call("POST", f"{V1}/events", body, headers={"Idempotency-Key": bad})
        assert (reply.status, reply.body["field"]) == (422, "Idempotency-Key"), bad


async def test_publish_keeps_every_digit_and_reads_back(api: Api, db: asyncpg.Pool) -> None:
    raw = b'{"event_type": "n.big", "data": {"big": 1e400, "exact": 0.10000000000000000001}}'
    reply = await api.call("POST", f"{V1}/events", data=raw, headers=JSON)
    assert reply.status == 201, reply.body
    event = await api.call("GET", f"{V1}/events/{reply.body['message_id']}")
    assert b'"exact": 0.10000000000000000001' in event.raw
    assert b'"big": 1' + b"0" * 400 in event.raw
    assert event.body["event_type"] == "n.big" and event.body["deliveries"] == []


async def test_publish_honours_the_catalog_like_the_cli(api: Api, cli: Cli) -> None:
    await cli.ok("event-types", "add", "known.type")
    reply = await api.problem("POST", f"{V1}/events", {"event_type": "nope.type", "data": {}})
    assert reply.body["field"] == "event_type" and "allow_unknown" in reply.detail
    await api.ok(
        "POST",
        f"{V1}/events",
        {"event_type": "nope.type", "data": {}, "allow_unknown": True},
        status=201,
    )


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"data": {}}, 422, "'event_type' is required"),
        ({"event_type": "a.b"}, 422, "'data' is required"),
        ({"event_type": "nodot", "data": {}}, 422, "invalid event type"),
        ({"event_type": "*", "data": {}}, 422, "invalid event type"),
        ({"event_type": ["a.b"], "data": {}}, 422, "must be a string"),
        ({"event_type": "a.b\u0000", "data": {}}, 422, "invalid event type"),
        ({"event_type": "a.b", "data": {"k\u0000": 1}}, 422, "\\u0000"),
        ({"event_type": "a.b", "data": {}, "message_id": "not-a-uuid"}, 422, "UUID"),
        ({"event_type": "a.b", "data": {}, "message_id": 5}, 422, "must be a string"),
        ({"event_type": "a.b", "data": {}, "allow_unknown": 1}, 422, "true or false"),
        ({"event_type": "a.b", "data": {}, "webhook_id": 1}, 422, "unknown field"),
    ],
)
async def test_publish_rejects_hostile_bodies(
    api: Api, db: asyncpg.Pool, body: Any, status: int, words: str
) -> None:
    reply = await api.problem("POST", f"{V1}/events", body, status=status)
    assert words in reply.detail
    assert await count(db, "events") == 0


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"event_type": "a.b", "data": NaN}', 400),
        (b'{"event_type": "a.b", "data": -Infinity}', 400),
        (b'{"event_type": "a.b", "data": {"n": 1e999999}}', 422),
        (b'{"event_type": "a.b", "data": "\\ud800"}', 422),
        (b'{"event_type": "a.b", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400),
        (b'{"event_type": "a.b", "data": {}', 400),
    ],
)
async def test_publish_rejects_json_jsonb_cannot_hold(
    api: Api, db: asyncpg.Pool, raw: bytes, status: int
) -> None:
    await api.problem("POST", f"{V1}/events", data=raw, headers=JSON, status=status)
    assert await count(db, "events") == 0


async def test_a_payload_over_the_limit_is_refused(api: Api, db: asyncpg.Pool) -> None:
    await db.execute("UPDATE dispatcher.limits SET value = 1024 WHERE name = 'max_payload_bytes'")
    reply = await api.problem("POST", f"{V1}/events", {"event_type": "a.b", "data": "x" * 2000})
    assert "max_payload_bytes" in reply.detail


# --- reading and resending ------------------------------------------------------------------


async def test_get_event_with_its_deliveries(api: Api, db: asyncpg.Pool, dsn: str) -> None:
    wid, _ = await add_webhook(db, "https://x.example/", ["a.b"])
    published = await api.ok(
        "POST", f"{V1}/events", {"event_type": "a.b", "data": [1, "two"]}, status=201
    )
    event = await api.ok("GET", f"{V1}/events/{published['message_id']}")
    assert (event["data"], event["created_at"][-1]) == ([1, "two"], "Z")
    assert [(d["webhook_id"], d["kind"], d["status"]) for d in event["deliveries"]] == [
        (wid, "event", "pending")
    ]
    for bad in ("nope", "1", str(uuid.uuid4()), "%00"):
        await api.problem("GET", f"{V1}/events/{bad}", status=404)


async def test_resend_an_event(api: Api, db: asyncpg.Pool, cli: Cli) -> None:
    wid, _ = await add_webhook(db, "https://x.example/", ["a.b"])
    other, _ = await add_webhook(db, "https://y.example/", ["c.d"])
    published = await api.ok("POST", f"{V1}/events", {"event_type": "a.b", "data": {}}, status=201)
    path = f"{V1}/events/{published['message_id']}/resend"

    resent = await api.ok("POST", path)
    assert [d["webhook_id"] for d in resent["deliveries"]] == [wid]
    resent = await api.ok("POST", path, {"webhook_id": other})
    assert [d["webhook_id"] for d in resent["deliveries"]] == [other]
    shown = await cli.json("deliveries", "show", str(resent["deliveries"][0]["id"]))
    assert shown["kind"] == "resend"

    await api.problem("POST", path, {"webhook_id": 999}, status=404)
    await cli.ok("webhooks", "disable", str(other))
    assert "disabled" in (await api.problem("POST", path, {"webhook_id": other})).detail
    for bad in (0, -1, 1.5, 2**63, "1", True, None, [1]):
        reply = await api.problem("POST", path, {"webhook_id": bad})
        assert reply.body["field"] == "webhook_id", bad
    for raw in (b'{"webhook_id": 99999999999999999999999}', b'{"webhook_id": 1e400}'):
        reply = await api.problem("POST", path, data=raw, headers=JSON)
        assert reply.body["field"] == "webhook_id", raw
    await api.problem("POST", f"{V1}/events/{uuid.uuid4()}/resend", status=404)


async def test_a_read_only_token_reads_events_but_cannot_publish(
    api: Api, web_app: WebApp, db: asyncpg.Pool
) -> None:
    published = await api.ok("POST", f"{V1}/events", {"event_type": "a.b", "data": {}}, status=201)
    ro = web_app.read_only_token
    for path in (f"{V1}/event-types", f"{V1}/events/{published['message_id']}"):
        assert (await api.call("GET", path, token=ro)).status == 200
    for method, path, body in [
        ("POST", f"{V1}/events", {"event_type": "a.b", "data": {}}),
        ("POST", f"{V1}/events/{published['message_id']}/resend", {}),
        ("POST", f"{V1}/event-types", {"name": "a.b"}),
        ("DELETE", f"{V1}/event-types/a.b", None),
    ]:
        assert (await api.call(method, path, body, token=ro)).status == 403, path
    assert await count(db, "events") == 1


async def test_published_events_are_delivered(api: Api, db: asyncpg.Pool, dsn: str) -> None:
    await add_webhook(db, "http://127.0.0.1:1/closed", ["a.b"])
    published = await api.ok("POST", f"{V1}/events", {"event_type": "a.b", "data": {}}, status=201)
    await deliver_all(fast_settings(retry_schedule=(0,)), dsn)
    event = await api.ok("GET", f"{V1}/events/{published['message_id']}")
    assert [(d["status"], d["attempts"]) for d in event["deliveries"]] == [("failed", 2)]
