"""API routes for the delivery log (paged newest first), resends, and queue statistics."""

from __future__ import annotations

from aiohttp import web

from dispatcher.manage import history
from dispatcher.manage.fields import ATTEMPT_FIELDS, DELIVERY_FIELDS
from dispatcher.web.api_json import (
    Body,
    decode_cursor,
    encode_cursor,
    path_id,
    pick,
    query_id,
    query_int,
    query_period,
    query_text,
    respond,
)
from dispatcher.web.api_webhooks import V1
from dispatcher.web.app import POOL

routes = web.RouteTableDef()

DEFAULT_PAGE = 50
MAX_PAGE = 500


@routes.get(V1 + "/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    """One page, newest first; `next_cursor` fetches the next, and is null on the last."""
    webhook_id = query_id(request, "webhook_id")
    status = query_text(request, "status")
    event_type = query_text(request, "event_type")
    since = query_period(request, "since")
    limit = query_int(request, "limit", default=DEFAULT_PAGE, low=1, high=MAX_PAGE)
    before_id = decode_cursor(request)
    async with request.app[POOL].acquire() as conn:
        # One row more than the page says whether another page follows.
        rows = await history.list_deliveries(
            conn, webhook_id, status, event_type, since, limit + 1, before_id=before_id
        )
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]["id"]) if len(rows) > limit else None
    return respond(
        {
            "deliveries": [pick(r, DELIVERY_FIELDS) for r in page],
            "next_cursor": next_cursor,
            "limit": limit,
        }
    )


@routes.get(V1 + "/deliveries/{delivery_id}")
async def get_delivery(request: web.Request) -> web.Response:
    delivery_id = path_id(request, "delivery_id", "delivery")
    async with request.app[POOL].acquire() as conn:
        row, attempts = await history.get_delivery(conn, delivery_id)
    return respond(
        {
            **pick(row, DELIVERY_FIELDS),
            "url": row["url"],
            "data": pick(row, ("payload",))["payload"],
            "leased": row["leased"],
            "attempts_log": [pick(a, ATTEMPT_FIELDS) for a in attempts],
        }
    )


@routes.post(V1 + "/deliveries/resend")
async def bulk_resend(request: web.Request) -> web.Response:
    body = await Body.read(request, ("status", "since", "webhook_id", "dry_run"))
    status = body.string("status") or "failed"
    since = body.period("since")
    webhook_id = body.id("webhook_id")
    dry_run = body.boolean("dry_run")
    async with request.app[POOL].acquire() as conn:
        matched, resent = await history.bulk_resend(conn, status, since, webhook_id, dry_run)
    return respond({"matched": matched, "resent": resent, "dry_run": dry_run})


@routes.post(V1 + "/deliveries/{delivery_id}/resend")
async def resend_delivery(request: web.Request) -> web.Response:
    delivery_id = path_id(request, "delivery_id", "delivery")
    await Body.read(request, ())
    async with request.app[POOL].acquire() as conn:
        rows = await history.resend_delivery(conn, delivery_id)
    return respond({"deliveries": [{"id": r["id"], "webhook_id": r["webhook_id"]} for r in rows]})


@routes.get(V1 + "/stats")
async def stats(request: web.Request) -> web.Response:
    window = query_period(request, "window", default="24h")
    assert window is not None
    async with request.app[POOL].acquire() as conn:
        data = await history.stats(conn, window)
    return respond(data)
