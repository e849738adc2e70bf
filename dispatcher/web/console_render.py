"""What every console page shares: templates, the page context, notices, redirects, error pages."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from datetime import timedelta
from importlib import resources
from typing import Any

import aiohttp_jinja2
import asyncpg
import jinja2
from aiohttp import web

from dispatcher.delivery.netguard import target_warning
from dispatcher.manage.admin import NotFound
from dispatcher.manage.health import retry_text
from dispatcher.manage.insights import OutcomeHistory
from dispatcher.manage.validation import ValidationError, parse_id
from dispatcher.web.app import POOL, PRINCIPAL, SETTINGS, Handler, principal
from dispatcher.web.console_text import (
    age,
    ago,
    error_label,
    grace_words,
    json_pretty,
    plural,
    until,
    when,
)
from dispatcher.web.problems import Problem

STATIC = resources.files("dispatcher.web") / "static"
NOTICE_COOKIE = "dispatcher_notice"
# Sent by app.js when it submits a dialog's form itself: a redirect then becomes a 200 naming
# the next page, so the notice cookie survives until the browser actually goes there.
FETCH_HEADER = "X-Console-Fetch"
LOCATION_HEADER = "X-Console-Location"

# What a notice code says after a change. Codes, not text, travel in the cookie, so nothing a
# third party could plant there is ever shown.
NOTICES = {
    "created": "Webhook added. It is active now; give its signing secret to the receiver.",
    "created_refused": "Webhook added, but its URL resolves to an address the daemon refuses"
    " (not a public address); add that network to allowed_networks to permit it.",
    "saved": "Changes saved.",
    "saved_refused": "Changes saved, but the URL resolves to an address the daemon refuses"
    " (not a public address); add that network to allowed_networks to permit it.",
    "events": "Event list saved.",
    "removed": "Event type removed.",
    "enabled": "Webhook enabled. It receives events published from now on.",
    "disabled": "Webhook disabled. {n} pending {deliveries} cancelled.",
    "rotated": "Secret rotated. Receivers must verify with the new secret from now on.",
    "rotated_grace": "Secret rotated. The old secret also signs for the next {grace}.",
    "deleted": "Webhook deleted. {n} pending {deliveries} cancelled; the delivery log stays.",
    "resent": "Event sent again as this new delivery.",
    "recovered": "{n} failed {deliveries} queued again.",
}


def setup_templates(app: web.Application) -> None:
    """Give `app` the console's Jinja environment: autoescaped, strict about missing names."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("dispatcher.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        default_helpers=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static"] = static_url
    env.filters["when"] = when
    env.filters["ago"] = ago
    env.filters["age"] = age
    env.filters["until"] = until
    env.filters["error_label"] = error_label
    env.filters["retry_text"] = retry_text
    env.filters["plural"] = plural
    env.filters["json_pretty"] = json_pretty


@functools.cache
def static_url(name: str) -> str:
    """Return the URL of a packaged static file, versioned by its content for caching."""
    digest = hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:10]
    return f"/static/{name}?v={digest}"


def notice_text(code: str) -> str | None:
    name, _, value = code.partition(":")
    template = NOTICES.get(name)
    if template is None:
        return None
    if name == "rotated_grace":
        try:
            return template.format(grace=grace_words(timedelta(seconds=int(value))))
        except ValueError:
            return None
    n = int(value) if value.isdigit() else 0
    return template.format(n=n, deliveries="delivery was" if n == 1 else "deliveries were")


async def render(
    request: web.Request, template: str, context: Mapping[str, Any], status: int = 200
) -> web.Response:
    """Render a page with what the layout needs: who is signed in, the CSRF token, a notice."""
    who = principal(request) if PRINCIPAL in request else None
    code = request.cookies.get(NOTICE_COOKIE)
    page = {
        "who": who,
        "can_write": who is not None and not who.read_only,
        "csrf_token": who.csrf_token if who is not None else None,
        "notice": notice_text(code) if code else None,
        "path": request.path,
        "section": "",
        **context,
    }
    response = aiohttp_jinja2.render_template(template, request, page, status=status)
    if code:
        response.del_cookie(NOTICE_COOKIE, path="/")
    return response


async def saved_notice(request: web.Request, code: str, url: str) -> str:
    """`code`, or its _refused form when the daemon would refuse the URL as it resolves now."""
    refused = await target_warning(url, request.app[SETTINGS].allowed)
    return f"{code}_refused" if refused else code


def see_other(request: web.Request, location: str, notice: str | None = None) -> web.Response:
    """Send the browser on to `location` after a change, with a notice for the next page."""
    if request.headers.get(FETCH_HEADER):
        response = web.Response(status=200, headers={LOCATION_HEADER: location})
    else:
        response = web.Response(status=303, headers={"Location": location})
    if notice is not None:
        set_cookie(request, response, NOTICE_COOKIE, notice, max_age=60)
    return response


def set_cookie(
    request: web.Request, response: web.StreamResponse, name: str, value: str, max_age: int
) -> None:
    """Set a console cookie: HttpOnly, SameSite=Strict, and Secure if web_secure_cookie."""
    response.set_cookie(
        name,
        value,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.app[SETTINGS].web_secure_cookie,
        max_age=max_age,
    )


async def form_of(request: web.Request) -> dict[str, str]:
    """Return a posted form's single-valued fields (stripped of nothing: validation trims)."""
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def form_list(request: web.Request, name: str) -> list[str]:
    form = await request.post()
    return [v for v in form.getall(name, []) if isinstance(v, str)]


def int_id(request: web.Request, name: str = "id") -> int:
    """Return an id from the path; one that cannot name a row is not found."""
    text = request.match_info[name]
    value = parse_id(text)
    if value is None:
        raise NotFound(f"{name} {text} does not exist")
    return value


# One per app: the console's 24 h figures, counted once and kept (see OutcomeHistory).
OUTCOME_HISTORY = web.AppKey("outcome_history", OutcomeHistory)


def pool(request: web.Request) -> asyncpg.Pool:
    return request.app[POOL]


def outcome_history(request: web.Request) -> OutcomeHistory:
    return request.app[OUTCOME_HISTORY]


def console_page(handler: Handler) -> Handler:
    """Show a service error as a page in the console's layout instead of plain text."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except NotFound as exc:
            return await error_page(request, 404, "Not found", str(exc))
        except ValidationError as exc:
            return await error_page(request, 422, "That did not work", str(exc))
        except Problem as exc:
            return await error_page(request, exc.status, "Not allowed", exc.detail)

    return wrapped


async def error_page(request: web.Request, status: int, title: str, detail: str) -> web.Response:
    sentence = detail[:1].upper() + detail[1:]
    if not sentence.endswith("."):
        sentence += "."
    return await render(
        request, "error.html", {"title": title, "detail": sentence, "status": status}, status
    )
