"""API routes for the event-type catalog and for events: publish, read, resend.

Publishing is idempotent on a message id: the caller's `message_id`, or one derived from an
`Idempotency-Key` header as uuid5(IDEMPOTENCY_NAMESPACE, key). The first request creates the
event (201); a retry with the same id and the same event answers 200 with the same message id
and creates nothing; the same id with a different type or payload is a 409.
"""

from __future__ import annotations

import uuid

from aiohttp import web

from dispatcher.manage import admin, history
from dispatcher.manage.fields import EVENT_DELIVERY_FIELDS, EVENT_TYPE_FIELDS
from dispatcher.web.api_json import Body, field_problem, path_uuid, pick, respond
from dispatcher.web.api_webhooks import V1, catalog_hint
from dispatcher.web.app import POOL
from dispatcher.web.problems import Problem

routes = web.RouteTableDef()

# Fixed forever: changing it would give a retried request a new message id.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f9f3c52-6c1e-4f55-9d55-3f0f1b8e2a41")
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 255


# --- the event-type catalog -------------------------------------------------------------


@routes.get(V1 + "/event-types")
async def list_event_types(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        rows = await admin.list_event_types(conn)
        builtin = await admin.list_builtin_event_types(conn)
    return respond(
        {
            "event_types": [
                {**pick(r, EVENT_TYPE_FIELDS), "webhooks": r["webhooks"]} for r in rows
            ],
            "builtin_event_types": [
                {"name": r["name"], "description": r["description"], "webhooks": r["webhooks"]}
                for r in builtin
            ],
        }
    )


@routes.post(V1 + "/event-types")
async def add_event_type(request: web.Request) -> web.Response:
    body = await Body.read(request, ("name", "description", "sample"))
    name = body.required_string("name")
    description = body.string("description") or ""
    sample = body.json_text("sample")
    async with request.app[POOL].acquire() as conn:
        row = await admin.add_event_type(conn, name, description, sample)
    return respond({**pick(row, EVENT_TYPE_FIELDS), "webhooks": 0}, 201)


@routes.delete(V1 + "/event-types/{name}")
async def remove_event_type(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        await admin.remove_event_type(conn, request.match_info["name"])
    return web.Response(status=204)


# --- events -----------------------------------------------------------------------------


def idempotency_message_id(request: web.Request) -> uuid.UUID | None:
    """The message id an Idempotency-Key header stands for, if the request has one."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise field_problem(
            IDEMPOTENCY_HEADER,
            f"the {IDEMPOTENCY_HEADER} header must be 1 to {MAX_IDEMPOTENCY_KEY} printable"
            " characters",
        )
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, key)


@routes.post(V1 + "/events")
async def publish_event(request: web.Request) -> web.Response:
    body = await Body.read(request, ("event_type", "data", "message_id", "allow_unknown"))
    event_type = body.required_string("event_type")
    data = body.json_text("data", required=True)
    assert data is not None
    message_id = body.uuid("message_id")
    keyed = idempotency_message_id(request)
    if message_id is not None and keyed is not None:
        raise field_problem(
            "message_id", f"send message_id or an {IDEMPOTENCY_HEADER} header, not both"
        )
    message_id = message_id or keyed
    async with request.app[POOL].acquire() as conn:
        with catalog_hint("event_type"):
            result = await history.publish_event(
                conn, event_type, data, message_id, allow_unknown=body.boolean("allow_unknown")
            )
    if not result.same_as_sent:
        raise Problem(
            409,
            f"message id {result.message_id} already names an event with another type or"
            " payload; a retry must send the same event, and a new event needs a new id",
            message_id=result.message_id,
        )
    return respond(
        {
            "message_id": result.message_id,
            "created": result.created,
            "deliveries": result.deliveries,
        },
        201 if result.created else 200,
        headers={"Location": f"{V1}/events/{result.message_id}"},
    )


@routes.get(V1 + "/events/{message_id}")
async def get_event(request: web.Request) -> web.Response:
    message_id = path_uuid(request, "message_id", "event")
    async with request.app[POOL].acquire() as conn:
        row = await history.get_event(conn, message_id)
        deliveries = await history.event_deliveries(conn, message_id)
    return respond(
        {
            "message_id": row["message_id"],
            "event_type": row["event_type"],
            "data": pick(row, ("payload",))["payload"],
            "created_at": row["created_at"],
            "deliveries": [pick(d, EVENT_DELIVERY_FIELDS) for d in deliveries],
        }
    )


@routes.post(V1 + "/events/{message_id}/resend")
async def resend_event(request: web.Request) -> web.Response:
    message_id = path_uuid(request, "message_id", "event")
    body = await Body.read(request, ("webhook_id",))
    webhook_id = body.id("webhook_id")
    async with request.app[POOL].acquire() as conn:
        rows = await history.resend_event(conn, message_id, webhook_id)
    return respond({"deliveries": [{"id": r["id"], "webhook_id": r["webhook_id"]} for r in rows]})
