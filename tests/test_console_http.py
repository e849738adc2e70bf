"""The console over plain HTTP: sign-in, cookies, CSRF, read-only principals, escaping, errors.

No browser here: these check what the server sends. The flows a person clicks through are in
test_console_browser.py.
"""

from __future__ import annotations

import html
import re
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from dispatcher.manage import admin
from dispatcher.web.app import SESSION_COOKIE, create_app
from tests.conftest import WebApp, add_webhook, fast_settings
from tests.console_support import Attempt, Session, console_session, csrf_in, insert_delivery

HOSTILE = "<script>alert(1)</script>"


async def get(
    web_app: WebApp, path: str, session: Session | None = None, **headers: str
) -> tuple[int, Any, str]:
    sent = {**(session.cookie if session else {}), **headers}
    async with web_app.http.get(web_app.url + path, headers=sent, allow_redirects=False) as r:
        return r.status, r.headers, await r.text()


async def post(
    web_app: WebApp,
    path: str,
    form: dict[str, str],
    session: Session | None = None,
    **headers: str,
) -> tuple[int, Any, str]:
    sent = {**(session.cookie if session else {}), **headers}
    async with web_app.http.post(
        web_app.url + path, data=form, headers=sent, allow_redirects=False
    ) as r:
        return r.status, r.headers, await r.text()


# --- signing in ---------------------------------------------------------------------------


async def test_every_page_asks_an_unauthenticated_browser_to_sign_in(web_app: WebApp) -> None:
    for path in ("/", "/webhooks", "/webhooks/1?dialog=edit", "/deliveries", "/deliveries/7"):
        status, headers, page = await get(web_app, path)
        assert status == 401, path
        assert headers["Content-Type"].startswith("text/html")
        assert '<label for="token">API token</label>' in page
        assert 'type="password"' in page
        assert f'name="next" value="{html.escape(path)}"' in page


async def test_a_wrong_token_is_a_401_with_the_form_and_no_cookie(web_app: WebApp) -> None:
    status, headers, page = await post(web_app, "/sign-in", {"token": "dwt_wrong", "next": "/"})
    assert status == 401
    assert "unknown or revoked" in page and 'role="alert"' in page
    assert "Set-Cookie" not in headers


async def test_signing_in_sets_a_strict_http_only_session_cookie(web_app: WebApp) -> None:
    status, headers, _ = await post(
        web_app, "/sign-in", {"token": web_app.token, "next": "/deliveries?status=failed"}
    )
    assert status == 303
    assert headers["Location"] == "/deliveries?status=failed"
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie
    session_id = cookie.split(";")[0].split("=", 1)[1]
    status, _, page = await get(web_app, "/webhooks", Session(session_id, ""))
    assert status == 200 and re.search(r"Signed in as </span>\s*tests\s*</span>", page)


async def test_the_session_cookie_is_secure_when_configured(web_app: WebApp) -> None:
    app = create_app(fast_settings(web_secure_cookie=True), web_app.pool)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("/sign-in"))
        async with web_app.http.post(
            url, data={"token": web_app.token}, allow_redirects=False
        ) as response:
            assert response.status == 303
            assert "Secure" in response.headers["Set-Cookie"]


@pytest.mark.parametrize(
    "wanted",
    ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)", ""],
)
async def test_sign_in_only_returns_to_a_page_on_this_site(web_app: WebApp, wanted: str) -> None:
    status, headers, _ = await post(web_app, "/sign-in", {"token": web_app.token, "next": wanted})
    assert (status, headers["Location"]) == (303, "/")


async def test_a_sign_in_posted_from_another_site_is_refused(web_app: WebApp) -> None:
    status, headers, _ = await post(
        web_app, "/sign-in", {"token": web_app.token}, Origin="https://evil.example"
    )
    assert status == 403 and "Set-Cookie" not in headers


async def test_signing_out_ends_the_session(web_app: WebApp) -> None:
    session = await console_session(web_app.pool, web_app.token)
    status, headers, _ = await post(
        web_app, "/sign-out", {"csrf_token": session.csrf_token}, session
    )
    assert status == 303 and f'{SESSION_COOKIE}=""' in headers["Set-Cookie"]
    assert (await get(web_app, "/webhooks", session))[0] == 401


# --- CSRF and read-only principals ----------------------------------------------------------


