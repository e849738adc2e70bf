"""API routes for webhooks: create, list, read, change, rotate, enable, disable, delete, test."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import asyncpg
from aiohttp import web

from dispatcher.delivery.netguard import target_warning
from dispatcher.manage import admin
from dispatcher.manage.fields import FAILURE_FIELDS, WEBHOOK_FIELDS
from dispatcher.manage.health import health_json, success_rate
from dispatcher.manage.testevent import send_test
from dispatcher.manage.validation import (
    MAX_CONCURRENCY,
    MAX_RATE_LIMIT,
    ValidationError,
    check_max_concurrency,
    check_rate_limit,
    check_retry_policy,
)
from dispatcher.web.api_json import (
    Body,
    field_problem,
    path_id,
    pick,
    query_int,
    respond,
)
from dispatcher.web.app import POOL, SETTINGS, require_write
from dispatcher.web.problems import Problem

V1 = "/api/v1"
routes = web.RouteTableDef()

CREATE_FIELDS = (
    "service_name",
    "url",
    "description",
    "event_types",
    "allow_unknown",
    "rate_limit",
    "retry_policy",
    "max_concurrency",
)
PATCH_FIELDS = (
    "service_name",
    "url",
    "description",
    "rate_limit",
    "retry_policy",
    "max_concurrency",
    "event_types",
    "add_event_types",
    "remove_event_types",
    "allow_unknown",
)
DEFAULT_GRACE_S = 86400.0
DAY = timedelta(days=1)


def webhook_json(row: asyncpg.Record) -> dict[str, Any]:
    """A webhook as every route shows it: never its secret."""
    return {
        **pick(row, WEBHOOK_FIELDS),
        "health": health_json(row),
        "previous_secret_expires_at": row["previous_secret_expires_at"],
    }


def rate_limit_field(body: Body) -> float | admin.Keep | None:
    """Read `rate_limit`: absent keeps it, null clears it, else a number of requests/second."""
    if "rate_limit" not in body:
        return admin.KEEP
    value = body.fields["rate_limit"]
    if value is None:
        return None
    try:
        # A JSON string is not a number, even one that reads as one.
        return check_rate_limit(math.nan if isinstance(value, str) else value, "rate_limit")
    except ValidationError:
        shown = json.dumps(value) if isinstance(value, str) else str(value)
        raise field_problem(
            "rate_limit",
            "rate_limit must be a number of requests per second greater than 0 and at most"
            f" {MAX_RATE_LIMIT:g}, or null for no limit; got {shown}",
        ) from None


def max_concurrency_field(body: Body) -> int | admin.Keep | None:
    """Read `max_concurrency`: absent keeps it, null clears it (the daemon's setting)."""
    if "max_concurrency" not in body:
        return admin.KEEP
    value = body.fields["max_concurrency"]
    if value is None:
        return None
    try:
        # A JSON string is not a number, even one that reads as one.
        return check_max_concurrency(None if isinstance(value, str) else value)
    except ValidationError:
        shown = json.dumps(value) if isinstance(value, str) else str(value)
        raise field_problem(
            "max_concurrency",
            "max_concurrency must be a whole number of attempts in flight from 1 to"
            f" {MAX_CONCURRENCY}, or null for the daemon's per_endpoint_concurrency; got {shown}",
        ) from None


def retry_policy_field(body: Body) -> str | admin.Keep | None:
    """Read `retry_policy`: absent keeps it, null clears it (the daemon's default)."""
    if "retry_policy" not in body:
        return admin.KEEP
    value = body.fields["retry_policy"]
    if value is None:
        return None
    try:
        return check_retry_policy(value, "retry_policy")
    except ValidationError as exc:
        raise field_problem("retry_policy", str(exc)) from None


async def saved_webhook_json(request: web.Request, row: asyncpg.Record) -> dict[str, Any]:
    """A webhook just created or changed, with a warning if its address would be refused."""
    warning = await target_warning(row["url"], request.app[SETTINGS].allowed)
    return {**webhook_json(row), "warnings": [warning] if warning else []}


@contextmanager
def catalog_hint(field: str) -> Iterator[None]:
    """Say how the API, not the CLI, accepts a type missing from the catalog."""
    try:
        yield
    except admin.UnknownEventTypes as exc:
        raise Problem(
            422,
            f"unknown event type {', '.join(exc.types)}: not in the event-type catalog"
            ' (GET /api/v1/event-types; send "allow_unknown": true to use it anyway)',
            field=field,
            unknown_event_types=exc.types,
        ) from None


@routes.post(V1 + "/webhooks")
async def create_webhook(request: web.Request) -> web.Response:
    body = await Body.read(request, CREATE_FIELDS)
    name = body.required_string("service_name")
    url = body.required_string("url")
    description = body.string("description") or ""
    types = body.string_list("event_types")
    if types is None:
        raise field_problem("event_types", "the field 'event_types' is required")
    allow_unknown = body.boolean("allow_unknown")
    limit, policy = rate_limit_field(body), retry_policy_field(body)
    cap = max_concurrency_field(body)
    async with request.app[POOL].acquire() as conn:
        with catalog_hint("event_types"):
            row = await admin.create_webhook(
                conn,
                name,
                url,
                description,
                types,
                allow_unknown=allow_unknown,
                rate_limit=None if limit is admin.KEEP else limit,
                retry_policy=None if policy is admin.KEEP else policy,
                max_concurrency=None if cap is admin.KEEP else cap,
            )
    location = f"{V1}/webhooks/{row['id']}"
    return respond(await saved_webhook_json(request, row), 201, headers={"Location": location})


@routes.get(V1 + "/webhooks")
async def list_webhooks(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        rows = await admin.list_webhooks(conn, DAY)
    return respond(
        {
            "webhooks": [
                {
                    **pick(r, WEBHOOK_FIELDS),
                    "health": health_json(r),
                    "deliveries_24h": r["deliveries"],
                    "failed_24h": r["failed"],
                    "succeeded_24h": r["succeeded"],
                    "success_rate_24h": success_rate(r["succeeded"], r["failed"]),
                }
                for r in rows
            ]
        }
    )


@routes.get(V1 + "/webhooks/{webhook_id}")
async def get_webhook(request: web.Request) -> web.Response:
    webhook_id = path_id(request, "webhook_id", "webhook")
    async with request.app[POOL].acquire() as conn:
        row = await admin.get_webhook(conn, webhook_id)
    return respond(webhook_json(row))


@routes.patch(V1 + "/webhooks/{webhook_id}")
async def patch_webhook(request: web.Request) -> web.Response:
    webhook_id = path_id(request, "webhook_id", "webhook")
    body = await Body.read(request, PATCH_FIELDS)
    name, url = body.string("service_name"), body.string("url")
    description = body.string("description")
    replace = body.string_list("event_types")
    add = body.string_list("add_event_types")
    remove = body.string_list("remove_event_types")
    allow_unknown = body.boolean("allow_unknown")
    limit, policy = rate_limit_field(body), retry_policy_field(body)
    cap = max_concurrency_field(body)
    edits = (name, url, description)
    type_changes = (replace, add, remove)
    flow_changes = any(f is not admin.KEEP for f in (limit, policy, cap))
    if all(v is None for v in (*edits, *type_changes)) and not flow_changes:
        raise Problem(
            422,
            "nothing to change: give service_name, url, description, rate_limit, retry_policy,"
            " max_concurrency, event_types, add_event_types or remove_event_types",
        )
    async with request.app[POOL].acquire() as conn, conn.transaction():
        if any(v is not None for v in edits) or flow_changes:
            await admin.edit_webhook(
                conn,
                webhook_id,
                name=name,
                url=url,
                description=description,
                rate_limit=limit,
                retry_policy=policy,
                max_concurrency=cap,
            )
        if any(v is not None for v in type_changes):
            field = "event_types" if replace is not None else "add_event_types"
            with catalog_hint(field):
                await admin.change_event_types(
                    conn, webhook_id, add or [], remove or [], replace, allow_unknown
                )
        row = await admin.get_webhook(conn, webhook_id)
    return respond(await saved_webhook_json(request, row))


@routes.get(V1 + "/webhooks/{webhook_id}/secret")
async def get_secret(request: web.Request) -> web.Response:
    require_write(request, "read a webhook's secret")
    webhook_id = path_id(request, "webhook_id", "webhook")
    async with request.app[POOL].acquire() as conn:
        row = await admin.get_webhook(conn, webhook_id)
    return respond(
        {
            "webhook_id": row["id"],
            "secret": row["secret"],
            "previous_secret": row["previous_secret"],
            "previous_secret_expires_at": row["previous_secret_expires_at"],
        }
    )


@routes.post(V1 + "/webhooks/{webhook_id}/rotate-secret")
async def rotate_secret(request: web.Request) -> web.Response:
    webhook_id = path_id(request, "webhook_id", "webhook")
    body = await Body.read(request, ("grace_s",))
    grace = body.period("grace_s", default=DEFAULT_GRACE_S)
    async with request.app[POOL].acquire() as conn:
        row = await admin.rotate_secret(conn, webhook_id, grace)
    return respond(webhook_json(row))


@routes.post(V1 + "/webhooks/{webhook_id}/enable")
async def enable_webhook(request: web.Request) -> web.Response:
    webhook_id = path_id(request, "webhook_id", "webhook")
    await Body.read(request, ())
    async with request.app[POOL].acquire() as conn:
        row = await admin.enable_webhook(conn, webhook_id)
    return respond(webhook_json(row))


@routes.post(V1 + "/webhooks/{webhook_id}/disable")
async def disable_webhook(request: web.Request) -> web.Response:
    webhook_id = path_id(request, "webhook_id", "webhook")
    await Body.read(request, ())
    async with request.app[POOL].acquire() as conn:
        row, cancelled = await admin.disable_webhook(conn, webhook_id)
    return respond({**webhook_json(row), "cancelled": cancelled})


@routes.delete(V1 + "/webhooks/{webhook_id}")
async def delete_webhook(request: web.Request) -> web.Response:
    webhook_id = path_id(request, "webhook_id", "webhook")
    async with request.app[POOL].acquire() as conn:
        cancelled = await admin.delete_webhook(conn, webhook_id)
    return respond({"id": webhook_id, "deleted": True, "cancelled": cancelled})


@routes.post(V1 + "/webhooks/{webhook_id}/test")
async def test_webhook(request: web.Request) -> web.Response:
    webhook_id = path_id(request, "webhook_id", "webhook")
    body = await Body.read(request, ("event_type", "data"))
    event_type = body.string("event_type")
    data = body.json_text("data")
    async with request.app[POOL].acquire() as conn:
        webhook = await admin.get_webhook(conn, webhook_id)
    # The pool, not a connection: none is held while the endpoint answers.
    result = await send_test(
        request.app[POOL], request.app[SETTINGS], webhook, event_type, payload_json=data
    )
    return respond({**result.as_json(), "webhook_status": webhook["status"]})


@routes.get(V1 + "/webhooks/{webhook_id}/failures")
async def list_failures(request: web.Request) -> web.Response:
    webhook_id = path_id(request, "webhook_id", "webhook")
    limit = query_int(request, "limit", default=20, low=1, high=500)
    async with request.app[POOL].acquire() as conn:
        await admin.get_webhook(conn, webhook_id)
        rows = await admin.recent_failures(conn, webhook_id, limit)
    return respond({"failures": [pick(r, FAILURE_FIELDS) for r in rows]})
