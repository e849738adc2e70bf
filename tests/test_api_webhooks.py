"""The webhooks API over real HTTP and PostgreSQL; every response is checked against OpenAPI."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from tests.api_support import Api
from tests.conftest import Cli, Receiver, WebApp, add_webhook, deliver_all, fast_settings, publish

V1 = "/api/v1"
MAX_ID = 2**63 - 1


@pytest.fixture
def api(web_app: WebApp) -> Api:
    return Api(web_app)


async def create(api: Api, **fields: Any) -> dict[str, Any]:
    body = {"service_name": "CRM", "url": "https://crm.example/hook", "event_types": ["a.b"]}
    body.update(fields)
    created: dict[str, Any] = await api.ok("POST", f"{V1}/webhooks", body, status=201)
    # Only a create or update answer carries warnings; the rest is what GET returns.
    assert created.pop("warnings") == []
    return created


# --- the success paths ------------------------------------------------------------------


async def test_create_then_get_and_list(api: Api, db: asyncpg.Pool) -> None:
    reply = await api.call(
        "POST",
        f"{V1}/webhooks",
        {
            "service_name": "  CRM  ",
            "url": "https://crm.example/hook",
            "description": "CRM sync",
            "event_types": ["customer.created", "customer.updated", "customer.created"],
        },
    )
    assert reply.status == 201
    webhook = reply.body
    assert reply.headers["Location"] == f"{V1}/webhooks/{webhook['id']}"
    assert webhook["service_name"] == "CRM"  # trimmed, as the CLI does
    assert webhook["event_types"] == ["customer.created", "customer.updated"]
    assert webhook["status"] == "active" and webhook["created_at"].endswith("Z")
    assert "secret" not in webhook
    assert webhook.pop("warnings") == []

    assert await api.ok("GET", f"{V1}/webhooks/{webhook['id']}") == webhook
    await publish(db, "customer.created")
    listed = (await api.ok("GET", f"{V1}/webhooks"))["webhooks"]
    assert [(w["id"], w["deliveries_24h"], w["failed_24h"]) for w in listed] == [
        (webhook["id"], 1, 0)
    ]
    assert all("secret" not in w for w in listed)


async def test_create_and_patch_warn_when_the_daemon_would_refuse_the_address(api: Api) -> None:
    # The test settings allow 127.0.0.0/8 only; 10.0.0.0/8 is private, so refused.
    body = {"service_name": "Intranet", "url": "http://10.1.2.3/hook", "event_types": ["a.b"]}
    webhook = await api.ok("POST", f"{V1}/webhooks", body, status=201)
    assert len(webhook["warnings"]) == 1
    assert "10.1.2.3" in webhook["warnings"][0] and "allowed_networks" in webhook["warnings"][0]
    path = f"{V1}/webhooks/{webhook['id']}"
    assert (await api.ok("PATCH", path, {"url": "http://127.0.0.1:9/h"}))["warnings"] == []
    assert len((await api.ok("PATCH", path, {"url": "http://[::1]/h"}))["warnings"]) == 1
    assert "warnings" not in await api.ok("GET", path)


async def test_patch_changes_fields_and_types_in_one_request(api: Api) -> None:
    webhook = await create(api, event_types=["a.b", "c.d"])
    path = f"{V1}/webhooks/{webhook['id']}"

    changed = await api.ok(
        "PATCH",
        path,
        {"url": "https://new.example/h", "add_event_types": ["e.f"], "remove_event_types": ["a.b"]},
    )
    assert (changed["url"], changed["service_name"]) == ("https://new.example/h", "CRM")
    assert changed["event_types"] == ["c.d", "e.f"]
    replaced = await api.ok("PATCH", path, {"event_types": ["*"], "description": "all"})
    assert (replaced["event_types"], replaced["description"]) == (["*"], "all")


async def test_a_patch_that_fails_halfway_changes_nothing(api: Api) -> None:
    webhook = await create(api)
    path = f"{V1}/webhooks/{webhook['id']}"
    reply = await api.problem("PATCH", path, {"url": "https://ok.example/", "event_types": []})
    assert "the event type list is empty" in reply.detail
    assert (await api.ok("GET", path))["url"] == webhook["url"]


async def test_secret_rotation_and_grace(api: Api) -> None:
    webhook = await create(api)
    path = f"{V1}/webhooks/{webhook['id']}"
    first = await api.ok("GET", path + "/secret")
    assert first["secret"].startswith("whsec_") and first["previous_secret"] is None

    rotated = await api.ok("POST", path + "/rotate-secret", {"grace_s": 3600})
    assert rotated["previous_secret_expires_at"] is not None and "secret" not in rotated
    second = await api.ok("GET", path + "/secret")
    assert second["previous_secret"] == first["secret"] != second["secret"]

    await api.ok("POST", path + "/rotate-secret", {"grace_s": 0})
    third = await api.ok("GET", path + "/secret")
    assert third["previous_secret"] is None and third["previous_secret_expires_at"] is None
    # No body means the default grace period, 24 hours.
    assert (await api.ok("POST", path + "/rotate-secret"))["previous_secret_expires_at"]
    for grace in (-1, 7 * 86400 + 1, "8d", "soon", True, None):
        reply = await api.problem("POST", path + "/rotate-secret", {"grace_s": grace})
        assert "grace" in reply.detail


async def test_disable_cancels_pending_enable_and_delete(api: Api, db: asyncpg.Pool) -> None:
    webhook = await create(api)
    path = f"{V1}/webhooks/{webhook['id']}"
    await publish(db, "a.b")
    await publish(db, "a.b")

    disabled = await api.ok("POST", path + "/disable")
    assert (disabled["status"], disabled["cancelled"]) == ("disabled", 2)
    assert (await api.ok("POST", path + "/disable"))["cancelled"] == 0
    assert (await api.ok("POST", path + "/enable"))["status"] == "active"

    await publish(db, "a.b")
    assert await api.ok("DELETE", path) == {"id": webhook["id"], "deleted": True, "cancelled": 1}
    await api.problem("GET", path, status=404)
    await api.problem("DELETE", path, status=404)


async def test_failures_lists_failed_attempts(
    api: Api, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    async def refuse(request: web.Request, rec: Receiver) -> web.StreamResponse:
        return web.Response(status=503, text="down")

    receiver.handler = refuse
    webhook = await create(api, url=receiver.url + "/hook")
    await publish(db, "a.b")
    await deliver_all(fast_settings(retry_schedule=(0,)), dsn)
    failures = (await api.ok("GET", f"{V1}/webhooks/{webhook['id']}/failures?limit=1"))["failures"]
    assert len(failures) == 1 and failures[0]["response_status"] == 503
    await api.problem("GET", f"{V1}/webhooks/{webhook['id']}/failures?limit=0")
    await api.problem("GET", f"{V1}/webhooks/999/failures", status=404)


async def test_test_event_reaches_the_receiver_signed(
    api: Api, receiver: Receiver, db: asyncpg.Pool
) -> None:
    async def answer(request: web.Request, rec: Receiver) -> web.StreamResponse:
        return web.Response(status=202, text="thanks", headers={"X-Receiver": "yes"})

    receiver.handler = answer
    webhook = await create(api, url=receiver.url + "/hook", event_types=["order.paid"])
    secret = (await api.ok("GET", f"{V1}/webhooks/{webhook['id']}/secret"))["secret"]

    reply = await api.call(
        "POST",
        f"{V1}/webhooks/{webhook['id']}/test",
        data=b'{"data": {"order": 7, "total": 1.10}}',
        headers={"Content-Type": "application/json"},
    )
    assert reply.status == 200
    result = reply.body

    assert len(receiver.requests) == 1
    got = receiver.requests[0]
    assert got.body.decode() == result["request"]["body"]
    assert '"data":{"order": 7, "total": 1.10}' in got.body.decode()  # every digit kept
    signed = f"{got.headers['webhook-id']}.{got.headers['webhook-timestamp']}.".encode() + got.body
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert f"v1,{expected}" in got.headers["webhook-signature"].split()
    assert result["event_type"] == "order.paid" and result["delivered"] is True
    assert (result["response"]["status"], result["response"]["body"]) == (202, "thanks")
    assert result["response"]["headers"]["X-Receiver"] == "yes"
    assert secret not in str(result)  # the secret header is masked
    delivery = await api.ok("GET", f"{V1}/deliveries/{result['delivery_id']}")
    assert (delivery["kind"], delivery["status"]) == ("test", "succeeded")


async def test_test_event_to_a_failing_endpoint_is_still_a_200(api: Api) -> None:
    webhook = await create(api, url="http://127.0.0.1:1/closed")
    result = await api.ok("POST", f"{V1}/webhooks/{webhook['id']}/test", {"event_type": "x.y"})
    assert result["delivered"] is False and result["response"]["status"] is None
    assert result["error_kind"]
    await api.problem("POST", f"{V1}/webhooks/{webhook['id']}/test", {"event_type": "*"})
    await api.problem("POST", f"{V1}/webhooks/{webhook['id']}/test", {"data": "\u0000"})


# --- the CLI and the API see each other's changes -------------------------------------------


async def test_the_cli_and_the_api_share_one_store(api: Api, cli: Cli) -> None:
    webhook = await create(api, service_name="From API")
    shown = await cli.json("webhooks", "show", str(webhook["id"]))
    assert (shown["service_name"], shown["url"]) == ("From API", webhook["url"])
    secret = (await api.ok("GET", f"{V1}/webhooks/{webhook['id']}/secret"))["secret"]
    assert shown["secret"] == secret

    added = await cli.json(
        "webhooks", "add", "--name", "From CLI", "--url", "https://cli.example/", "--events", "x.y"
    )
    assert (await api.ok("GET", f"{V1}/webhooks/{added['id']}"))["service_name"] == "From CLI"
    await cli.ok("webhooks", "disable", str(added["id"]))
    assert (await api.ok("GET", f"{V1}/webhooks/{added['id']}"))["status"] == "disabled"


async def test_the_catalog_rule_is_the_clis(api: Api, cli: Cli) -> None:
    await cli.ok("event-types", "add", "known.type")
    reply = await api.problem(
        "POST", f"{V1}/webhooks", _new(event_types=["known.type", "nope.type"])
    )
    assert reply.body["field"] == "event_types"
    assert reply.body["unknown_event_types"] == ["nope.type"]
    assert '"allow_unknown": true' in reply.detail
    allowed = await api.ok(
        "POST", f"{V1}/webhooks", _new(event_types=["nope.type"], allow_unknown=True), 201
    )
    reply = await api.problem(
        "PATCH", f"{V1}/webhooks/{allowed['id']}", {"add_event_types": ["other.type"]}
    )
    assert reply.body["unknown_event_types"] == ["other.type"]


def _new(**fields: Any) -> dict[str, Any]:
    return {"service_name": "n", "url": "https://x.example/", "event_types": ["a.b"], **fields}


# --- read-only tokens and credentials -----------------------------------------------------


async def test_a_read_only_token_reads_everything_but_the_secret(api: Api, web_app: WebApp) -> None:
    webhook = await create(api)
    path = f"{V1}/webhooks/{webhook['id']}"
    ro = web_app.read_only_token
    for read in (f"{V1}/webhooks", path, path + "/failures"):
        assert (await api.call("GET", read, token=ro)).status == 200, read
    reply = await api.problem("GET", path + "/secret", token=ro, status=403)
    assert "read-only" in reply.detail and "whsec_" not in str(reply.body)
    for method, target, body in [
        ("POST", f"{V1}/webhooks", _new()),
        ("PATCH", path, {"url": "https://evil.example/"}),
        ("POST", path + "/rotate-secret", {}),
        ("POST", path + "/disable", {}),
        ("POST", path + "/enable", {}),
        ("POST", path + "/test", {}),
        ("DELETE", path, None),
    ]:
        reply = await api.call(method, target, body, token=ro)
        assert reply.status == 403, (method, target, reply.body)
    assert await api.ok("GET", path) == webhook


async def test_no_token_is_a_401_problem(api: Api) -> None:
    reply = await api.problem("GET", f"{V1}/webhooks", token=None, status=401)
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


# --- hostile input: never a 500 -----------------------------------------------------------


BAD_CREATES: list[tuple[Any, int, str]] = [
    ({}, 422, "service_name"),
    ([], 422, "JSON object"),
    ("x", 422, "JSON object"),
    (None, 422, "JSON object"),
    (_new(service_name=None), 422, "service_name"),
    (_new(service_name=5), 422, "service_name"),
    (_new(service_name=""), 422, "service name"),
    (_new(service_name="a\u0000b"), 422, "\\u0000"),
    (_new(service_name="n" * 201), 422, "200 characters"),
    (_new(url="ftp://x.example/"), 422, "scheme"),
    (_new(url="https://u:p@x.example/"), 422, "user-info"),
    (_new(url="https://x.example/\u0000"), 422, "\\u0000"),
    (_new(url="https://" + "a" * 3000), 422, "2048"),
    (_new(url=["https://x.example/"]), 422, "url"),
    (_new(event_types="a.b"), 422, "event_types"),
    (_new(event_types=[]), 422, "empty"),
    (_new(event_types=["a.b", 7]), 422, "event_types"),
    (_new(event_types=["nodot"]), 422, "invalid event type"),
    (_new(event_types=["a.b\u0000"]), 422, "invalid event type"),
    (_new(description=7), 422, "description"),
    (_new(description="\u0000"), 422, "\\u0000"),
    (_new(allow_unknown="yes"), 422, "allow_unknown"),
    (_new(name="typo"), 422, "unknown field 'name'"),
]


@pytest.mark.parametrize(("body", "status", "words"), BAD_CREATES)
async def test_create_rejects_hostile_bodies(
    api: Api, db: asyncpg.Pool, body: Any, status: int, words: str
) -> None:
    reply = await api.problem("POST", f"{V1}/webhooks", body, status=status)
    assert words in reply.detail, reply.detail
    assert await db.fetchval("SELECT count(*) FROM dispatcher.webhooks") == 0


@pytest.mark.parametrize(
    ("data", "headers", "status"),
    [
        (b"{", {"Content-Type": "application/json"}, 400),
        (b'{"service_name": NaN}', {"Content-Type": "application/json"}, 400),
        (b'{"service_name": Infinity}', {"Content-Type": "application/json"}, 400),
        (b"\xff\xfe", {"Content-Type": "application/json"}, 400),
        (b"[" * 100000, {"Content-Type": "application/json"}, 400),
        (b'{"a": 1}', {"Content-Type": "text/plain"}, 415),
        (b'"\\ud800"', {"Content-Type": "application/json"}, 422),
        (
            b'{"service_name": "\\ud800", "url": "https://x.example/", "event_types": ["a.b"]}',
            {"Content-Type": "application/json"},
            422,
        ),
    ],
)
async def test_create_rejects_bodies_that_are_not_json(
    api: Api, data: bytes, headers: dict[str, str], status: int
) -> None:
    await api.problem("POST", f"{V1}/webhooks", data=data, headers=headers, status=status)


async def test_a_body_over_the_size_limit_is_a_413(api: Api) -> None:
    huge = b'{"description": "' + b"x" * (400 * 1024) + b'"}'
    reply = await api.call(
        "POST", f"{V1}/webhooks", data=huge, headers={"Content-Type": "application/json"}
    )
    assert reply.status == 413


@pytest.mark.parametrize(
    "webhook_id", ["0", "-1", "abc", "1.5", str(MAX_ID + 1), "9" * 5000, "%00", "\u0661"]
)
async def test_an_id_that_cannot_name_a_webhook_is_a_404(api: Api, webhook_id: str) -> None:
    for method, suffix, body in [
        ("GET", "", None),
        ("PATCH", "", {"url": "https://x.example/"}),
        ("DELETE", "", None),
        ("GET", "/secret", None),
        ("POST", "/rotate-secret", {}),
        ("POST", "/enable", {}),
        ("POST", "/disable", {}),
        ("POST", "/test", {}),
        ("GET", "/failures", None),
    ]:
        reply = await api.call(method, f"{V1}/webhooks/{webhook_id}{suffix}", body)
        assert reply.status == 404, (method, suffix, reply.body)


async def test_the_largest_id_reaches_the_database(api: Api) -> None:
    reply = await api.problem("GET", f"{V1}/webhooks/{MAX_ID}", status=404)
    assert reply.detail == f"webhook {MAX_ID} does not exist"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, "nothing to change"),
        ({"allow_unknown": True}, "nothing to change"),
        ({"url": None}, "url"),
        ({"url": "javascript:alert(1)"}, "scheme"),
        ({"service_name": " "}, "empty"),
        ({"description": "\u0000"}, "\\u0000"),
        ({"event_types": ["a.b", "bad type"]}, "invalid event type"),
        ({"add_event_types": [1]}, "add_event_types"),
        ({"remove_event_types": ["zz.top"]}, "not subscribed to zz.top"),
        ({"remove_event_types": ["a.b"]}, "would be empty"),
        ({"remove_event_types": ["bad\u0000"]}, "invalid event type"),
        ({"status": "disabled"}, "unknown field 'status'"),
    ],
)
async def test_patch_rejects_hostile_bodies(api: Api, body: Any, words: str) -> None:
    webhook = await create(api)
    reply = await api.problem("PATCH", f"{V1}/webhooks/{webhook['id']}", body)
    assert words in reply.detail
    assert await api.ok("GET", f"{V1}/webhooks/{webhook['id']}") == webhook


async def test_actions_refuse_bodies_with_fields(api: Api, db: asyncpg.Pool) -> None:
    wid, _ = await add_webhook(db, "https://x.example/", ["a.b"])
    for action in ("enable", "disable"):
        reply = await api.problem("POST", f"{V1}/webhooks/{wid}/{action}", {"now": True})
        assert reply.body["field"] == "now"
    reply = await api.problem("POST", f"{V1}/webhooks/{wid}/test", {"event_type": 5})
    assert reply.body["field"] == "event_type"
    reply = await api.problem(
        "POST",
        f"{V1}/webhooks/{wid}/test",
        data=b'{"data": {"n": 1e999999}}',
        headers={"Content-Type": "application/json"},
    )
    assert reply.body["field"] == "data" and "number" in reply.detail
