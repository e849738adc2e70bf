"""The console's safeguards in headless Chromium: read-only sessions, CSRF, hostile text, and
every flow still working with JavaScript off."""

from __future__ import annotations

import re

import pytest
from aiohttp import web
from playwright.async_api import Browser, Dialog, expect

from tests.browser_support import browser_fixture  # noqa: F401
from tests.conftest import Receiver, WebApp, add_webhook
from tests.console_support import signed_in

pytestmark = pytest.mark.browser
HOSTILE = "<script>alert(1)</script>"


async def test_hostile_names_and_bodies_stay_text(
    browser: Browser, web_app: WebApp, receiver: Receiver
) -> None:
    async def answer(request: web.Request, _: Receiver) -> web.Response:
        page = f"<html><body><img src=x onerror=alert(2)>{HOSTILE}</body></html>"
        return web.Response(text=page, content_type="text/html", status=500)

    receiver.handler = answer
    webhook_id, _ = await add_webhook(
        web_app.pool, receiver.url + f"/?q={HOSTILE}", ["x.y"], name=HOSTILE
    )
    await web_app.pool.execute(
        "UPDATE dispatcher.webhooks SET description = $1", f"<b onmouseover=alert(3)>{HOSTILE}"
    )
    console = await signed_in(browser, web_app.url, web_app.token)
    page = console.page
    alerts: list[str] = []

    async def refuse(dialog: Dialog) -> None:
        alerts.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", refuse)
    await page.reload()
    await expect(page.get_by_role("link", name=HOSTILE)).to_be_visible()
    await page.get_by_role("link", name=HOSTILE).click()
    await expect(page.get_by_role("heading", name=HOSTILE)).to_be_visible()
    await expect(
        page.locator("main").get_by_text(f"<b onmouseover=alert(3)>{HOSTILE}")
    ).to_be_visible()
    await page.get_by_label("Webhook actions").click()
    await page.get_by_role("button", name="Send test event").click()
    await (
        page.get_by_role("dialog", name="Send a test event")
        .get_by_role("button", name="Send test event")
        .click()
    )
    result = page.get_by_role("dialog", name="Test event failed")
    await expect(result.get_by_label("Response body")).to_contain_text(
        f"<img src=x onerror=alert(2)>{HOSTILE}"
    )
    await page.goto(f"{web_app.url}/deliveries?webhook={webhook_id}")
    await page.get_by_role("link", name=re.compile(r"^#\d+")).first.click()
    await expect(page.get_by_label("Response body of attempt 1")).to_contain_text(HOSTILE)
    assert await page.locator("script:not([src])").count() == 0
    assert alerts == []
    console.assert_quiet()


async def test_a_read_only_session_sees_no_secret_and_cannot_change_anything(
    browser: Browser, web_app: WebApp
) -> None:
    webhook_id, secret = await add_webhook(web_app.pool, "https://example.com/h", ["a.b"], "Shop")
    console = await signed_in(browser, web_app.url, web_app.read_only_token)
    page = console.page
    await expect(page.get_by_text("Read-only", exact=True)).to_be_visible()
    await expect(page.get_by_role("button", name="+ New webhook")).to_have_count(0)
    await page.get_by_role("link", name="Shop").click()
    await expect(page.get_by_text("is read-only and cannot see secrets")).to_be_visible()
    assert secret not in await page.content()
    for name in ("Reveal", "Copy", "Rotate…", "Edit events"):
        await expect(page.get_by_role("button", name=name)).to_have_count(0)
    await expect(page.get_by_label("Webhook actions")).to_have_count(0)
    await expect(page.get_by_role("dialog")).to_have_count(0)

    # A forged change from the page itself, with the session's cookie: refused.
    status = await page.evaluate(
        """async (path) => {
            const response = await fetch(path, {method: "POST",
                headers: {"Content-Type": "application/x-www-form-urlencoded"},
                body: "status=disabled"});
            return response.status;
        }""",
        f"/webhooks/{webhook_id}/status",
    )
    assert status == 403
    assert await web_app.pool.fetchval("SELECT status FROM dispatcher.webhooks") == "active"
    console.assert_quiet()


async def test_a_post_without_the_csrf_token_is_refused(browser: Browser, web_app: WebApp) -> None:
    webhook_id, _ = await add_webhook(web_app.pool, "https://example.com/h", ["a.b"], "Shop")
    console = await signed_in(browser, web_app.url, web_app.token)
    status = await console.page.evaluate(
        """async (path) => (await fetch(path, {method: "POST",
            headers: {"Content-Type": "application/x-www-form-urlencoded"},
            body: "status=disabled"})).status""",
        f"/webhooks/{webhook_id}/status",
    )
    assert status == 403
    assert await web_app.pool.fetchval("SELECT status FROM dispatcher.webhooks") == "active"


async def test_without_javascript_every_dialog_is_a_page_and_still_works(
    browser: Browser, web_app: WebApp
) -> None:
    console = await signed_in(browser, web_app.url, web_app.token, javascript=False)
    page = console.page
    await page.get_by_role("link", name="+ New webhook").first.click()
    await expect(page).to_have_url(web_app.url + "/webhooks?dialog=new-webhook")
    dialog = page.get_by_role("dialog", name="New webhook")
    await dialog.get_by_label("Service name").fill("Plain")
    await dialog.get_by_label("Endpoint URL").fill("not-a-url")
    await dialog.get_by_label("Event types").fill("a.b, c.d")
    await dialog.get_by_role("button", name="Add").click()
    await expect(dialog.get_by_role("alert")).to_contain_text("the scheme must be http or https")
    await expect(dialog.get_by_label("Event types")).to_have_value("a.b, c.d")
    await dialog.get_by_label("Endpoint URL").fill("https://plain.example/h")
    await dialog.get_by_role("button", name="Add").click()
    await expect(page.get_by_role("heading", name="Plain")).to_be_visible()
    webhook_id = await web_app.pool.fetchval("SELECT id FROM dispatcher.webhooks")

    await page.get_by_role("link", name=re.compile("^Status: Active")).click()
    await (
        page.get_by_role("dialog", name="Disable Plain?")
        .get_by_role("button", name="Disable webhook")
        .click()
    )
    await expect(page).to_have_url(f"{web_app.url}/webhooks/{webhook_id}")
    await expect(page.get_by_role("status")).to_contain_text("Webhook disabled")
    assert await web_app.pool.fetchval("SELECT status FROM dispatcher.webhooks") == "disabled"

    # The secret shows after a POST, so it never appears in a URL.
    secret = await web_app.pool.fetchval("SELECT secret FROM dispatcher.webhooks")
    await page.get_by_role("button", name="Reveal").click()
    await expect(page.get_by_text(secret)).to_be_visible()
    assert secret not in page.url
