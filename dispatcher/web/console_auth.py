"""Signing in to the console with an API token, and signing out."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from dispatcher.manage.tokens import SESSION_LIFETIME, authenticate_token, end_session, open_session
from dispatcher.web.app import SESSION_COOKIE, public, read_only_ok
from dispatcher.web.console_render import form_of, pool, render, set_cookie
from dispatcher.web.problems import Problem

log = structlog.get_logger("dispatcher.web")

# Where a signed-in person may be sent back to: a path on this site, never `//host` or `/\host`
# (browsers read both as another host), with nothing but printable ASCII.
_LOCAL_PATH = re.compile(r"/(?![/\\])[\x21-\x7e]*")


def local_path(target: str | None) -> str:
    """Return `target` if it is a path on this site, else "/"."""
    if target and _LOCAL_PATH.fullmatch(target) and "\\" not in target:
        return target
    return "/"


async def sign_in_page(request: web.Request) -> web.StreamResponse:
    """Ask an unauthenticated browser for a token (401), remembering the page it wanted."""
    wanted = request.path_qs if request.method == "GET" else "/"
    if request.path in ("/sign-in", "/sign-out"):
        wanted = "/"
    return await _form(request, local_path(wanted), error=None)


async def _form(request: web.Request, next_path: str, error: str | None) -> web.Response:
    return await render(
        request, "sign_in.html", {"next_path": next_path, "error": error}, status=401
    )


@public
async def sign_in(request: web.Request) -> web.StreamResponse:
    """Check the token; on success open a session and go where the person was heading.

    A sign-in posted from another site is refused: it could sign a person in as someone else.
    """
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise Problem(403, "cross-origin sign-in refused")
    form = await form_of(request)
    next_path = local_path(form.get("next"))
    token = form.get("token", "").strip()
    if not token:
        return await _form(request, next_path, "Enter an API token.")
    async with pool(request).acquire() as conn:
        who = await authenticate_token(conn, token)
        if who is None:
            log.info("console_sign_in_refused")
            return await _form(request, next_path, "That token is unknown or revoked.")
        session_id, _ = await open_session(conn, who)
    log.info("console_signed_in", token_id=who.token_id)
    response = web.Response(status=303, headers={"Location": next_path})
    set_cookie(request, response, SESSION_COOKIE, session_id, int(SESSION_LIFETIME.total_seconds()))
    return response


async def already_signed_in(request: web.Request) -> web.StreamResponse:
    """GET /sign-in with a live session: nothing to do but go home."""
    raise web.HTTPSeeOther("/")


@read_only_ok
async def sign_out(request: web.Request) -> web.StreamResponse:
    """End the session in the database, then drop the cookie."""
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        async with pool(request).acquire() as conn:
            await end_session(conn, session_id)
    response = web.Response(status=303, headers={"Location": "/"})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response
