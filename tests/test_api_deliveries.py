"""The deliveries API: paging, one delivery with its attempts, resends, and stats."""

from __future__ import annotations

import base64
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from tests.api_support import Api
from tests.conftest import (
    Cli,
    Receiver,
    WebApp,
    add_webhook,
    deliver_all,
    fast_settings,
    publish,
)

V1 = "/api/v1"


@pytest.fixture
def api(web_app: WebApp) -> Api:
    return Api(web_app)


async def fan_out(db: asyncpg.Pool, events: int, types: list[str]) -> None:
    """Publish `events` events round-robin over `types` in one statement."""
    await db.execute(
        "INSERT INTO dispatcher.events (event_type, payload)"
        " SELECT ($1::text[])[1 + i % cardinality($1::text[])], jsonb_build_object('i', i)"
        " FROM generate_series(1, $2) i",
        types,
        events,
    )


async def walk(
    api: Api, query: str, cursor: str | None = None
) -> tuple[list[int], list[dict[str, Any]]]:
    """Follow next_cursor from `cursor` (or the first page) to the last; return ids and pages."""
    ids: list[int] = []
    pages: list[dict[str, Any]] = []
    while True:
        after = "" if cursor is None else f"&cursor={cursor}"
        page = await api.ok("GET", f"{V1}/deliveries?{query}{after}")
        pages.append(page)
        ids += [d["id"] for d in page["deliveries"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids, pages


async def test_paging_walks_every_delivery_once_newest_first(api: Api, db: asyncpg.Pool) -> None:
    a, _ = await add_webhook(db, "https://a.example/", ["*"])
    b, _ = await add_webhook(db, "https://b.example/", ["x.one"])
    await fan_out(db, 120, ["x.one", "x.two"])  # 120 to a, 60 to b
    every = [
        r["id"] for r in await db.fetch("SELECT id FROM dispatcher.deliveries ORDER BY id DESC")
    ]
    assert len(every) == 180

    ids, pages = await walk(api, "limit=7")
    assert ids == every
    assert [len(p["deliveries"]) for p in pages] == [7] * 25 + [5]
    assert all(p["limit"] == 7 for p in pages)

    ids, _ = await walk(api, f"limit=50&webhook_id={b}")
    assert ids == [r for r in every if r in set(await ids_of(db, b))] and len(ids) == 60
    ids, _ = await walk(api, "limit=13&event_type=x.two")
    assert len(ids) == 60 and len(set(ids)) == 60
    first = await api.ok("GET", f"{V1}/deliveries")
    assert first["limit"] == 50 and len(first["deliveries"]) == 50
    assert first["deliveries"][0]["created_at"].endswith("Z")
    assert (await api.ok("GET", f"{V1}/deliveries?webhook_id={a}&limit=500"))["next_cursor"] is None


async def ids_of(db: asyncpg.Pool, webhook_id: int) -> list[int]:
    rows = await db.fetch("SELECT id FROM dispatcher.deliveries WHERE webhook_id = $1", webhook_id)
    return [r["id"] for r in rows]


async def test_a_page_boundary_holds_while_new_deliveries_arrive(
    api: Api, db: asyncpg.Pool
) -> None:
    await add_webhook(db, "https://a.example/", ["*"])
    await fan_out(db, 10, ["a.b"])
    first = await api.ok("GET", f"{V1}/deliveries?limit=4")
    await fan_out(db, 5, ["a.b"])  # newer than every page already seen
    rest, _ = await walk(api, "limit=4", first["next_cursor"])
    assert [d["id"] for d in first["deliveries"]] + rest == list(range(10, 0, -1))


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=abc", "limit"),
        ("limit=-1", "limit"),
        ("webhook_id=0", "webhook_id"),
        ("webhook_id=x", "webhook_id"),
        (f"webhook_id={2**63}", "webhook_id"),
        ("since=soon", "since"),
        ("since=-5", "since"),
        ("since=nan", "since"),
        ("since=1e400", "since"),
        ("since=99999999999w", "since"),
        ("cursor=garbage!", "cursor"),
        ("cursor=" + base64.urlsafe_b64encode(b"d0").decode(), "cursor"),
        ("cursor=" + base64.urlsafe_b64encode(b"d" + b"9" * 30).decode(), "cursor"),
        ("event_type=a%00b", "event_type"),
        ("status=%00", "status"),
    ],
)
async def test_bad_query_values_are_422_naming_them(api: Api, query: str, field: str) -> None:
    reply = await api.problem("GET", f"{V1}/deliveries?{query}")
    assert reply.body.get("field", field) == field and reply.body["detail"]


