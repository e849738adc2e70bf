"""Every route but health needs a token or a console session; secrets stay out of URLs and logs."""

from __future__ import annotations

import re

import asyncpg
import orjson
import pytest
import structlog

from dispatcher.manage import tokens as token_service
from dispatcher.settings import load_settings
from tests.conftest import Cli, WebApp, fast_settings

PUBLIC = {"/healthz"}


def concrete(path: str) -> str:
    """Fill a route's {placeholders} with plausible values."""
    return re.sub(r"\{([^}:]+)(:[^}]*)?\}", lambda m: "1" if "id" in m[1] else "x", path)


async def test_every_route_refuses_a_request_without_credentials(web_app: WebApp) -> None:
    from aiohttp.test_utils import make_mocked_request

    from dispatcher.web.app import create_app

    app = create_app(fast_settings(), web_app.pool)
    routes = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = concrete(info.get("path") or info.get("formatter") or info.get("prefix") or "")
        if path in PUBLIC or path.startswith("/static"):
            continue
        # The filled-in path must reach this very route, not a 404 that also answers 401.
        match = await app.router.resolve(make_mocked_request(route.method, path, app=app))
        assert match.route is route, (route.method, path)
        routes.append((route.method, path))
    # The API's and the console's routes are all in the walk, the sign-in form included.
    for expected in [
        ("POST", "/api/v1/webhooks"),
        ("GET", "/api/v1/webhooks/1/secret"),
        ("GET", "/api/openapi.json"),
        ("GET", "/webhooks/1"),
        ("POST", "/sign-in"),
    ]:
        assert expected in routes
    for method, path in routes:
        status, _, body = await web_app.call(method, path, None)
        assert status == 401, (method, path, status, body)


async def test_health_needs_no_token(web_app: WebApp) -> None:
    status, _, body = await web_app.call("GET", "/healthz", None)
    assert (status, body) == (200, "ok\n")


@pytest.mark.parametrize(
    "header",
    ["Bearer dwt_not-a-token", "Bearer ", "Basic dXNlcjpwYXNz", "dwt_no-scheme"],
)
async def test_a_bad_authorization_header_is_a_401_problem(web_app: WebApp, header: str) -> None:
    status, headers, body = await web_app.call(
        "GET", "/api/v1/webhooks", None, headers={"Authorization": header}
    )
    assert status == 401
    assert headers["Content-Type"].startswith("application/problem+json")
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert body["status"] == 401 and body["detail"]


async def test_a_revoked_token_is_refused_at_once(web_app: WebApp) -> None:
    async with web_app.pool.acquire() as conn:
        new = await token_service.create_token(conn, "short-lived", read_only=False)
        assert (await web_app.call("GET", "/healthz", new.token))[0] == 200
        assert await token_service.authenticate_token(conn, new.token) is not None
        await token_service.revoke_token(conn, new.row["id"])
        assert await token_service.authenticate_token(conn, new.token) is None


async def test_security_headers_on_every_response(web_app: WebApp) -> None:
    for path, token in [("/healthz", None), ("/api/v1/nothing-here", "default"), ("/", None)]:
        _, headers, _ = await web_app.call("GET", path, token)
        assert "default-src 'self'" in headers["Content-Security-Policy"], path
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "same-origin"
        assert headers["X-Content-Type-Options"] == "nosniff"


async def test_tokens_are_stored_hashed(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        new = await token_service.create_token(conn, "ci", read_only=True)
    stored = await db.fetchrow("SELECT * FROM dispatcher.api_tokens WHERE id = $1", new.row["id"])
    assert stored is not None
    assert new.token.encode() not in orjson.dumps({k: str(v) for k, v in stored.items()})
    assert stored["prefix"] == new.token[:10] and stored["read_only"] is True


async def test_tokens_cli_create_list_revoke(cli: Cli, db: asyncpg.Pool) -> None:
    created = await cli.json("tokens", "create", "--name", "deploy bot", "--read-only")
    assert created["token"].startswith("dwt_") and created["read_only"] is True
    listed = await cli.ok("tokens", "list")
    assert "deploy bot" in listed and "read-only" in listed and created["token"] not in listed
    assert "revoked" not in listed
    assert (await cli.ok("tokens", "revoke", str(created["id"]))).startswith("Revoked token")
    assert "revoked" in await cli.ok("tokens", "list")
    async with db.acquire() as conn:
        assert await token_service.authenticate_token(conn, created["token"]) is None
    assert "token 999 does not exist" in await cli.error("tokens", "revoke", "999")
    assert "empty" in await cli.error("tokens", "create", "--name", "  ")


async def test_plain_token_create_prints_only_the_token_on_stdout(cli: Cli) -> None:
    result = await cli("tokens", "create", "--name", "script")
    assert result.exit_code == 0
    assert re.fullmatch(r"dwt_[A-Za-z0-9_-]{43}\n", result.stdout)


async def test_no_request_logs_a_token_or_query_string(web_app: WebApp) -> None:
    with structlog.testing.capture_logs() as logs:
        await web_app.call("GET", "/api/v1/webhooks?secret=hunter2")
        await web_app.call("GET", "/healthz", None)
    text = repr(logs)
    assert web_app.token not in text and "hunter2" not in text
    assert any(entry.get("event") == "http_request" for entry in logs)


def test_web_listen_defaults_to_loopback() -> None:
    assert load_settings(env={}).web_listen == "127.0.0.1:8080"


async def test_an_unreachable_database_is_a_503_problem_not_a_traceback() -> None:
    import socket

    import aiohttp
    from aiohttp import web

    from dispatcher.web.app import create_app

    with socket.socket() as nothing:
        nothing.bind(("127.0.0.1", 0))
        port = nothing.getsockname()[1]
        # min_size=0: the pool opens no connection until a request needs one.
        pool = await asyncpg.create_pool(
            f"postgresql://postgres@127.0.0.1:{port}/postgres", min_size=0, max_size=1
        )
        runner = web.AppRunner(create_app(fast_settings(), pool), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession() as http:
                headers = {"Authorization": "Bearer dwt_anything"}
                async with http.get(url + "/api/v1/webhooks", headers=headers) as resp:
                    body = await resp.json(content_type=None)
                    assert resp.status == 503
                    assert resp.content_type == "application/problem+json"
                    assert body["detail"] == "the database is unreachable; try again shortly"
                async with http.get(url + "/healthz") as resp:
                    assert resp.status == 200
        finally:
            await runner.cleanup()
            await pool.close()
