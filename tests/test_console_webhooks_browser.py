"""The webhooks part of the console, driven in headless Chromium as a person would use it.

Each test signs in through the form, clicks through a flow, and checks the page, the database
and, where a request goes out, the receiver.
"""

from __future__ import annotations

import re

import pytest
from aiohttp import web
from playwright.async_api import Browser, expect
from standardwebhooks.webhooks import Webhook

from dispatcher.manage import admin
from tests.browser_support import browser_fixture  # noqa: F401
from tests.conftest import Receiver, WebApp, add_webhook, publish
from tests.console_support import signed_in

pytestmark = pytest.mark.browser
HOSTILE = "<script>alert(1)</script>"


async def catalog(web_app: WebApp, *names: str) -> None:
    async with web_app.pool.acquire() as conn:
        for name in names:
            await admin.add_event_type(conn, name, f"When {name} happens", None)


async def test_a_wrong_token_is_refused_then_the_right_one_signs_in(
    browser: Browser, web_app: WebApp
) -> None:
    page = await browser.new_page()
    page.set_default_timeout(5000)
    response = await page.goto(web_app.url + "/deliveries?status=failed")
    assert response is not None and response.status == 401
    await page.get_by_label("API token").fill("dwt_not-a-real-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("That token is unknown or revoked.")
    await page.get_by_label("API token").fill(web_app.token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(web_app.url + "/deliveries?status=failed")
    await expect(page.get_by_role("heading", name="Delivery log")).to_be_visible()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("API token")).to_be_visible()


async def test_add_a_webhook_from_the_dialog(browser: Browser, web_app: WebApp) -> None:
    await catalog(web_app, "invoice.paid", "invoice.created", "customer.created")
    console = await signed_in(browser, web_app.url, web_app.token)
    page = console.page
    await expect(page.get_by_role("heading", name="No webhooks yet")).to_be_visible()

    await page.get_by_role("button", name="+ New webhook").first.click()
    dialog = page.get_by_role("dialog", name="New webhook")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_label("Service name")).to_be_focused()
    await dialog.get_by_label("Service name").fill("Billing")
    await dialog.get_by_label("Endpoint URL").fill("ftp://billing.example/hooks")
    await dialog.get_by_label("Description (optional)").fill("Marks invoices paid")
    await dialog.get_by_label("invoice.paid").check()
    await dialog.get_by_label("Other event types").fill("billing.refunded")
    await dialog.get_by_role("button", name="Add").click()

    # The errors come back in the dialog, one at a time, with everything typed still there.
    await expect(dialog.get_by_role("alert")).to_contain_text("the scheme must be http or https")
    await expect(dialog.get_by_label("Endpoint URL")).to_have_attribute("aria-invalid", "true")
    await expect(dialog.get_by_label("Service name")).to_have_value("Billing")
    await expect(dialog.get_by_label("invoice.paid")).to_be_checked()
    await dialog.get_by_label("Endpoint URL").fill("https://billing.example/hooks")
    await dialog.get_by_role("button", name="Add").click()
    await expect(dialog.get_by_role("alert")).to_contain_text(
        "billing.refunded is not in the event-type catalog"
    )
    await dialog.get_by_label("Allow event types that are not in the catalog").check()
    await dialog.get_by_role("button", name="Add").click()

    await expect(page.get_by_role("heading", name="Billing", exact=True)).to_be_visible()
    await expect(page.get_by_role("status")).to_contain_text("Webhook added")
    row = await web_app.pool.fetchrow("SELECT * FROM dispatcher.webhooks")
    assert row is not None
    assert (row["service_name"], row["url"], row["description"], row["status"]) == (
        "Billing",
        "https://billing.example/hooks",
        "Marks invoices paid",
        "active",
    )
    assert row["event_types"] == ["invoice.paid", "billing.refunded"]
    assert page.url == f"{web_app.url}/webhooks/{row['id']}"
    # The new webhook's secret shows at once, to hand to the receiver.
    await expect(page.get_by_text(row["secret"])).to_be_visible()
    await expect(page.get_by_role("button", name="Hide")).to_be_visible()

    await page.get_by_role("link", name="Webhooks", exact=True).first.click()
    listed = page.get_by_role("row", name=re.compile("Billing"))
    await expect(listed).to_contain_text("https://billing.example/hooks")
    await expect(listed).to_contain_text("Active")
    console.assert_quiet()


async def test_details_reveal_the_secret_without_putting_it_in_a_url(
    browser: Browser, web_app: WebApp
) -> None:
    webhook_id, secret = await add_webhook(web_app.pool, "https://example.com/h", ["a.b"], "Shop")
    console = await signed_in(browser, web_app.url, web_app.token)
    page = console.page
    visited: list[str] = []
    page.on("request", lambda request: visited.append(request.url))

    # The whole row opens the details, not only the name.
    await (
        page.get_by_role("row", name=re.compile("Shop"))
        .get_by_text("https://example.com/h")
        .click()
    )
    await expect(page).to_have_url(f"{web_app.url}/webhooks/{webhook_id}")
    await expect(page.get_by_text(secret)).to_be_hidden()
    await page.get_by_role("button", name="Reveal").click()
    await expect(page.get_by_text(secret)).to_be_visible()
    await page.get_by_role("button", name="Hide").click()
    await expect(page.get_by_text(secret)).to_be_hidden()
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await page.get_by_role("button", name="Copy").click()
    await expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    assert visited and not any(secret in url or "secret" in url for url in visited)
    console.assert_quiet()


