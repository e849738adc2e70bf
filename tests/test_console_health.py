"""The console and endpoint health over plain HTTP: the health column and card, the rate limit
and retry policy fields of the add and edit forms, and enabling as a fresh start."""

from __future__ import annotations

import html
import re
from typing import Any

import asyncpg

from dispatcher.web.console_text import when
from tests.conftest import WebApp, add_webhook
from tests.console_support import Session, console_session


async def get(web_app: WebApp, path: str, session: Session) -> tuple[int, str]:
    async with web_app.http.get(web_app.url + path, headers=session.cookie) as r:
        return r.status, await r.text()


async def post(
    web_app: WebApp, path: str, form: dict[str, str], session: Session
) -> tuple[int, Any, str]:
    async with web_app.http.post(
        web_app.url + path,
        data={"csrf_token": session.csrf_token, **form},
        headers=session.cookie,
        allow_redirects=False,
    ) as r:
        return r.status, r.headers, await r.text()


def text_of(page: str) -> str:
    """The page's words, tags dropped and spaces collapsed, for plain `in` checks."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


async def webhook_row(db: asyncpg.Pool, webhook_id: int) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM dispatcher.webhooks WHERE id = $1", webhook_id)
    assert row is not None
    return row


async def test_the_list_shows_each_webhooks_health(web_app: WebApp) -> None:
    db = web_app.pool
    await add_webhook(db, "https://ok.example/", ["a.b"], name="Fine")
    failing, _ = await add_webhook(db, "https://failing.example/", ["a.b"], name="Failing")
    broken, _ = await add_webhook(db, "https://broken.example/", ["a.b"], name="Broken")
    gone, _ = await add_webhook(db, "https://gone.example/", ["a.b"], name="Gone")
    since = await db.fetchval(
        "UPDATE dispatcher.webhook_health SET consecutive_failures = 3,"
        " first_failure_at = now() - interval '1 hour' WHERE webhook_id = $1"
        " RETURNING first_failure_at",
        failing,
    )
    until = await db.fetchval(
        "UPDATE dispatcher.webhook_health SET consecutive_failures = 10, first_failure_at = now(),"
        " breaker_until = now() + interval '1 minute', breaker_trips = 1 WHERE webhook_id = $1"
        " RETURNING breaker_until",
        broken,
    )
    await db.execute(
        "UPDATE dispatcher.webhooks SET status = 'disabled', disabled_reason = 'gone',"
        " disabled_at = now() WHERE id = $1",
        gone,
    )
    session = await console_session(db, web_app.token)
    status, page = await get(web_app, "/webhooks", session)
    assert status == 200
    rows = {
        name: text_of(row)
        for row in page.split('<tr data-href="')[1:]
        for name in ("Fine", "Failing", "Broken", "Gone")
        if f">{name}</a>" in row
    }
    assert "Active ok" in rows["Fine"]
    assert f"Active failing since {when(since)}" in rows["Failing"]
    assert f"Active breaker open until {when(until)}" in rows["Broken"]
    assert "Disabled disabled: gone" in rows["Gone"]


async def test_the_details_show_health_rate_limit_and_why_disabled(web_app: WebApp) -> None:
    db = web_app.pool
    wid, _ = await add_webhook(db, "https://x.example/", ["a.b"], name="X")
    await db.execute(
        "UPDATE dispatcher.webhooks SET rate_limit = 2.5, retry_policy = 'exponential',"
        " status = 'disabled', disabled_reason = 'failing', disabled_at = now() WHERE id = $1",
        wid,
    )
    h = await db.fetchrow(
        "UPDATE dispatcher.webhook_health SET consecutive_failures = 40,"
        " first_failure_at = now() - interval '6 days', last_failure_at = now(),"
        " last_error = 'HTTP 502 <b>bad</b>', breaker_until = now() + interval '10 minutes',"
        " breaker_opened_at = now(), breaker_trips = 5, throttled_at = now()"
        " WHERE webhook_id = $1 RETURNING *",
        wid,
    )
    session = await console_session(db, web_app.token)
    _, page = await get(web_app, f"/webhooks/{wid}", session)
    words = text_of(page)
    assert "Health disabled: failing" in words
    assert "Consecutive failures 40" in words
    assert f"First failure {when(h['first_failure_at'])}" in words
    assert "Last error HTTP 502 <b>bad</b>" in words and "<b>bad</b>" not in page
    assert f"Circuit breaker Open until {when(h['breaker_until'])} trip 5" in words
    assert f"Rate limited Now: {when(h['throttled_at'])}" in words
    assert "Disabled failing," in words
    assert "Rate limit 2.5 per second" in words and "Retry policy Exponential" in words


async def test_adding_with_a_rate_limit_and_retry_policy(web_app: WebApp) -> None:
    db = web_app.pool
    session = await console_session(db, web_app.token)
    form = {
        "service_name": "Billing",
        "url": "https://billing.example/hooks",
        "other_types": "invoice.paid",
        "rate_limit": "fast",
        "retry_policy": "exponential",
    }
    status, _, page = await post(web_app, "/webhooks", form, session)
    assert status == 422
    assert (
        "The rate limit must be a number of requests per second greater than 0, got &#39;fast&#39;"
        in page
    )
    assert re.search(r'name="rate_limit" value="fast"[^>]*aria-invalid="true"', page)
    assert '<option value="exponential" selected>' in page
    assert await db.fetchval("SELECT count(*) FROM dispatcher.webhooks") == 0

    form["rate_limit"] = " 12.5 "
    status, _, _ = await post(web_app, "/webhooks", form, session)
    assert status == 303
    wid = await db.fetchval("SELECT id FROM dispatcher.webhooks")
    row = await webhook_row(db, wid)
    assert (row["rate_limit"], row["retry_policy"]) == (12.5, "exponential")

    form.update(service_name="Plain", rate_limit="", retry_policy="default")
    await post(web_app, "/webhooks", form, session)
    row = await webhook_row(db, wid + 1)
    assert (row["rate_limit"], row["retry_policy"]) == (None, None)


async def test_the_edit_dialog_sets_and_clears_flow_control(web_app: WebApp) -> None:
    db = web_app.pool
    wid, _ = await add_webhook(db, "https://x.example/", ["a.b"], name="X")
    session = await console_session(db, web_app.token)
    base = {"service_name": "X", "url": "https://x.example/", "description": ""}

    status, _, _ = await post(
        web_app,
        f"/webhooks/{wid}/edit",
        {**base, "rate_limit": "3", "retry_policy": "schedule"},
        session,
    )
    assert status == 303
    row = await webhook_row(db, wid)
    assert (row["rate_limit"], row["retry_policy"]) == (3, "schedule")
    _, page = await get(web_app, f"/webhooks/{wid}?dialog=edit", session)
    assert 'name="rate_limit" value="3"' in page
    assert '<option value="schedule" selected>' in page

    status, _, page = await post(
        web_app, f"/webhooks/{wid}/edit", {**base, "rate_limit": "0", "retry_policy": "x"}, session
    )
    assert status == 422 and "The rate limit must be a number" in page
    status, _, page = await post(
        web_app, f"/webhooks/{wid}/edit", {**base, "rate_limit": "", "retry_policy": "x"}, session
    )
    assert status == 422 and "The retry policy must be schedule or exponential" in page
    assert (await webhook_row(db, wid))["rate_limit"] == 3

    await post(
        web_app,
        f"/webhooks/{wid}/edit",
        {**base, "rate_limit": "", "retry_policy": "default"},
        session,
    )
    row = await webhook_row(db, wid)
    assert (row["rate_limit"], row["retry_policy"]) == (None, None)


async def test_disable_and_enable_from_the_console(web_app: WebApp) -> None:
    db = web_app.pool
    wid, _ = await add_webhook(db, "https://x.example/", ["a.b"], name="X")
    await db.execute(
        "UPDATE dispatcher.webhook_health SET consecutive_failures = 9,"
        " first_failure_at = now(), breaker_until = now() + interval '1 minute',"
        " breaker_trips = 1 WHERE webhook_id = $1",
        wid,
    )
    session = await console_session(db, web_app.token)
    await post(web_app, f"/webhooks/{wid}/status", {"status": "disabled"}, session)
    row = await webhook_row(db, wid)
    assert (row["status"], row["disabled_reason"]) == ("disabled", "manual")
    assert row["disabled_at"] is not None

    await post(web_app, f"/webhooks/{wid}/status", {"status": "active"}, session)
    row = await webhook_row(db, wid)
    assert (row["status"], row["disabled_reason"], row["disabled_at"]) == ("active", None, None)
    health = await db.fetchrow(
        "SELECT consecutive_failures, breaker_until, breaker_trips"
        " FROM dispatcher.webhook_health WHERE webhook_id = $1",
        wid,
    )
    assert tuple(health) == (0, None, 0)
