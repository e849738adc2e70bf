"""The aiohttp application behind `dispatcher web`: authentication, errors, security headers.

The API (`web/api.py`) and the console (`web/console.py`) add their routes to it. Every route
needs a token or a console session, except /healthz and the packaged static files.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import structlog
from aiohttp import web

from dispatcher import store
from dispatcher.delivery.outcomes import describe
from dispatcher.errors import DispatcherError
from dispatcher.manage.admin import AlreadyExists, NotFound
from dispatcher.manage.tokens import Principal, authenticate_session, authenticate_token
from dispatcher.manage.validation import JsonSyntaxError, ValidationError
from dispatcher.settings import Settings
from dispatcher.web.problems import Problem, problem_response

log = structlog.get_logger("dispatcher.web")

POOL = web.AppKey("pool", asyncpg.Pool)
SETTINGS = web.AppKey("settings", Settings)
# Renders the console's sign-in page for an unauthenticated browser request (status 401).
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SIGN_IN_PAGE: web.AppKey[Handler] = web.AppKey("sign_in_page")
PRINCIPAL = web.RequestKey("principal", Principal)
SESSION_COOKIE = "dispatcher_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECURITY_HEADERS = {
    # No inline script or style anywhere: the console's JS and CSS are packaged static files.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none';"
        " form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer Chromium sends `Origin: null` on form posts,
    # which the CSRF check must refuse. Other sites still get no referrer.
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def public(handler: Handler) -> Handler:
    """Mark a handler that runs without credentials; it must check what it is given itself."""
    handler.public = True  # type: ignore[attr-defined]
    return handler


def principal(request: web.Request) -> Principal:
    """Who the request acts as (set by the auth middleware)."""
    return request[PRINCIPAL]


def require_write(request: web.Request, what: str = "this") -> Principal:
    """Refuse a read-only token: 403 for changes and for secrets."""
    who = principal(request)
    if who.read_only:
        raise Problem(403, f"token {who.name!r} is read-only: it cannot {what}")
    return who


def is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


async def _authenticate(request: web.Request) -> Principal | None:
    pool = request.app[POOL]
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(401, "the Authorization header must be 'Bearer <token>'")
        async with pool.acquire() as conn:
            who = await authenticate_token(conn, token.strip())
        if who is None:
            raise Problem(401, "the bearer token is unknown or revoked")
        return who
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        async with pool.acquire() as conn:
            return await authenticate_session(conn, session_id)
    return None


def _check_csrf(request: web.Request, who: Principal, form_token: str | None) -> None:
    """A cookie-authenticated change must carry the session's CSRF token."""
    if who.csrf_token is None or request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER) or form_token
    if sent != who.csrf_token:
        raise Problem(403, "the form's CSRF token is missing or stale; reload the page")


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a problem document (API) or a plain page; never a traceback."""
    try:
        return await handler(request)
    except Problem as exc:
        return _error(request, exc.status, exc.detail, **exc.extensions)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        return _error(request, exc.status, detail or exc.reason, headers=exc.headers)
    except NotFound as exc:
        return _error(request, 404, str(exc))
    except AlreadyExists as exc:
        return _error(request, 409, str(exc))
    except JsonSyntaxError as exc:
        return _error(request, 400, str(exc))
    except ValidationError as exc:
        return _error(request, 422, str(exc))
    except (asyncpg.CheckViolationError, asyncpg.NotNullViolationError) as exc:
        return _error(request, 422, f"rejected by the database: {_first_line(exc)}")
    except (asyncpg.UniqueViolationError, asyncpg.ForeignKeyViolationError) as exc:
        return _error(request, 409, f"conflict: {_first_line(exc)}")
    except asyncpg.DataError as exc:
        # A value PostgreSQL cannot hold (out of range, bad encoding) that no check caught.
        return _error(request, 422, f"rejected by the database: {_first_line(exc)}")
    except DispatcherError as exc:
        return _error(request, 400, str(exc))
    except store.TRANSIENT_DB_ERRORS as exc:
        log.warning("database_unavailable", path=request.path, error=describe(exc))
        return _error(request, 503, "the database is unreachable; try again shortly")
    except Exception:
        log.exception("request_failed", method=request.method, path=request.path)
        return _error(request, 500, "an internal error occurred; the server log has the details")


def _first_line(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return str(message).splitlines()[0]


def _error(
    request: web.Request, status: int, detail: str, headers: Any = None, **extensions: Any
) -> web.Response:
    """A problem document for the API; the same words as plain text for a browser."""
    if is_api(request):
        response = problem_response(status, detail, instance=request.path, **extensions)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="webhook-dispatcher"'
    else:
        response = web.Response(status=status, text=f"{status}: {detail}\n")
    if headers and "Allow" in headers:
        response.headers["Allow"] = headers["Allow"]
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Let a request through only with a valid token or session (health and static aside)."""
    if request.path == "/healthz" or request.path.startswith("/static/"):
        return await handler(request)
    if getattr(_handler_of(request), "public", False):
        return await handler(request)
    who = await _authenticate(request)
    if who is None:
        if not is_api(request) and SIGN_IN_PAGE in request.app:
            sign_in_page: Handler = request.app[SIGN_IN_PAGE]
            return await sign_in_page(request)
        raise Problem(
            401, "sign in: send 'Authorization: Bearer <token>' (dispatcher tokens create)"
        )
    request[PRINCIPAL] = who
    form_token = None
    if who.csrf_token is not None and request.method not in SAFE_METHODS:
        if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            value = form.get(CSRF_FIELD)
            form_token = value if isinstance(value, str) else None
        # Host only: behind a TLS proxy the scheme seen here is http while the Origin says https.
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            raise Problem(403, "cross-origin request refused")
    _check_csrf(request, who, form_token)
    if (
        who.read_only
        and request.method not in SAFE_METHODS
        and not getattr(_handler_of(request), "read_only_ok", False)
    ):
        raise Problem(403, f"token {who.name!r} is read-only: it cannot change anything")
    return await handler(request)


def read_only_ok(handler: Handler) -> Handler:
    """Mark a state-changing route a read-only principal may still use (signing out)."""
    handler.read_only_ok = True  # type: ignore[attr-defined]
    return handler


def _handler_of(request: web.Request) -> Any:
    return request.match_info.handler


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith("/static/"):
        # Pages and API answers may hold secrets: no cache keeps them.
        response.headers.setdefault("Cache-Control", "no-store")


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Log method, path (never the query string or headers), status and duration."""
    started = time.perf_counter()
    response = await handler(request)
    log.info(
        "http_request",
        method=request.method,
        path=request.path,
        status=response.status,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def create_app(settings: Settings, pool: asyncpg.Pool) -> web.Application:
    """Build the app: middlewares, /healthz, then the API's and the console's routes."""
    from dispatcher.web import api, console

    app = web.Application(
        middlewares=[access_log_middleware, errors_middleware, auth_middleware],
        client_max_size=settings.max_payload_bytes + 65536,
    )
    app[POOL] = pool
    app[SETTINGS] = settings
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/healthz", healthz)
    api.setup(app)
    console.setup(app)
    return app
