"""The changes a details page makes: status, edits, event types, secret, test event, delete.

Each posts a plain form. On success it redirects with a notice; on a ValidationError it renders
the details page again with the same dialog open, showing the error and keeping what was typed.
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from dispatcher.manage import admin, testevent
from dispatcher.manage.validation import ValidationError
from dispatcher.web.app import SETTINGS
from dispatcher.web.console_render import (
    console_page,
    form_list,
    form_of,
    int_id,
    pool,
    saved_notice,
    see_other,
)
from dispatcher.web.console_webhooks import (
    chosen_types,
    failed_form,
    form_max_concurrency,
    form_rate_limit,
    form_retry_policy,
    render_details,
)

GRACE_CHOICES = {
    "0": timedelta(0),
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}


def _back(webhook_id: int) -> str:
    return f"/webhooks/{webhook_id}"


@console_page
async def reveal_secret(request: web.Request) -> web.StreamResponse:
    """Show the secret without JavaScript: a POST, so it never rides in a URL or a log line."""
    return await render_details(request, int_id(request), revealed=True)


@console_page
async def change_status(request: web.Request) -> web.StreamResponse:
    webhook_id = int_id(request)
    form = await form_of(request)
    wanted = form.get("status")
    async with pool(request).acquire() as conn:
        if wanted == "disabled":
            _, cancelled = await admin.disable_webhook(conn, webhook_id)
            return see_other(request, _back(webhook_id), f"disabled:{cancelled}")
        if wanted == "active":
            await admin.enable_webhook(conn, webhook_id)
            return see_other(request, _back(webhook_id), "enabled")
    raise ValidationError("the status must be active or disabled")


@console_page
async def edit_webhook(request: web.Request) -> web.StreamResponse:
    """Save the name, URL, description, rate limit, retry policy and max concurrency from the
    Edit dialog."""
    webhook_id = int_id(request)
    form = await form_of(request)
    try:
        limit, policy = form_rate_limit(form), form_retry_policy(form)
        cap = form_max_concurrency(form)
        async with pool(request).acquire() as conn:
            row = await admin.edit_webhook(
                conn,
                webhook_id,
                name=form.get("service_name"),
                url=form.get("url"),
                description=(form.get("description") or "").strip(),
                rate_limit=limit,
                retry_policy=policy,
                max_concurrency=cap,
            )
    except ValidationError as exc:
        return await render_details(
            request, webhook_id, dialog="edit", forms={"edit": failed_form(exc, form)}, status=422
        )
    return see_other(request, _back(webhook_id), await saved_notice(request, "saved", row["url"]))


@console_page
async def replace_event_types(request: web.Request) -> web.StreamResponse:
    """Replace the event list with what the Edit events dialog ticks and names."""
    webhook_id = int_id(request)
    form = await form_of(request)
    checked = await form_list(request, "event_type")
    try:
        async with pool(request).acquire() as conn:
            await admin.change_event_types(
                conn,
                webhook_id,
                add=[],
                remove=[],
                replace=chosen_types(form, checked),
                allow_unknown=form.get("allow_unknown") == "on",
            )
    except ValidationError as exc:
        values = {**form, "checked": checked}
        return await render_details(
            request,
            webhook_id,
            dialog="events",
            forms={"events": failed_form(exc, values)},
            status=422,
        )
    return see_other(request, _back(webhook_id), "events")


@console_page
async def remove_event_type(request: web.Request) -> web.StreamResponse:
    webhook_id = int_id(request)
    form = await form_of(request)
    event_type = form.get("event_type", "")
    dialog = form.get("dialog", "")
    try:
        async with pool(request).acquire() as conn:
            await admin.change_event_types(
                conn, webhook_id, add=[], remove=[event_type], replace=None, allow_unknown=True
            )
    except ValidationError as exc:
        return await render_details(
            request,
            webhook_id,
            dialog=dialog,
            forms={dialog: failed_form(exc, form)},
            status=422,
        )
    return see_other(request, _back(webhook_id), "removed")


@console_page
async def rotate_secret(request: web.Request) -> web.StreamResponse:
    webhook_id = int_id(request)
    form = await form_of(request)
    grace = GRACE_CHOICES.get(form.get("grace", ""))
    if grace is None:
        raise ValidationError("choose how long the old secret keeps signing: none, 1h, 24h or 7d")
    async with pool(request).acquire() as conn:
        await admin.rotate_secret(conn, webhook_id, grace)
    notice = f"rotated_grace:{int(grace.total_seconds())}" if grace else "rotated"
    return see_other(request, _back(webhook_id), notice)


@console_page
async def send_test_event(request: web.Request) -> web.StreamResponse:
    """Send one test event now and show what went out and what came back."""
    webhook_id = int_id(request)
    form = await form_of(request)
    try:
        async with pool(request).acquire() as conn:
            webhook = await admin.get_webhook(conn, webhook_id)
        # The pool, not a connection: none is held while the endpoint answers.
        result = await testevent.send_test(
            pool(request), request.app[SETTINGS], webhook, form.get("event_type") or None
        )
    except ValidationError as exc:
        return await render_details(
            request, webhook_id, dialog="test", forms={"test": failed_form(exc, form)}, status=422
        )
    return await render_details(request, webhook_id, test_result=result)


@console_page
async def delete_webhook(request: web.Request) -> web.StreamResponse:
    webhook_id = int_id(request)
    async with pool(request).acquire() as conn:
        cancelled = await admin.delete_webhook(conn, webhook_id)
    return see_other(request, "/", f"deleted:{cancelled}")