async def test_filters_by_status_and_since(api: Api, db: asyncpg.Pool, dsn: str) -> None:
    await add_webhook(db, "http://127.0.0.1:1/closed", ["a.b"])
    await publish(db, "a.b")
    await deliver_all(fast_settings(retry_schedule=()), dsn)
    await publish(db, "a.b")
    failed = await api.ok("GET", f"{V1}/deliveries?status=failed")
    pending = await api.ok("GET", f"{V1}/deliveries?status=pending&since=1h")
    assert [d["status"] for d in failed["deliveries"]] == ["failed"]
    assert [d["status"] for d in pending["deliveries"]] == ["pending"]
    assert (await api.ok("GET", f"{V1}/deliveries?since=3600"))["deliveries"]
    reply = await api.problem("GET", f"{V1}/deliveries?status=lost")
    assert "invalid status" in reply.detail
    await db.execute("UPDATE dispatcher.deliveries SET created_at = now() - interval '2 days'")
    assert (await api.ok("GET", f"{V1}/deliveries?since=24h"))["deliveries"] == []


async def test_a_delivery_with_every_attempt(
    api: Api, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    async def flaky(request: web.Request, rec: Receiver) -> web.StreamResponse:
        return web.Response(status=500 if len(rec.requests) < 3 else 200, text="body")

    receiver.handler = flaky
    wid, _ = await add_webhook(db, receiver.url + "/in", ["a.b"])
    message_id = await publish(db, "a.b", '{"n": 1}')
    await deliver_all(fast_settings(), dsn)

    page = await api.ok("GET", f"{V1}/deliveries")
    delivery = await api.ok("GET", f"{V1}/deliveries/{page['deliveries'][0]['id']}")
    assert (delivery["message_id"], delivery["webhook_id"]) == (message_id, wid)
    assert (delivery["status"], delivery["attempts"], delivery["data"]) == (
        "succeeded",
        3,
        {"n": 1},
    )
    assert delivery["url"] == receiver.url + "/in" and delivery["leased"] is False
    log = delivery["attempts_log"]
    assert [(a["attempt"], a["response_status"]) for a in log] == [(1, 500), (2, 500), (3, 200)]
    assert log[0]["started_at"].endswith("Z") and log[0]["error_kind"] == "status"
    for bad in ("0", "x", str(2**63), "1" * 40):
        await api.problem("GET", f"{V1}/deliveries/{bad}", status=404)
    await api.problem("GET", f"{V1}/deliveries/999", status=404)


async def test_bulk_resend_counts_then_resends_once(
    api: Api, db: asyncpg.Pool, dsn: str, cli: Cli
) -> None:
    closed, _ = await add_webhook(db, "http://127.0.0.1:1/closed", ["a.b"])
    await add_webhook(db, "http://127.0.0.1:1/other", ["c.d"])
    for _ in range(3):
        await publish(db, "a.b")
    await publish(db, "c.d")
    await deliver_all(fast_settings(retry_schedule=()), dsn)

    dry = await api.ok(
        "POST", f"{V1}/deliveries/resend", {"since": "1h", "webhook_id": closed, "dry_run": True}
    )
    assert dry == {"matched": 3, "resent": 0, "dry_run": True}
    assert await api.ok("POST", f"{V1}/deliveries/resend", {"since": 3600}) == {
        "matched": 4,
        "resent": 4,
        "dry_run": False,
    }
    # Each (event, webhook) now has a newer delivery: nothing is resent twice.
    assert (await api.ok("POST", f"{V1}/deliveries/resend", {"since": "1h"}))["resent"] == 0
    pending = await cli.json("deliveries", "list", "--status", "pending")
    assert len(pending) == 4 and {d["kind"] for d in pending} == {"resend"}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({}, 422, "'since' is required"),
        ({"since": "1h", "status": "pending"}, 422, "only failed or cancelled"),
        ({"since": "1h", "status": 5}, 422, "'status' must be a string"),
        ({"since": None}, 422, "since"),
        ({"since": [1]}, 422, "since"),
        ({"since": -1}, 422, "since"),
        ({"since": "forever"}, 422, "since"),
        ({"since": "1h", "webhook_id": 0}, 422, "webhook_id"),
        ({"since": "1h", "webhook_id": 999}, 404, "webhook 999"),
        ({"since": "1h", "dry_run": "yes"}, 422, "dry_run"),
        ({"since": "1h", "everything": True}, 422, "unknown field"),
        ([], 422, "JSON object"),
    ],
)
async def test_bulk_resend_rejects_hostile_bodies(
    api: Api, body: Any, status: int, words: str
) -> None:
    reply = await api.problem("POST", f"{V1}/deliveries/resend", body, status=status)
    assert words in reply.detail