async def test_send_a_test_event_and_see_the_endpoints_answer(
    browser: Browser, web_app: WebApp, receiver: Receiver
) -> None:
    async def answer(request: web.Request, _: Receiver) -> web.Response:
        return web.json_response({"handled": "yes <b>really</b>"}, status=202)

    receiver.handler = answer
    webhook_id, secret = await add_webhook(
        web_app.pool, receiver.url + "/hook", ["order.shipped", "order.paid"], "Orders"
    )
    console = await signed_in(browser, web_app.url, web_app.token)
    page = console.page
    await page.goto(f"{web_app.url}/webhooks/{webhook_id}")
    await page.get_by_label("Webhook actions").click()
    await page.get_by_role("button", name="Send test event").click()
    confirm = page.get_by_role("dialog", name="Send a test event")
    await confirm.get_by_label("Event type").select_option("order.paid")
    await confirm.get_by_role("button", name="Send test event").click()

    result = page.get_by_role("dialog", name="Test event delivered")
    await expect(result).to_be_visible()
    await expect(result.locator("[data-response-status]")).to_have_text("202")
    await expect(result.get_by_label("Response body")).to_have_text(
        '{"handled": "yes <b>really</b>"}'
    )
    await expect(result.get_by_label("Request body")).to_contain_text('"type": "order.paid"')
    await expect(result.get_by_text(secret)).to_have_count(0)

    assert len(receiver.requests) == 1
    sent = receiver.requests[0]
    Webhook(secret).verify(sent.body, sent.headers)
    assert b'"type":"order.paid"' in sent.body
    # Closing the result shows the page again, now with the test in its recent deliveries.
    await result.get_by_role("button", name="Done").click()
    await expect(page.get_by_role("dialog")).to_have_count(0)
    recent = page.get_by_role("region", name="Recent deliveries")
    await expect(recent.get_by_role("row", name=re.compile("test"))).to_contain_text("202")
    console.assert_quiet()


async def test_disable_and_enable_with_a_confirmation(browser: Browser, web_app: WebApp) -> None:
    webhook_id, _ = await add_webhook(web_app.pool, "https://example.com/h", ["a.b"], "Shop")
    for _ in range(3):
        await publish(web_app.pool, "a.b")
    console = await signed_in(browser, web_app.url, web_app.token)
    page = console.page
    await page.goto(f"{web_app.url}/webhooks/{webhook_id}")

    toggle = page.get_by_role("button", name=re.compile("^Status: Active"))
    await toggle.click()
    confirm = page.get_by_role("dialog", name="Disable Shop?")
    await expect(confirm).to_contain_text("3 pending deliveries will be cancelled")
    # Cancelling changes nothing.
    await confirm.get_by_role("button", name="Cancel").click()
    await expect(confirm).to_be_hidden()
    await expect(toggle).to_be_focused()
    assert await web_app.pool.fetchval("SELECT status FROM dispatcher.webhooks") == "active"

    await toggle.click()
    await confirm.get_by_role("button", name="Disable webhook").click()
    await expect(page.get_by_role("status")).to_contain_text(
        "Webhook disabled. 3 pending deliveries were cancelled."
    )
    assert await web_app.pool.fetchval("SELECT status FROM dispatcher.webhooks") == "disabled"
    await page.get_by_role("button", name=re.compile("^Status: Disabled")).click()
    await page.get_by_role("button", name="Enable webhook").click()
    await expect(page.get_by_role("status")).to_contain_text("Webhook enabled")
    assert await web_app.pool.fetchval("SELECT status FROM dispatcher.webhooks") == "active"
    console.assert_quiet()


async def test_edit_the_events_then_remove_one(browser: Browser, web_app: WebApp) -> None:
    await catalog(web_app, "a.one", "a.two", "a.three")
    webhook_id, _ = await add_webhook(web_app.pool, "https://example.com/h", ["a.one"], "Shop")
    console = await signed_in(browser, web_app.url, web_app.token)
    page = console.page
    await page.goto(f"{web_app.url}/webhooks/{webhook_id}")

    await page.get_by_role("button", name="Edit events").click()
    dialog = page.get_by_role("dialog", name="Edit events")
    await expect(dialog.get_by_label("a.one")).to_be_checked()
    await dialog.get_by_label("a.two").check()
    await dialog.get_by_label("a.three").check()
    await dialog.get_by_role("button", name="Save events").click()
    await expect(page.get_by_role("status")).to_contain_text("Event list saved")
    types = await web_app.pool.fetchval("SELECT event_types FROM dispatcher.webhooks")
    assert sorted(types) == ["a.one", "a.three", "a.two"]

    events = page.get_by_role("region", name="Webhook events")
    await expect(events.get_by_role("listitem")).to_have_count(3)
    await events.get_by_label("Actions for a.two").click()
    await events.get_by_role("button", name="Remove").click()
    confirm = page.get_by_role("dialog", name="Remove a.two?")
    await confirm.get_by_role("button", name="Remove").click()
    await expect(page.get_by_role("status")).to_contain_text("Event type removed")
    await expect(events.get_by_role("listitem")).to_have_count(2)
    types = await web_app.pool.fetchval("SELECT event_types FROM dispatcher.webhooks")
    assert sorted(types) == ["a.one", "a.three"]
    console.assert_quiet()


