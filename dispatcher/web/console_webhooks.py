"""The console's webhook pages: the list with its overview, adding a webhook, and the details.

A page that hosts dialogs renders them closed; `?dialog=<name>` (or a failed form) renders one
open, so every dialog works without JavaScript too. app.js turns open dialogs modal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import asyncpg
from aiohttp import web

from dispatcher.manage import admin, history, insights
from dispatcher.manage.health import breaker_state, health_of
from dispatcher.manage.insights import OutcomeHistory
from dispatcher.manage.testevent import TestResult
from dispatcher.manage.validation import (
    ValidationError,
    check_max_concurrency,
    check_rate_limit,
    check_retry_policy,
)
from dispatcher.web.console_charts import hourly_chart
from dispatcher.web.console_render import (
    NOTICE_COOKIE,
    console_page,
    form_list,
    form_of,
    int_id,
    outcome_history,
    pool,
    render,
    saved_notice,
    see_other,
)
from dispatcher.web.console_text import when

RECENT_DELIVERIES = 10
# The details page's dialogs that a link may open by name; remove-event-N names the Nth type.
DETAIL_DIALOGS = ("status", "edit", "events", "test", "delete", "rotate")
_REMOVE_DIALOG = re.compile(r"remove-event-(\d{1,4})")

FormState = Mapping[str, Any]


def split_types(text: str) -> list[str]:
    """Read a typed list of event types: separated by commas, spaces or new lines."""
    return [t for t in re.split(r"[\s,]+", text) if t]


def chosen_types(form: Mapping[str, str], checked: list[str]) -> list[str]:
    """The event types a form names: ticked catalog boxes, then typed ones, without repeats."""
    return list(dict.fromkeys([*checked, *split_types(form.get("other_types", ""))]))


def form_rate_limit(form: Mapping[str, str]) -> float | admin.Keep | None:
    """The form's rate limit: blank for none; a form without the field keeps it as it is."""
    if "rate_limit" not in form:
        return admin.KEEP
    text = form["rate_limit"].strip()
    return check_rate_limit(text, "the rate limit") if text else None


def form_max_concurrency(form: Mapping[str, str]) -> int | admin.Keep | None:
    """The form's concurrency cap: blank for the default; a form without the field keeps it."""
    if "max_concurrency" not in form:
        return admin.KEEP
    text = form["max_concurrency"].strip()
    return check_max_concurrency(text, "the max concurrency") if text else None


def form_retry_policy(form: Mapping[str, str]) -> str | admin.Keep | None:
    """The form's retry policy: "default" (or blank) for the daemon's; absent keeps it."""
    if "retry_policy" not in form:
        return admin.KEEP
    text = form["retry_policy"]
    if text in ("", "default"):
        return None
    return check_retry_policy(text, "the retry policy", default="default")


def explain(exc: ValidationError) -> str:
    """Say a service error in the console's words where the CLI's would not fit."""
    if isinstance(exc, admin.UnknownEventTypes):
        return (
            f"{', '.join(exc.types)} {'is' if len(exc.types) == 1 else 'are'} not in the"
            " event-type catalog. Check the spelling, or tick “Allow event types that are not"
            " in the catalog”."
        )
    text = str(exc)
    return text[:1].upper() + text[1:]


def field_of(message: str) -> str:
    """Name the form field an error message is about, to mark it invalid."""
    lowered = message.lower()
    for needle, field in (
        ("rate limit", "rate_limit"),
        ("max concurrency", "max_concurrency"),
        ("retry policy", "retry_policy"),
        ("url", "url"),
        ("service name", "service_name"),
        ("description", "description"),
        ("event type", "event_types"),
    ):
        if needle in lowered:
            return field
    return ""


def failed_form(exc: ValidationError, values: Mapping[str, Any]) -> dict[str, Any]:
    message = explain(exc)
    return {"values": values, "error": message, "field": field_of(message)}


# --- the list -----------------------------------------------------------------------------


async def _list_context(conn: asyncpg.Connection, outcomes: OutcomeHistory) -> dict[str, Any]:
    # The row figures and the chart come from one count of finished deliveries, so they agree.
    day = await outcomes.last_day(conn)
    counts = insights.webhook_totals(day)
    series = insights.hourly_series(day, None)
    webhooks = []
    for row in await admin.list_webhooks(conn, None):
        succeeded, failed_count = counts.get(row["id"], (0, 0))
        webhooks.append(
            {
                **row,
                "deliveries": succeeded + failed_count,
                "failed": failed_count,
                "health": health_of(row),
                "health_text": health_of(row).text(when),
            }
        )
    queue = await insights.queue_depth(conn)
    catalog = await admin.list_event_types(conn)
    total = sum(w["deliveries"] for w in webhooks)
    failed = sum(w["failed"] for w in webhooks)
    return {
        "webhooks": webhooks,
        "chart": hourly_chart(series),
        "queue": queue,
        "catalog": catalog,
        "total_24h": total,
        "failed_24h": failed,
    }


