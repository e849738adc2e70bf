"""The console's delivery log in headless Chromium: filters, pages, attempts, resending."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from playwright.async_api import Browser, expect

from tests.browser_support import browser_fixture  # noqa: F401
from tests.conftest import WebApp, add_webhook
from tests.console_support import Attempt, insert_delivery, signed_in

pytestmark = pytest.mark.browser
UNAVAILABLE = "<html><h1>503 Service Unavailable</h1></html>"


async def test_filter_the_log_and_page_through_it(browser: Browser, web_app: WebApp) -> None:
    shop, _ = await add_webhook(web_app.pool, "https://shop.example/h", ["order.paid"], "Shop")
    crm, _ = await add_webhook(web_app.pool, "https://crm.example/h", ["customer.new"], "CRM")
    for minute in range(55):
        await insert_delivery(
            web_app.pool, shop, "order.paid", "succeeded", timedelta(minutes=90 - minute)
        )
    failed = await insert_delivery(
        web_app.pool, crm, "customer.new", "failed", timedelta(minutes=20), [Attempt(503)]
    )
    await insert_delivery(web_app.pool, crm, "customer.new", "succeeded", timedelta(days=2))
    console = await signed_in(browser, web_app.url, web_app.token)
    page = console.page
    await page.get_by_role("link", name="Deliveries").click()
    rows = page.get_by_role("table").get_by_role("row")
    await expect(rows).to_have_count(51)  # the header and a page of 50
    await page.get_by_role("link", name="Older →").click()
    await expect(rows).to_have_count(8)
    # Newest first by id: the first one written is on the second page.
    await expect(page.get_by_role("row", name=re.compile(r"^#1 Shop"))).to_have_count(1)
    await page.get_by_role("link", name="← Newest").click()
    await expect(rows).to_have_count(51)

    # Choosing from a list applies the filter at once.
    await page.get_by_label("Status").select_option("failed")
    await expect(page).to_have_url(re.compile(r"status=failed"))
    await expect(rows).to_have_count(2)
    await expect(rows.nth(1)).to_contain_text(f"#{failed}")
    await expect(rows.nth(1)).to_contain_text("503")
    await page.get_by_role("link", name="Clear").click()

    await page.get_by_label("Event type").fill("customer.new")
    await page.get_by_role("button", name="Apply").click()
    await expect(rows).to_have_count(3)
    await page.get_by_label("Created").select_option("24h")
    await expect(rows).to_have_count(2)
    await page.get_by_label("Webhook").select_option(label="Shop")
    await expect(
        page.get_by_role("heading", name="No deliveries match these filters")
    ).to_be_visible()
    console.assert_quiet()


async def test_open_a_delivery_see_its_attempts_and_resend_it(
    browser: Browser, web_app: WebApp
) -> None:
    webhook_id, _ = await add_webhook(web_app.pool, "https://shop.example/h", ["a.b"], "Shop")
    delivery = await insert_delivery(
        web_app.pool,
        webhook_id,
        "a.b",
        "failed",
        timedelta(minutes=30),
        [
            Attempt(503, "status", UNAVAILABLE, duration_ms=87),
            Attempt(None, "timeout", error_message="no response within 10 s", duration_ms=10000),
        ],
        payload='{"order": 42}',
    )
    console = await signed_in(browser, web_app.url, web_app.token)
    page = console.page
    await page.goto(web_app.url + "/deliveries")
    await page.get_by_role("row", name=re.compile(f"#{delivery}")).get_by_text("Shop").click()
    await expect(page).to_have_url(f"{web_app.url}/deliveries/{delivery}")
    attempts = page.get_by_role("region", name="Attempts")
    await expect(attempts.get_by_role("row").nth(1)).to_contain_text("87 ms")
    await expect(attempts.get_by_role("row").nth(1)).to_contain_text("503")
    await expect(attempts.get_by_role("row").nth(1)).to_contain_text("HTTP error")
    await expect(attempts.get_by_label("Response body of attempt 1")).to_have_text(UNAVAILABLE)
    await expect(attempts).to_contain_text("Timed out")
    await expect(attempts).to_contain_text("no response within 10 s")
    await expect(page.get_by_role("region", name="Event payload")).to_contain_text('"order": 42')

    await page.get_by_role("button", name="Resend").click()
    await expect(page.get_by_role("status")).to_contain_text("Event sent again")
    resent = await web_app.pool.fetchrow(
        "SELECT id, status, kind, message_id FROM dispatcher.deliveries WHERE id <> $1", delivery
    )
    assert resent is not None and (resent["status"], resent["kind"]) == ("pending", "resend")
    original = await web_app.pool.fetchval(
        "SELECT message_id FROM dispatcher.deliveries WHERE id = $1", delivery
    )
    assert resent["message_id"] == original
    await expect(page).to_have_url(f"{web_app.url}/deliveries/{resent['id']}")
    await expect(page.get_by_role("heading", name=f"Delivery #{resent['id']}")).to_be_visible()
    console.assert_quiet()


async def test_recover_failed_deliveries_after_seeing_how_many(
    browser: Browser, web_app: WebApp
) -> None:
    webhook_id, _ = await add_webhook(web_app.pool, "https://shop.example/h", ["a.b"], "Shop")
    for minutes in (5, 10, 15):
        await insert_delivery(
            web_app.pool, webhook_id, "a.b", "failed", timedelta(minutes=minutes), [Attempt(500)]
        )
    await insert_delivery(
        web_app.pool, webhook_id, "a.b", "failed", timedelta(hours=3), [Attempt(500)]
    )
    console = await signed_in(browser, web_app.url, web_app.token)
    page = console.page
    await page.goto(web_app.url + "/deliveries")

    await page.get_by_role("button", name="Recover failed since…").click()
    dialog = page.get_by_role("dialog", name="Recover failed deliveries")
    await dialog.get_by_label("Failed since").select_option("1h")
    await dialog.get_by_role("button", name="Count deliveries").click()
    await expect(dialog.locator("[data-recover-count]")).to_have_text("3")
    # Counting sent nothing.
    assert await web_app.pool.fetchval("SELECT count(*) FROM dispatcher.deliveries") == 4
    await dialog.get_by_role("button", name="Resend 3 deliveries").click()
    await expect(page.get_by_role("status")).to_contain_text(
        "3 failed deliveries were queued again."
    )
    kinds = await web_app.pool.fetch(
        "SELECT kind, status FROM dispatcher.deliveries WHERE kind = 'resend'"
    )
    assert [(r["kind"], r["status"]) for r in kinds] == [("resend", "pending")] * 3

    # Asked again for the last day, only the one not yet resent is left.
    await page.get_by_role("button", name="Recover failed since…").click()
    await dialog.get_by_label("Failed since").select_option("24h")
    await dialog.get_by_role("button", name="Count deliveries").click()
    await expect(dialog.locator("[data-recover-count]")).to_have_text("1")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_be_hidden()
    console.assert_quiet()
