"""Screenshots of the console for docs/screenshots: `python -m tests.console_screenshots`.

Seeds a fresh database with a realistic day (a catalog, five webhooks, a day of deliveries with
failures and retries), serves the console, and drives headless Chromium through it at 1280x800.
Uses the PostgreSQL at $DISPATCHER_TEST_DATABASE_URL (it must be allowed to create databases),
or a throwaway embedded server when that is unset. Not a test: it asserts nothing.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import asyncpg
from aiohttp import web
from playwright.async_api import Page, async_playwright

from dispatcher.manage import admin
from dispatcher.manage.tokens import create_token
from dispatcher.ops import migrate
from dispatcher.web.app import create_app
from tests.browser_support import CHROMIUM
from tests.conftest import database_server, fast_settings, with_database
from tests.console_support import Attempt, insert_delivery

OUT = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
SIZE = {"width": 1280, "height": 800}

CATALOG = [
    ("customer.created", "A customer signed up", '{"id": "cus_1042", "email": "ada@example.com"}'),
    ("customer.updated", "A customer's details changed", '{"id": "cus_1042"}'),
    ("customer.deleted", "A customer closed their account", '{"id": "cus_1042"}'),
    ("invoice.created", "An invoice was drafted", '{"id": "in_88", "amount": 4900}'),
    ("invoice.paid", "An invoice was paid in full", '{"id": "in_88", "amount": 4900}'),
    ("invoice.payment_failed", "A payment attempt was declined", '{"id": "in_88"}'),
    ("subscription.renewed", "A subscription renewed", '{"id": "sub_7", "plan": "team"}'),
    ("subscription.cancelled", "A subscription was cancelled", '{"id": "sub_7"}'),
]

INVOICES = ["invoice.created", "invoice.paid", "invoice.payment_failed"]
CUSTOMERS = ["customer.created", "customer.updated", "customer.deleted"]
# (name, url, description, event types, status, deliveries per hour, failure odds)
WEBHOOKS = [
    (
        "Billing service",
        "https://billing.acme-corp.example/webhooks/dispatcher",
        "Marks invoices paid and chases failed payments.",
        INVOICES,
        "active",
        14,
        0.01,
    ),
    (
        "CRM sync",
        "https://crm.internal.example/hooks/customers",
        "Keeps customer records in the CRM current.",
        CUSTOMERS,
        "active",
        9,
        0.0,
    ),
    (
        "Analytics warehouse",
        "https://ingest.analytics.example/v1/events",
        "Every event, for the data team's warehouse.",
        ["*"],
        "active",
        22,
        0.002,
    ),
    (
        "Slack alerts",
        "https://hooks.slack.example/services/T0001/B0002/alerts",
        "Posts failed payments and cancellations to #revenue.",
        ["invoice.payment_failed", "subscription.cancelled"],
        "disabled",
        2,
        0.0,
    ),
]
TIMED_OUT = "no response within 10 s"
ERROR_PAGE = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>"
    "\r\n</body>\r\n</html>\r\n"
)


@asynccontextmanager
async def server_dsn() -> AsyncIterator[str]:
    with database_server() as dsn:  # the test suite's: $DISPATCHER_TEST_DATABASE_URL or embedded
        yield dsn


@asynccontextmanager
async def fresh_database(dsn: str) -> AsyncIterator[str]:
    name = f"dispatcher_shots_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield with_database(dsn, name)
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def partner_endpoint(request: web.Request) -> web.Response:
    """A receiver that answers like a real service, for the test-event screenshot."""
    await request.read()
    return web.json_response(
        {"received": True, "id": f"rcv_{uuid.uuid4().hex[:12]}"}, headers={"Server": "partner-api"}
    )


async def seed(pool: asyncpg.Pool, partner_url: str) -> dict[str, int]:
    """Write the catalog, the webhooks and a day of deliveries; return webhook ids by name."""
    rng = random.Random(7)
    ids: dict[str, int] = {}
    async with pool.acquire() as conn:
        for name, description, sample in CATALOG:
            await admin.add_event_type(conn, name, description, sample)
        for name, url, description, types, status, _, _ in WEBHOOKS:
            row = await admin.create_webhook(conn, name, url, description, types)
            ids[name] = row["id"]
            if status == "disabled":
                await admin.disable_webhook(conn, row["id"])
        partner = await admin.create_webhook(
            conn,
            "Partner API",
            partner_url,
            "Order updates for our fulfilment partner.",
            ["subscription.renewed", "subscription.cancelled"],
        )
        ids["Partner API"] = partner["id"]
    samples = {t: sample for t, _, sample in CATALOG}
    planned: list[tuple[timedelta, str, str, bool]] = []
    for name, _, _, types, _, per_hour, odds in WEBHOOKS:
        chosen = list(samples) if types == ["*"] else types
        for hour in range(24):
            # CRM sync's endpoint had a bad spell this morning: 503s, then timeouts.
            outage = name == "CRM sync" and 13 <= hour <= 16
            for _ in range(max(0, per_hour + rng.randint(-3, 4) - (hour % 5 == 0) * 3)):
                age = timedelta(hours=hour, minutes=rng.randint(0, 59), seconds=rng.randint(0, 59))
                failed = rng.random() < (0.55 if outage else odds)
                planned.append((age, name, rng.choice(chosen), failed))
    # Oldest first, so delivery ids grow with time as they would in a real log.
    for age, name, event_type, failed in sorted(planned, reverse=True):
        if failed:
            attempts = [
                Attempt(503, "status", ERROR_PAGE, duration_ms=rng.randint(40, 90)),
                Attempt(503, "status", ERROR_PAGE, duration_ms=rng.randint(40, 90)),
                Attempt(
                    None, "timeout", error_message="no response within 10 s", duration_ms=10000
                ),
            ]
        else:
            attempts = [Attempt(200, None, '{"ok":true}', duration_ms=rng.randint(35, 260))]
        status = "failed" if failed else "succeeded"
        await insert_delivery(
            pool, ids[name], event_type, status, age, attempts, payload=samples[event_type]
        )
    # A few waiting for a retry right now.
    for minutes in (2, 3, 5):
        await insert_delivery(
            pool,
            ids["CRM sync"],
            "customer.updated",
            "pending",
            timedelta(minutes=minutes),
            [Attempt(502, "status", "Bad gateway", duration_ms=61)],
        )
    return ids


async def shoot(page: Page, name: str) -> None:
    await page.wait_for_timeout(150)  # let a dialog's opening settle
    await page.screenshot(path=str(OUT / f"{name}.png"))
    print(f"wrote {OUT / f'{name}.png'}")


async def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    partner = web.Application()
    partner.router.add_post("/webhooks/orders", partner_endpoint)
    partner_runner = web.AppRunner(partner, access_log=None)
    await partner_runner.setup()
    await web.TCPSite(partner_runner, "127.0.0.1", 0).start()
    partner_port = partner_runner.addresses[0][1]
    async with server_dsn() as admin_dsn, fresh_database(admin_dsn) as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        assert pool is not None
        async with pool.acquire() as conn:
            await migrate.apply_migrations(conn)
            token = (await create_token(conn, "Ada Lovelace", read_only=False)).token
        ids = await seed(pool, f"http://127.0.0.1:{partner_port}/webhooks/orders")
        failed_delivery = await pool.fetchval(
            "SELECT id FROM dispatcher.deliveries WHERE status = 'failed' AND webhook_id = $1"
            " ORDER BY id DESC LIMIT 1",
            ids["CRM sync"],
        )
        runner = web.AppRunner(create_app(fast_settings(), pool), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=CHROMIUM, args=["--no-sandbox"]
                )
                page = await browser.new_page(viewport=SIZE)
                await page.goto(base + "/webhooks")
                await shoot(page, "sign-in")
                await page.get_by_label("API token").fill(token)
                await page.get_by_role("button", name="Sign in").click()
                await page.wait_for_url(base + "/webhooks")
                await shoot(page, "webhooks")

                await page.get_by_role("button", name="+ New webhook").first.click()
                await page.get_by_label("Service name").fill("Support desk")
                await page.get_by_label("Endpoint URL").fill("https://support.acme-corp.example/h")
                await page.get_by_label("customer.created").check()
                await page.get_by_label("customer.deleted").check()
                await shoot(page, "new-webhook")

                await page.goto(f"{base}/webhooks/{ids['CRM sync']}")
                await shoot(page, "webhook")

                await page.goto(f"{base}/webhooks/{ids['Partner API']}")
                await page.get_by_label("Webhook actions").click()
                await page.get_by_role("button", name="Send test event").click()
                await page.locator("#test").get_by_role("button", name="Send test event").click()
                await page.locator("#test-result").wait_for(state="visible")
                await shoot(page, "test-event")

                await page.goto(base + "/deliveries")
                await shoot(page, "deliveries")
                await page.goto(f"{base}/deliveries/{failed_delivery}")
                await shoot(page, "delivery")
                await browser.close()
        finally:
            await runner.cleanup()
            await pool.close()
    await partner_runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