async def test_a_change_without_the_csrf_token_is_refused(web_app: WebApp) -> None:
    webhook_id, _ = await add_webhook(web_app.pool, "https://example.com/h", ["a.b"])
    session = await console_session(web_app.pool, web_app.token)
    path = f"/webhooks/{webhook_id}/status"
    for form in ({"status": "disabled"}, {"status": "disabled", "csrf_token": "stale"}):
        status, _, body = await post(web_app, path, form, session)
        assert status == 403, body
    assert await web_app.pool.fetchval("SELECT status FROM dispatcher.webhooks") == "active"
    status, headers, _ = await post(
        web_app, path, {"status": "disabled", "csrf_token": session.csrf_token}, session
    )
    assert (status, headers["Location"]) == (303, f"/webhooks/{webhook_id}")
    assert await web_app.pool.fetchval("SELECT status FROM dispatcher.webhooks") == "disabled"


async def test_a_read_only_session_sees_no_secret_and_no_change_controls(web_app: WebApp) -> None:
    webhook_id, secret = await add_webhook(web_app.pool, "https://example.com/h", ["a.b"])
    session = await console_session(web_app.pool, web_app.read_only_token)
    for path in ("/webhooks", f"/webhooks/{webhook_id}", f"/webhooks/{webhook_id}?dialog=edit"):
        status, _, page = await get(web_app, path, session)
        assert status == 200
        assert secret not in page
        assert "Read-only" in page
        assert "<dialog" not in page and "New webhook" not in page
        # The only form a read-only person gets is the one that signs them out.
        assert page.count("<form") == 1 and 'action="/sign-out"' in page
    # A forged change, CSRF token and all, is still refused.
    for path in ("status", "secret", "delete", "rotate-secret"):
        status, _, _ = await post(
            web_app,
            f"/webhooks/{webhook_id}/{path}",
            {"status": "disabled", "grace": "0", "csrf_token": session.csrf_token},
            session,
        )
        assert status == 403, path
    row = await web_app.pool.fetchrow("SELECT status, secret FROM dispatcher.webhooks")
    assert row is not None and (row["status"], row["secret"]) == ("active", secret)


# --- pages, escaping, errors ------------------------------------------------------------------


async def test_hostile_text_is_escaped_everywhere(web_app: WebApp) -> None:
    webhook_id, _ = await add_webhook(
        web_app.pool, f"https://example.com/?q={HOSTILE}", ["a.b"], name=HOSTILE
    )
    delivery = await insert_delivery(
        web_app.pool,
        webhook_id,
        "a.b",
        "failed",
        timedelta(minutes=5),
        [Attempt(500, "http_status", body=f"<html><body>{HOSTILE}</body></html>")],
    )
    session = await console_session(web_app.pool, web_app.token)
    pages = ["/webhooks", f"/webhooks/{webhook_id}", "/deliveries", f"/deliveries/{delivery}"]
    for path in pages:
        status, _, page = await get(web_app, path, session)
        assert status == 200, path
        assert HOSTILE not in page, path
        assert html.escape(HOSTILE) in page or html.escape(HOSTILE, quote=False) in page, path


async def test_an_unknown_webhook_is_a_404_page_in_the_layout(web_app: WebApp) -> None:
    session = await console_session(web_app.pool, web_app.token)
    for path in ("/webhooks/999", "/deliveries/999", "/webhooks/99999999999999999999"):
        status, headers, page = await get(web_app, path, session)
        assert status == 404, path
        assert headers["Content-Type"].startswith("text/html")
        assert "does not exist" in page and "Traceback" not in page
        assert 'href="/webhooks"' in page


async def test_without_js_a_failed_form_comes_back_open_with_its_values(web_app: WebApp) -> None:
    session = await console_session(web_app.pool, web_app.token)
    form = {
        "csrf_token": session.csrf_token,
        "service_name": "Billing",
        "url": "ftp://billing.example/hooks",
        "description": "kept",
        "other_types": "invoice.paid",
    }
    status, _, page = await post(web_app, "/webhooks", form, session)
    assert status == 422
    assert '<dialog id="new-webhook"' in page and "data-modal open>" in page
    assert "the scheme must be http or https" in page
    assert 'value="ftp://billing.example/hooks"' in page and 'value="invoice.paid"' in page
    assert ">kept</textarea>" in page
    assert await web_app.pool.fetchval("SELECT count(*) FROM dispatcher.webhooks") == 0

    form["url"] = "https://billing.example/hooks"
    status, headers, _ = await post(web_app, "/webhooks", form, session)
    webhook_id = await web_app.pool.fetchval("SELECT id FROM dispatcher.webhooks")
    assert (status, headers["Location"]) == (303, f"/webhooks/{webhook_id}")
    notice = headers["Set-Cookie"].split(";")[0]
    _, _, page = await get(
        web_app, headers["Location"], Cookie=f"{session.cookie['Cookie']}; {notice}"
    )
    assert "Webhook added" in page