async def test_resend_one_delivery(api: Api, db: asyncpg.Pool, dsn: str) -> None:
    wid, _ = await add_webhook(db, "http://127.0.0.1:1/closed", ["a.b"])
    await add_webhook(db, "http://127.0.0.1:1/other", ["a.b"])
    message_id = await publish(db, "a.b")
    await deliver_all(fast_settings(retry_schedule=()), dsn)
    first = (await api.ok("GET", f"{V1}/deliveries?webhook_id={wid}"))["deliveries"][0]

    resent = await api.ok("POST", f"{V1}/deliveries/{first['id']}/resend")
    assert [d["webhook_id"] for d in resent["deliveries"]] == [wid]  # not the other webhook
    new = await api.ok("GET", f"{V1}/deliveries/{resent['deliveries'][0]['id']}")
    assert (new["message_id"], new["kind"], new["status"]) == (message_id, "resend", "pending")

    await api.ok("DELETE", f"{V1}/webhooks/{wid}")
    reply = await api.problem("POST", f"{V1}/deliveries/{first['id']}/resend")
    assert "deleted" in reply.detail
    await api.problem("POST", f"{V1}/deliveries/999/resend", status=404)
    await api.problem("POST", f"{V1}/deliveries/abc/resend", status=404)


async def test_stats(api: Api, db: asyncpg.Pool) -> None:
    wid, _ = await add_webhook(db, "https://a.example/", ["a.b"], name="A")
    await publish(db, "a.b")
    await db.execute("UPDATE dispatcher.deliveries SET run_at = now() - interval '90 seconds'")
    stats = await api.ok("GET", f"{V1}/stats")
    assert (stats["due_now"], stats["scheduled"], stats["leased"]) == (1, 0, 0)
    assert 89 < stats["oldest_due_s"] < 200 and stats["window_s"] == 86400
    assert stats["webhooks"] == [
        {
            "webhook_id": wid,
            "service_name": "A",
            "status": "active",
            "succeeded": 0,
            "failed": 0,
            "pending": 1,
        }
    ]
    assert (await api.ok("GET", f"{V1}/stats?window=1h"))["window_s"] == 3600
    await api.problem("GET", f"{V1}/stats?window=later")


async def test_a_read_only_token_reads_the_log_but_cannot_resend(
    api: Api, web_app: WebApp, db: asyncpg.Pool
) -> None:
    await add_webhook(db, "https://a.example/", ["a.b"])
    await publish(db, "a.b")
    ro = web_app.read_only_token
    for path in (f"{V1}/deliveries", f"{V1}/deliveries/1", f"{V1}/stats"):
        assert (await api.call("GET", path, token=ro)).status == 200, path
    for path, body in [
        (f"{V1}/deliveries/resend", {"since": "1h"}),
        (f"{V1}/deliveries/1/resend", None),
    ]:
        assert (await api.call("POST", path, body, token=ro)).status == 403, path
    assert await db.fetchval("SELECT count(*) FROM dispatcher.deliveries") == 1


@pytest.mark.parametrize("value", ["%ED%A0%80", "%FF", "%C0%80", "a%00"])
async def test_an_event_type_filter_that_is_not_text_is_refused_or_matches_nothing(
    api: Api, value: str
) -> None:
    reply = await api.call("GET", f"{V1}/deliveries?event_type={value}")
    assert reply.status in (200, 422), reply.body
    if reply.status == 200:
        assert reply.body["deliveries"] == []


async def test_resending_one_delivery_takes_no_fields(api: Api, db: asyncpg.Pool) -> None:
    await add_webhook(db, "https://a.example/", ["a.b"])
    await publish(db, "a.b")
    reply = await api.problem("POST", f"{V1}/deliveries/1/resend", {"webhook_id": 2})
    assert reply.body["field"] == "webhook_id"