@console_page
async def webhooks_page(request: web.Request) -> web.StreamResponse:
    """The webhooks list, the 24 h overview, and (closed) the new-webhook dialog."""
    async with pool(request).acquire() as conn:
        context = await _list_context(conn, outcome_history(request))
    opened = "new-webhook" if request.query.get("dialog") == "new-webhook" else None
    blank: dict[str, Any] = {"values": {}, "error": None, "field": ""}
    return await render(
        request,
        "webhooks.html",
        {**context, "section": "webhooks", "dialog": opened, "new_form": blank},
    )


@console_page
async def create_webhook(request: web.Request) -> web.StreamResponse:
    """Add a webhook from the dialog's form; on an error show the dialog again, values kept."""
    form = await form_of(request)
    checked = await form_list(request, "event_type")
    types = chosen_types(form, checked)
    async with pool(request).acquire() as conn:
        try:
            limit, policy = form_rate_limit(form), form_retry_policy(form)
            cap = form_max_concurrency(form)
            row = await admin.create_webhook(
                conn,
                form.get("service_name", ""),
                form.get("url", ""),
                form.get("description", "").strip(),
                types,
                allow_unknown=form.get("allow_unknown") == "on",
                rate_limit=None if limit is admin.KEEP else limit,
                retry_policy=None if policy is admin.KEEP else policy,
                max_concurrency=None if cap is admin.KEEP else cap,
            )
        except ValidationError as exc:
            values = {**form, "checked": checked}
            context = await _list_context(conn, outcome_history(request))
            return await render(
                request,
                "webhooks.html",
                {
                    **context,
                    "section": "webhooks",
                    "dialog": "new-webhook",
                    "new_form": failed_form(exc, values),
                },
                status=422,
            )
    notice = await saved_notice(request, "created", row["url"])
    return see_other(request, f"/webhooks/{row['id']}", notice)


# --- the details --------------------------------------------------------------------------


def opened_dialog(name: str | None, event_types: list[str]) -> str | None:
    """Return the dialog `name` if the details page has it, else None."""
    if name in DETAIL_DIALOGS:
        return name
    match = _REMOVE_DIALOG.fullmatch(name or "")
    if match and int(match[1]) < len(event_types):
        return name
    return None


def test_choices(webhook: asyncpg.Record, catalog: list[asyncpg.Record]) -> list[str]:
    """The event types a test may use: the subscribed ones; every catalog type for `*`."""
    types = [t for t in webhook["event_types"] if t != "*"]
    if "*" in webhook["event_types"]:
        types += [c["name"] for c in catalog if c["name"] not in types]
    return types or ["webhook.test"]


async def render_details(
    request: web.Request,
    webhook_id: int,
    *,
    dialog: str | None = None,
    forms: Mapping[str, FormState] | None = None,
    test_result: TestResult | None = None,
    revealed: bool = False,
    status: int = 200,
) -> web.Response:
    """Render a webhook's page; `forms` holds a failed dialog's values and error by dialog."""
    async with pool(request).acquire() as conn:
        webhook = await admin.get_webhook(conn, webhook_id)
        failures = await admin.recent_failures(conn, webhook_id, 5)
        series = await outcome_history(request).hourly(conn, webhook_id)
        recent = await history.list_deliveries(
            conn, webhook_id, None, None, None, RECENT_DELIVERIES + 1
        )
        pending = await insights.pending_of_webhook(conn, webhook_id)
        catalog = await admin.list_event_types(conn)
    catalog_names = {c["name"] for c in catalog}
    event_types = list(webhook["event_types"])
    dialog = opened_dialog(dialog, event_types)
    chart = hourly_chart(series)
    finished = chart.succeeded + chart.failed
    return await render(
        request,
        "webhook.html",
        {
            "section": "webhooks",
            "webhook": webhook,
            "health": health_of(webhook),
            "health_text": health_of(webhook).text(when),
            "breaker": breaker_state(webhook),
            "event_types": event_types,
            "uncatalogued": [t for t in event_types if t not in catalog_names],
            "catalog": catalog,
            "failures": failures,
            "chart": chart,
            "failure_rate": chart.failed / finished if finished else None,
            "recent": recent[:RECENT_DELIVERIES],
            "more_recent": len(recent) > RECENT_DELIVERIES,
            "pending": pending,
            "test_types": test_choices(webhook, catalog),
            "dialog": "test-result" if test_result is not None else dialog,
            "forms": forms or {},
            "test_result": test_result,
            "revealed": revealed,
        },
        status=status,
    )


@console_page
async def webhook_page(request: web.Request) -> web.StreamResponse:
    # Right after "Add", the secret shows at once: the next step is giving it to the receiver.
    just_created = request.cookies.get(NOTICE_COOKIE) == "created"
    return await render_details(
        request, int_id(request), dialog=request.query.get("dialog"), revealed=just_created
    )


@console_page
async def event_types_page(request: web.Request) -> web.StreamResponse:
    """The event-type catalog, read-only: what a webhook can subscribe to."""
    async with pool(request).acquire() as conn:
        catalog = await admin.list_event_types(conn)
    return await render(request, "event_types.html", {"section": "event-types", "catalog": catalog})
