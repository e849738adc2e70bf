"""Status-aware retries against real local endpoints: Retry-After in both forms and its clamps,
throttling answers and timeouts, 410 Gone, refused and black-holed connects, retry policies.

Each test reads what the daemon decided from the database (attempts.retry_in_s/retry_reason,
deliveries.run_at) and what the endpoint saw from the receiver. A delay is proved without
sleeping: a witness event for another webhook arrives after the retry was written, so the lease
that took it would have taken the retry too had it been due.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from tests.conftest import Receiver, add_webhook, deliver_all, fast_settings, publish
from tests.health_support import (
    Answer,
    answers,
    attempt_count,
    attempts_of,
    black_hole,
    by_path,
    health,
    ok,
    operator_events,
    port_of,
    received_events,
    refused_port,
    settle_and_stop,
    statuses,
    webhook,
)


async def watched_webhook(db: asyncpg.Pool, url: str) -> int:
    """Add the webhook under test, subscribed to 't.x'."""
    wid, _ = await add_webhook(db, url, ["t.x"], name="endpoint")
    return wid


async def first_attempt(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, wid: int, **overrides: Any
) -> asyncpg.Record:
    """Publish one event, let the daemon make one attempt, and prove the retry waits.

    Return the attempt, with the delivery's status and `due_in_s` (run_at - now()).
    """
    await add_webhook(db, receiver.url + "/witness", ["witness.x"], name="witness")
    await publish(db, "t.x")

    async def attempted() -> bool:
        return await attempt_count(db, wid) >= 1

    await settle_and_stop(db, dsn, fast_settings(**overrides), receiver, attempted)
    rows = await attempts_of(db, wid)
    assert len(rows) == 1, [(r["response_status"], r["retry_in_s"]) for r in rows]
    [row] = rows
    assert (row["status"], row["delivery_attempts"]) == ("pending", 1)
    return row


def assert_waits(row: asyncpg.Record, reason: str, delay_s: float) -> None:
    """The attempt chose `delay_s` for `reason`, and the row is due about that far ahead."""
    assert (row["retry_reason"], row["retry_in_s"]) == (reason, pytest.approx(delay_s, abs=0.01))
    # Written moments ago; the lower slack only covers a slow machine between write and read.
    assert delay_s - 15 < row["due_in_s"] <= delay_s + 0.5, row["due_in_s"]


# (answer, settings, expected reason, expected delay in seconds)
RULES: dict[str, tuple[Answer, dict[str, Any], str, float]] = {
    "429 Retry-After seconds": ((429, {"Retry-After": "120"}), {}, "retry_after", 120),
    "503 Retry-After seconds": ((503, {"Retry-After": "120"}), {}, "retry_after", 120),
    "Retry-After clamped to the maximum": (
        (429, {"Retry-After": "999999"}),
        {"retry_after_max_s": 300},
        "retry_after",
        300,
    ),
    "Retry-After 0 raised to the minimum": (
        (429, {"Retry-After": "0"}),
        {"retry_after_min_s": 40, "throttle_min_delay_s": 0},
        "retry_after",
        40,
    ),
    "Retry-After never earlier than the schedule": (
        (429, {"Retry-After": "5"}),
        {"retry_schedule": (60, 60), "throttle_min_delay_s": 0},
        "schedule",
        60,
    ),
    "Retry-After later than the schedule": (
        (429, {"Retry-After": "100"}),
        {"retry_schedule": (60, 60)},
        "retry_after",
        100,
    ),
    "Retry-After shorter than the throttle minimum": (
        (429, {"Retry-After": "5"}),
        {"throttle_min_delay_s": 45},
        "throttle",
        45,
    ),
    "garbage Retry-After ignored": (
        (429, {"Retry-After": "soon"}),
        {"throttle_min_delay_s": 45},
        "throttle",
        45,
    ),
    "429 without Retry-After": ((429, {}), {"throttle_min_delay_s": 45}, "throttle", 45),
    "503 without Retry-After": ((503, {}), {"throttle_min_delay_s": 45}, "throttle", 45),
    "502": ((502, {}), {"throttle_min_delay_s": 45}, "throttle", 45),
    "504": ((504, {}), {"throttle_min_delay_s": 45}, "throttle", 45),
    # Only 429 and 503 carry a Retry-After the contract honours.
    "502 Retry-After not honoured": (
        (502, {"Retry-After": "120"}),
        {"throttle_min_delay_s": 45},
        "throttle",
        45,
    ),
    "throttle never earlier than the schedule": (
        (503, {}),
        {"retry_schedule": (60, 60), "throttle_min_delay_s": 10},
        "schedule",
        60,
    ),
    "500 follows the schedule": ((500, {}), {"retry_schedule": (25, 25)}, "schedule", 25),
}


@pytest.mark.parametrize(("answer", "overrides", "reason", "delay_s"), RULES.values(), ids=RULES)
async def test_answer_sets_the_next_attempt(
    db: asyncpg.Pool,
    dsn: str,
    receiver: Receiver,
    answer: Answer,
    overrides: dict[str, Any],
    reason: str,
    delay_s: float,
) -> None:
    receiver.handler = by_path(ok, endpoint=answers(answer))
    wid = await watched_webhook(db, receiver.url + "/endpoint")

    row = await first_attempt(db, dsn, receiver, wid, **overrides)

    assert len(receiver.on("/endpoint")) == 1
    assert row["response_status"] == answer[0]
    assert_waits(row, reason, delay_s)


def http_date_in(seconds: float) -> Any:
    async def handler(request: web.Request, rec: Receiver) -> web.Response:
        when = datetime.now(UTC) + timedelta(seconds=seconds)
        return web.Response(status=429, headers={"Retry-After": format_datetime(when, True)})

    return handler


async def test_429_with_http_date_waits_until_then(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    receiver.handler = by_path(ok, endpoint=http_date_in(90))
    wid = await watched_webhook(db, receiver.url + "/endpoint")

    row = await first_attempt(db, dsn, receiver, wid)

    assert len(receiver.on("/endpoint")) == 1
    # The date has whole seconds: up to one second early, plus the time the answer took.
    assert row["retry_reason"] == "retry_after"
    assert 87 <= row["retry_in_s"] <= 90.5, row["retry_in_s"]
    assert 75 < row["due_in_s"] <= 90.5, row["due_in_s"]


async def test_429_with_past_http_date_waits_the_minimum(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    receiver.handler = by_path(ok, endpoint=http_date_in(-3600))
    wid = await watched_webhook(db, receiver.url + "/endpoint")

    row = await first_attempt(db, dsn, receiver, wid, retry_after_min_s=40, throttle_min_delay_s=0)

    assert len(receiver.on("/endpoint")) == 1
    assert_waits(row, "retry_after", 40)


async def test_retry_after_cannot_add_attempts(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    receiver.handler = answers((429, {"Retry-After": "5"}))
    wid = await watched_webhook(db, receiver.url)
    await publish(db, "t.x")

    await deliver_all(fast_settings(retry_schedule=()), dsn)

    assert len(receiver.requests) == 1
    [row] = await attempts_of(db, wid)
    assert (row["status"], row["retry_reason"], row["retry_in_s"]) == ("failed", "exhausted", None)


async def test_exhausted_and_success_reasons(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    receiver.handler = answers(500, 500, 200)
    wid = await watched_webhook(db, receiver.url + "/flaky")
    await publish(db, "t.x")

    await deliver_all(fast_settings(retry_schedule=(0, 0)), dsn)

    rows = await attempts_of(db, wid)
    assert [(r["response_status"], r["retry_reason"]) for r in rows] == [
        (500, "schedule"),
        (500, "schedule"),
        (200, None),
    ]
    assert rows[-1]["status"] == "succeeded"


async def test_gone_disables_the_webhook_cancels_its_backlog_and_tells_operators(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    receiver.handler = by_path(ok, gone=answers(410))
    wid = await watched_webhook(db, receiver.url + "/gone")
    ops, _ = await add_webhook(db, receiver.url + "/ops", ["dispatcher.webhook.disabled"], "ops")
    # Subscribed to everything, yet not to the operator events about other webhooks.
    await add_webhook(db, receiver.url + "/star", ["*"], name="star")
    for i in range(3):
        await publish(db, "t.x", f'{{"i": {i}}}')
    # One delivery is due; two wait their turn and are pending when the 410 comes back.
    await db.execute(
        "UPDATE dispatcher.deliveries SET run_at = now() + interval '1 hour'"
        " WHERE webhook_id = $1 AND id > (SELECT min(id) FROM dispatcher.deliveries"
        " WHERE webhook_id = $1)",
        wid,
    )
    started = await db.fetchval("SELECT now()")

    await deliver_all(fast_settings(), dsn)

    assert len(receiver.on("/gone")) == 1
    hook = await webhook(db, wid)
    assert (hook["status"], hook["disabled_reason"]) == ("disabled", "gone")
    assert hook["disabled_at"] >= started
    assert await statuses(db, wid) == {"failed": 1, "cancelled": 2}
    [row] = await attempts_of(db, wid)
    assert (row["response_status"], row["retry_reason"], row["retry_in_s"]) == (410, "gone", None)

    [event] = await operator_events(db)
    assert event["type"] == "dispatcher.webhook.disabled"
    assert event["webhook_id"] == wid
    assert event["reason"] == "gone"
    assert event["service_name"] == "endpoint"
    assert event["url"] == receiver.url + "/gone"
    assert {"first_failure_at", "last_error", "consecutive_failures", "disabled_at"} <= set(event)
    [sent] = received_events(receiver, "/ops")
    assert sent["type"] == "dispatcher.webhook.disabled"
    assert sent["data"] == {k: v for k, v in event.items() if k != "type"}
    assert await statuses(db, ops) == {"succeeded": 1}
    assert {e["type"] for e in received_events(receiver, "/star")} == {"t.x"}


async def test_gone_without_disabling_is_an_ordinary_failure(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    receiver.handler = answers(410)
    wid = await watched_webhook(db, receiver.url + "/gone")
    await publish(db, "t.x")
    await publish(db, "t.x")

    await deliver_all(fast_settings(gone_disables_webhook=False, retry_schedule=(0,)), dsn)

    # Retried on the schedule like any failure; the webhook stays as it was.
    assert len(receiver.requests) == 4
    hook = await webhook(db, wid)
    assert (hook["status"], hook["disabled_reason"], hook["disabled_at"]) == ("active", None, None)
    assert await statuses(db, wid) == {"failed": 2}
    rows = await attempts_of(db, wid)
    assert [(r["response_status"], r["retry_reason"]) for r in rows] == [
        (410, "schedule"),
        (410, "exhausted"),
    ] * 2
    assert await operator_events(db) == []


async def test_refused_connection_is_a_connect_failure_on_the_streak_and_breaker(
    db: asyncpg.Pool, dsn: str
) -> None:
    with refused_port() as sock:
        wid = await watched_webhook(db, f"http://127.0.0.1:{port_of(sock)}/hook")
        await publish(db, "t.x")

        await deliver_all(fast_settings(retry_schedule=(0, 0), breaker_threshold=100), dsn)

    rows = await attempts_of(db, wid)
    assert [(r["error_kind"], r["retry_reason"]) for r in rows] == [
        ("connect", "schedule"),
        ("connect", "schedule"),
        ("connect", "exhausted"),
    ]
    assert rows[-1]["status"] == "failed"
    state = await health(db, wid)
    assert (state["consecutive_failures"], state["breaker_failures"]) == (3, 3)
    assert state["first_failure_at"] is not None
    assert state["first_failure_at"] <= state["last_failure_at"]
    assert state["last_error"]
    assert state["breaker_until"] is None


async def test_black_holed_connect_times_out_and_waits_the_throttle_minimum(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    with black_hole() as port:
        wid = await watched_webhook(db, f"http://127.0.0.1:{port}/hook")

        row = await first_attempt(
            db, dsn, receiver, wid, connect_timeout_s=0.5, throttle_min_delay_s=30
        )

    assert (row["error_kind"], row["response_status"]) == ("timeout", None)
    assert_waits(row, "throttle", 30)
    state = await health(db, wid)
    assert (state["consecutive_failures"], state["breaker_failures"]) == (1, 1)


async def test_exponential_policy_per_webhook_jitters_below_the_base(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    receiver.handler = answers(500)
    exponential = await watched_webhook(db, receiver.url + "/exponential")
    await db.execute(
        "UPDATE dispatcher.webhooks SET retry_policy = 'exponential' WHERE id = $1", exponential
    )
    default, _ = await add_webhook(db, receiver.url + "/default", ["t.x"], name="default")
    for _ in range(5):
        await publish(db, "t.x")
    settings = fast_settings(retry_schedule=(25, 25), retry_exponential_base_s=100)

    async def all_attempted() -> bool:
        tried = await db.fetchval("SELECT count(DISTINCT delivery_id) FROM dispatcher.attempts")
        return bool(tried == 10)

    await add_webhook(db, receiver.url + "/witness", ["witness.x"], name="witness")
    await settle_and_stop(db, dsn, settings, receiver, all_attempted)

    firsts = [r for r in await attempts_of(db, exponential) if r["attempt"] == 1]
    assert len(firsts) == 5
    assert {r["retry_reason"] for r in firsts} == {"schedule"}
    assert all(0 <= r["retry_in_s"] <= 100 for r in firsts), [r["retry_in_s"] for r in firsts]
    assert len({r["retry_in_s"] for r in firsts}) == 5  # full jitter: no two alike
    # A webhook without a policy of its own keeps the daemon's default, the schedule.
    rows = await attempts_of(db, default)
    assert [(r["attempt"], r["retry_reason"], r["retry_in_s"]) for r in rows] == [
        (1, "schedule", 25)
    ] * 5


@pytest.mark.parametrize(("own", "expected"), [(None, "exponential"), ("schedule", "schedule")])
async def test_daemon_default_policy_and_a_webhook_override(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, own: str | None, expected: str
) -> None:
    receiver.handler = by_path(ok, endpoint=answers(500))
    wid = await watched_webhook(db, receiver.url + "/endpoint")
    await db.execute("UPDATE dispatcher.webhooks SET retry_policy = $2 WHERE id = $1", wid, own)

    row = await first_attempt(
        db,
        dsn,
        receiver,
        wid,
        retry_policy="exponential",
        retry_schedule=(25, 25),
        retry_exponential_base_s=1000,
        retry_exponential_max_s=1000,
    )

    assert row["retry_reason"] == "schedule"
    if expected == "schedule":
        assert row["retry_in_s"] == 25
    else:
        assert 0 <= row["retry_in_s"] <= 1000 and row["retry_in_s"] != 25


async def test_exponential_policy_gives_up_after_its_attempts(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    receiver.handler = answers(500)
    wid = await watched_webhook(db, receiver.url)
    await publish(db, "t.x")
    settings = fast_settings(
        retry_policy="exponential",
        retry_exponential_base_s=0.01,
        retry_exponential_max_s=0.05,
        retry_exponential_attempts=4,
    )

    await deliver_all(settings, dsn)

    rows = await attempts_of(db, wid)
    assert [r["retry_reason"] for r in rows] == ["schedule"] * 3 + ["exhausted"]
    assert rows[-1]["status"] == "failed"