async def test_edit_the_url_and_description(browser: Browser, web_app: WebApp) -> None:
    webhook_id, _ = await add_webhook(web_app.pool, "https://old.example/h", ["a.b"], "Shop")
    console = await signed_in(browser, web_app.url, web_app.token)
    page = console.page
    await page.goto(f"{web_app.url}/webhooks/{webhook_id}")
    await page.get_by_label("Webhook actions").click()
    await page.get_by_role("button", name="Edit", exact=True).click()
    dialog = page.get_by_role("dialog", name="Edit webhook")
    await dialog.get_by_label("Endpoint URL").fill("https://user:pw@new.example/h")
    await dialog.get_by_role("button", name="Save changes").click()
    await expect(dialog.get_by_role("alert")).to_contain_text("user-info")
    await dialog.get_by_label("Endpoint URL").fill("https://new.example/h")
    await dialog.get_by_label("Description (optional)").fill("Now on the new host")
    await dialog.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_role("status")).to_contain_text("Changes saved")
    await expect(page.locator("main").get_by_text("Now on the new host")).to_be_visible()
    row = await web_app.pool.fetchrow("SELECT url, description FROM dispatcher.webhooks")
    assert row is not None
    assert (row["url"], row["description"]) == ("https://new.example/h", "Now on the new host")
    console.assert_quiet()


async def test_rotate_the_secret_with_a_grace_period(browser: Browser, web_app: WebApp) -> None:
    webhook_id, old = await add_webhook(web_app.pool, "https://example.com/h", ["a.b"], "Shop")
    console = await signed_in(browser, web_app.url, web_app.token)
    page = console.page
    await page.goto(f"{web_app.url}/webhooks/{webhook_id}")
    await page.get_by_role("button", name="Rotate…").click()
    dialog = page.get_by_role("dialog", name="Rotate the signing secret")
    await dialog.get_by_label("1 hour").check()
    await dialog.get_by_role("button", name="Rotate secret").click()
    await expect(page.get_by_role("status")).to_contain_text("also signs for the next 1 hour")
    row = await web_app.pool.fetchrow("SELECT secret, previous_secret FROM dispatcher.webhooks")
    assert row is not None and row["secret"] != old and row["previous_secret"] == old
    await page.get_by_role("button", name="Reveal").click()
    await expect(page.get_by_text(row["secret"])).to_be_visible()
    console.assert_quiet()


async def test_delete_after_confirming(browser: Browser, web_app: WebApp) -> None:
    webhook_id, _ = await add_webhook(web_app.pool, "https://example.com/h", ["a.b"], "Shop")
    await add_webhook(web_app.pool, "https://example.com/k", ["a.b"], "Keep")
    console = await signed_in(browser, web_app.url, web_app.token)
    page = console.page
    await page.goto(f"{web_app.url}/webhooks/{webhook_id}")
    await page.get_by_label("Webhook actions").click()
    await page.get_by_role("button", name="Delete").click()
    dialog = page.get_by_role("dialog", name="Delete Shop?")
    await expect(dialog).to_contain_text("cannot be undone")
    await dialog.get_by_role("button", name="Delete webhook").click()
    await expect(page).to_have_url(web_app.url + "/webhooks")
    await expect(page.get_by_role("status")).to_contain_text("Webhook deleted")
    await expect(page.get_by_role("row", name=re.compile("Shop"))).to_have_count(0)
    await expect(page.get_by_role("row", name=re.compile("Keep"))).to_have_count(1)
    names = await web_app.pool.fetch("SELECT service_name FROM dispatcher.webhooks")
    assert [r["service_name"] for r in names] == ["Keep"]
    console.assert_quiet()


async def test_the_keyboard_opens_a_dialog_and_escape_closes_it(
    browser: Browser, web_app: WebApp
) -> None:
    console = await signed_in(browser, web_app.url, web_app.token)
    page = console.page
    opener = page.get_by_role("button", name="+ New webhook").first
    await opener.focus()
    await page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="New webhook")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_label("Service name")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(opener).to_be_focused()
    await page.keyboard.press("Space")
    await expect(dialog).to_be_visible()
    console.assert_quiet()
