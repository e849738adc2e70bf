"""The console: server-rendered pages for people, signed in with an API token.

Pages are plain HTML forms that work without JavaScript; `static/app.js` adds modal dialogs,
menus and in-place form errors on top. Every change goes through `dispatcher.manage`.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from dispatcher.manage.insights import OutcomeHistory
from dispatcher.web import (
    console_auth,
    console_deliveries,
    console_webhook_actions,
    console_webhooks,
)
from dispatcher.web.app import SIGN_IN_PAGE
from dispatcher.web.console_render import OUTCOME_HISTORY, STATIC, setup_templates

ID = r"{id:\d+}"


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/webhooks")


def setup(app: web.Application) -> None:
    """Add the console's routes, templates and static files to `app`."""
    setup_templates(app)
    app[SIGN_IN_PAGE] = console_auth.sign_in_page
    app[OUTCOME_HISTORY] = OutcomeHistory()
    app.router.add_static("/static/", Path(str(STATIC)), append_version=False)

    webhooks, actions = console_webhooks, console_webhook_actions
    deliveries = console_deliveries
    app.router.add_routes(
        [
            web.get("/", home),
            web.get("/sign-in", console_auth.already_signed_in),
            web.post("/sign-in", console_auth.sign_in),
            web.post("/sign-out", console_auth.sign_out),
            web.get("/webhooks", webhooks.webhooks_page),
            web.post("/webhooks", webhooks.create_webhook),
            web.get(f"/webhooks/{ID}", webhooks.webhook_page),
            web.post(f"/webhooks/{ID}/secret", actions.reveal_secret),
            web.post(f"/webhooks/{ID}/status", actions.change_status),
            web.post(f"/webhooks/{ID}/edit", actions.edit_webhook),
            web.post(f"/webhooks/{ID}/events", actions.replace_event_types),
            web.post(f"/webhooks/{ID}/events/remove", actions.remove_event_type),
            web.post(f"/webhooks/{ID}/rotate-secret", actions.rotate_secret),
            web.post(f"/webhooks/{ID}/test", actions.send_test_event),
            web.post(f"/webhooks/{ID}/delete", actions.delete_webhook),
            web.get("/event-types", webhooks.event_types_page),
            web.get("/deliveries", deliveries.deliveries_page),
            web.get("/deliveries/recover", deliveries.recover_preview),
            web.post("/deliveries/recover", deliveries.recover),
            web.get(f"/deliveries/{ID}", deliveries.delivery_page),
            web.post(f"/deliveries/{ID}/resend", deliveries.resend),
        ]
    )
