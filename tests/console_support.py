"""Helpers for the console's tests and screenshots: sessions, and a delivery log written by SQL."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
from playwright.async_api import Browser, Page

from dispatcher.manage.tokens import authenticate_token, open_session
from dispatcher.web.app import SESSION_COOKIE


@dataclass(frozen=True)
class Session:
    """A console session opened directly through the service, as a browser would hold it."""

    session_id: str
    csrf_token: str

    @property
    def cookie(self) -> dict[str, str]:
        return {"Cookie": f"{SESSION_COOKIE}={self.session_id}"}


async def console_session(pool: asyncpg.Pool, token: str) -> Session:
    async with pool.acquire() as conn:
        who = await authenticate_token(conn, token)
        assert who is not None
        session_id, csrf_token = await open_session(conn, who)
    return Session(session_id, csrf_token)


def csrf_in(html: str) -> str:
    """Return the CSRF token a page's forms carry."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no form with a CSRF token"
    return match[1]


@dataclass(frozen=True)
class Attempt:
    status: int | None
    error_kind: str | None = None
    body: str | None = None
    error_message: str | None = None
    duration_ms: int = 120


async def insert_delivery(
    pool: asyncpg.Pool,
    webhook_id: int,
    event_type: str,
    status: str,
    age: timedelta,
    attempts: list[Attempt] | None = None,
    payload: str = '{"id": 1}',
    kind: str = "event",
) -> int:
    """Write an event and one delivery of it, `age` ago, without the fan-out; return its id.

    A finished delivery finished a minute after it was created, after the given attempts.
    """
    attempts = attempts or []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL dispatcher.skip_fan_out = 'on'")
        message_id = await conn.fetchval(
            "INSERT INTO dispatcher.events (event_type, payload, created_at)"
            " VALUES ($1, $2::jsonb, now() - $3::interval) RETURNING message_id",
            event_type,
            payload,
            age,
        )
        last = attempts[-1] if attempts else None
        delivery_id: int = await conn.fetchval(
            "INSERT INTO dispatcher.deliveries (message_id, webhook_id, status, attempts,"
            " created_at, run_at, finished_at, last_response_status, last_error_kind, kind)"
            " VALUES ($1, $2, $3, $4, now() - $5::interval,"
            " now() - $5::interval + interval '1 min',"
            " CASE WHEN $3 = 'pending' THEN NULL ELSE now() - $5::interval + interval '1 min' END,"
            " $6, $7, $8) RETURNING id",
            message_id,
            webhook_id,
            status,
            len(attempts),
            age,
            last.status if last else None,
            last.error_kind if last else None,
            kind,
        )
        for number, attempt in enumerate(attempts, 1):
            await conn.execute(
                "INSERT INTO dispatcher.attempts (delivery_id, attempt, started_at, duration_ms,"
                " response_status, response_body, error_kind, error_message)"
                " VALUES ($1, $2, now() - $3::interval + make_interval(secs => $2 * 10), $4,"
                " $5, $6, $7, $8)",
                delivery_id,
                number,
                age,
                attempt.duration_ms,
                attempt.status,
                attempt.body,
                attempt.error_kind,
                attempt.error_message,
            )
    return delivery_id


@dataclass
class BrowserPage:
    """A signed-in page, with every script error and CSP violation it reports."""

    page: Page
    problems: list[str]

    def assert_quiet(self) -> None:
        assert not self.problems, self.problems


async def signed_in(
    browser: Browser, base_url: str, token: str, javascript: bool = True
) -> BrowserPage:
    """Open a fresh context at 1280x800 and sign in through the form, as a person would."""
    context = await browser.new_context(
        viewport={"width": 1280, "height": 800}, java_script_enabled=javascript
    )
    # Fail within seconds when something is missing, not after Playwright's 30 s default.
    context.set_default_timeout(5000)
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(message.text)
            if message.type == "error" and "Content Security Policy" in message.text
            else None
        ),
    )
    await page.goto(base_url + "/webhooks")
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(base_url + "/webhooks")
    return BrowserPage(page, problems)