async def test_saving_a_url_the_daemon_would_refuse_says_so(web_app: WebApp) -> None:
    session = await console_session(web_app.pool, web_app.token)
    form = {
        "csrf_token": session.csrf_token,
        "service_name": "Intranet",
        "url": "http://10.1.2.3/hooks",  # private; the test settings allow 127.0.0.0/8 only
        "other_types": "invoice.paid",
    }
    status, headers, _ = await post(web_app, "/webhooks", form, session)
    assert status == 303
    assert "dispatcher_notice=created_refused" in headers["Set-Cookie"]
    notice = headers["Set-Cookie"].split(";")[0]
    _, _, page = await get(
        web_app, headers["Location"], Cookie=f"{session.cookie['Cookie']}; {notice}"
    )
    assert "resolves to an address the daemon refuses" in page and "allowed_networks" in page

    edit = {"csrf_token": session.csrf_token, "url": "http://127.0.0.1:9/h", "service_name": "I"}
    _, headers, _ = await post(web_app, f"{headers['Location']}/edit", edit, session)
    assert "dispatcher_notice=saved;" in headers["Set-Cookie"]
    edit["url"] = "http://[::1]/h"
    _, headers, _ = await post(web_app, f"{headers['Location']}/edit", edit, session)
    assert "dispatcher_notice=saved_refused" in headers["Set-Cookie"]


async def test_dialogs_open_from_a_link_without_js(web_app: WebApp) -> None:
    webhook_id, _ = await add_webhook(web_app.pool, "https://example.com/h", ["a.b", "c.d"])
    session = await console_session(web_app.pool, web_app.token)
    for name in ("edit", "events", "test", "delete", "status", "rotate", "remove-event-1"):
        _, _, page = await get(web_app, f"/webhooks/{webhook_id}?dialog={name}", session)
        assert f'<dialog id="{name}"' in page
        opened = page.split(f'<dialog id="{name}"', 1)[1].split(">", 1)[0]
        assert opened.endswith(" open"), name
    _, _, page = await get(web_app, f"/webhooks/{webhook_id}?dialog=remove-event-2", session)
    assert " open>" not in page


async def test_a_change_submitted_by_the_console_script_names_the_next_page(
    web_app: WebApp,
) -> None:
    webhook_id, _ = await add_webhook(web_app.pool, "https://example.com/h", ["a.b"])
    session = await console_session(web_app.pool, web_app.token)
    status, headers, _ = await post(
        web_app,
        f"/webhooks/{webhook_id}/delete",
        {},
        session,
        **{"X-Console-Fetch": "1", "X-CSRF-Token": session.csrf_token},
    )
    assert status == 200 and headers["X-Console-Location"] == "/"
    assert "dispatcher_notice=deleted:0" in headers["Set-Cookie"]


async def test_static_files_need_no_session(web_app: WebApp) -> None:
    for name, kind in (("app.css", "text/css"), ("app.js", "javascript")):
        status, headers, _ = await get(web_app, f"/static/{name}")
        assert status == 200 and kind in headers["Content-Type"]


async def test_pages_carry_the_session_csrf_token(web_app: WebApp) -> None:
    session = await console_session(web_app.pool, web_app.token)
    _, _, page = await get(web_app, "/webhooks", session)
    assert csrf_in(page) == session.csrf_token


async def test_ids_are_unique_and_every_label_points_at_one(web_app: WebApp) -> None:
    async with web_app.pool.acquire() as conn:
        await admin.add_event_type(conn, "a.b", "", None)
    webhook_id, _ = await add_webhook(web_app.pool, "https://example.com/h", ["a.b", "c.d"])
    delivery = await insert_delivery(
        web_app.pool, webhook_id, "a.b", "failed", timedelta(minutes=1), [Attempt(500)]
    )
    session = await console_session(web_app.pool, web_app.token)
    pages = [
        "/webhooks",
        f"/webhooks/{webhook_id}",
        "/deliveries",
        "/deliveries/recover?recover_since=24h",
        f"/deliveries/{delivery}",
        "/event-types",
    ]
    for path in pages:
        _, _, page = await get(web_app, path, session)
        ids = re.findall(r'\sid="([^"]+)"', page)
        assert len(ids) == len(set(ids)), (path, sorted(i for i in ids if ids.count(i) > 1))
        references = re.findall(r'\s(?:for|aria-labelledby|aria-controls|list)="([^"]+)"', page)
        missing = {r for ref in references for r in ref.split() if r not in ids}
        assert not missing, (path, missing)
