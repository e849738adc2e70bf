"""The console's delivery log: filters, keyset pages, one delivery's attempts, resending."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from dispatcher.manage import admin, history, insights
from dispatcher.manage.validation import ValidationError, parse_id
from dispatcher.web.console_render import (
    console_page,
    form_of,
    int_id,
    pool,
    render,
    see_other,
)
from dispatcher.web.console_text import json_pretty

PAGE_SIZE = 50
SINCE_CHOICES = {
    "1h": ("Last hour", timedelta(hours=1)),
    "24h": ("Last 24 hours", timedelta(hours=24)),
    "7d": ("Last 7 days", timedelta(days=7)),
}


def _number(text: str | None) -> int | None:
    """Return a query's id, or None for anything else (a filter is then left off)."""
    return parse_id(text) if text else None


def log_filters(query: Mapping[str, str]) -> dict[str, str]:
    """The delivery log's filters from a query string, as text (empty when not set)."""
    since = query.get("since", "")
    status = query.get("status", "")
    return {
        "webhook": str(_number(query.get("webhook")) or ""),
        "status": status if status in history.DELIVERY_STATUSES else "",
        "event_type": query.get("event_type", "").strip(),
        "since": since if since in SINCE_CHOICES else "",
    }


def log_url(filters: Mapping[str, str], **extra: str | int) -> str:
    """The log's URL for these filters, leaving out the empty ones."""
    query = {k: v for k, v in {**filters, **extra}.items() if v not in ("", None)}
    return "/deliveries" + ("?" + urlencode(query) if query else "")


async def render_log(
    request: web.Request, recover: Mapping[str, Any] | None = None, status: int = 200
) -> web.Response:
    filters = log_filters(request.query)
    before = _number(request.query.get("before"))
    webhook_id = _number(filters["webhook"])
    since = SINCE_CHOICES[filters["since"]][1] if filters["since"] else None
    async with pool(request).acquire() as conn:
        rows = await history.list_deliveries(
            conn,
            webhook_id,
            filters["status"] or None,
            filters["event_type"] or None,
            since,
            PAGE_SIZE + 1,
            before_id=before,
        )
        webhooks = await insights.webhook_names(conn)
        catalog = await admin.list_event_types(conn)
    page = rows[:PAGE_SIZE]
    older = log_url(filters, before=page[-1]["id"]) if len(rows) > PAGE_SIZE else None
    opened = "recover" if recover is not None or request.query.get("dialog") == "recover" else None
    return await render(
        request,
        "deliveries.html",
        {
            "section": "deliveries",
            "deliveries": page,
            "filters": filters,
            "filtered": any(filters.values()),
            "older": older,
            "newest": log_url(filters) if before else None,
            "webhooks": webhooks,
            "webhook_name": dict(webhooks).get(webhook_id) if webhook_id else None,
            "catalog": catalog,
            "since_choices": SINCE_CHOICES,
            "statuses": history.DELIVERY_STATUSES,
            "dialog": opened,
            "recover": recover or {},
            "here": log_url(filters),
        },
        status=status,
    )


@console_page
async def deliveries_page(request: web.Request) -> web.StreamResponse:
    return await render_log(request)


@console_page
async def recover_preview(request: web.Request) -> web.StreamResponse:
    """Count what "Recover failed since…" would resend, changing nothing, and ask to confirm."""
    filters = log_filters(request.query)
    choice = request.query.get("recover_since", "")
    if choice not in SINCE_CHOICES:
        return await render_log(request, {"error": "Choose how far back to look."}, status=422)
    webhook_id = _number(filters["webhook"])
    async with pool(request).acquire() as conn:
        matched, _ = await history.bulk_resend(
            conn, "failed", SINCE_CHOICES[choice][1], webhook_id, dry_run=True
        )
    return await render_log(request, {"since": choice, "matched": matched})


@console_page
async def recover(request: web.Request) -> web.StreamResponse:
    """Resend every failed delivery in the chosen window (to webhooks still active)."""
    form = await form_of(request)
    choice = form.get("recover_since", "")
    if choice not in SINCE_CHOICES:
        raise ValidationError("choose how far back to look: 1h, 24h or 7d")
    webhook_id = _number(form.get("webhook"))
    async with pool(request).acquire() as conn:
        _, resent = await history.bulk_resend(
            conn, "failed", SINCE_CHOICES[choice][1], webhook_id, dry_run=False
        )
    back = log_url({"webhook": str(webhook_id or "")})
    return see_other(request, back, f"recovered:{resent}")


@console_page
async def delivery_page(request: web.Request) -> web.StreamResponse:
    """One delivery: its event, its status, and every attempt with the endpoint's answer."""
    async with pool(request).acquire() as conn:
        delivery, attempts = await history.get_delivery(conn, int_id(request))
        webhook_active = False
        if delivery["service_name"] is not None:
            webhook = await admin.get_webhook(conn, delivery["webhook_id"])
            webhook_active = webhook["status"] == "active"
    return await render(
        request,
        "delivery.html",
        {
            "section": "deliveries",
            "delivery": delivery,
            "attempts": attempts,
            "payload": json_pretty(delivery["payload"]),
            "webhook_active": webhook_active,
        },
    )


@console_page
async def resend(request: web.Request) -> web.StreamResponse:
    """Send this delivery's event to its webhook again, as a new delivery."""
    async with pool(request).acquire() as conn:
        rows = await history.resend_delivery(conn, int_id(request))
    return see_other(request, f"/deliveries/{rows[0]['id']}", "resent")
