"""The failure streak and the operator events it publishes through our own SQL contract:
dispatcher.webhook.failing, .disabled (auto-disable, reason 'failing') and .recovered, delivered
to an operations webhook that names them and to no '*' webhook."""

from __future__ import annotations

from typing import Any

import asyncpg

from tests.conftest import (
    Receiver,
    add_webhook,
    deliver_all,
    eventually,
    fast_settings,
    publish,
    running,
)
from tests.health_support import (
    OPERATOR_TYPES,
    answers,
    by_path,
    health,
    ok,
    operator_events,
    received_events,
    statuses,
    webhook,
)

# Fails for a second before it may be disabled; retries every 0.2 s meanwhile.
STREAK = {
    "retry_schedule": (0.2,) * 50,
    "failing_after_s": 0.0,
    "auto_disable_after_s": 1.0,
    "auto_disable_min_attempts": 3,
    "breaker_threshold": 1000,
}


async def watched(db: asyncpg.Pool, receiver: Receiver, path: str) -> tuple[int, int, int]:
    """Add the webhook under test, an operations webhook and a '*' webhook."""
    wid, _ = await add_webhook(db, receiver.url + path, ["t.x"], name="endpoint")
    ops, _ = await add_webhook(db, receiver.url + "/ops", OPERATOR_TYPES, name="ops")
    star, _ = await add_webhook(db, receiver.url + "/star", ["*"], name="star")
    return wid, ops, star


def sent_to(receiver: Receiver, path: str, event_type: str) -> list[Any]:
    return [e["data"] for e in received_events(receiver, path) if e["type"] == event_type]


async def auto_disabled(db: asyncpg.Pool, dsn: str, receiver: Receiver) -> int:
    """Let a webhook that answers 500 fail until it is disabled; return its id."""
    receiver.handler = by_path(ok, down=answers(500))
    wid, _, _ = await watched(db, receiver, "/down")
    await publish(db, "t.x")

    async def told() -> bool:
        return bool(sent_to(receiver, "/ops", "dispatcher.webhook.disabled"))

    async with running(fast_settings(**STREAK), dsn):
        await eventually(told, within_s=30)
    return wid


async def test_failing_webhook_is_reported_then_disabled_after_the_window(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    wid = await auto_disabled(db, dsn, receiver)

    hook = await webhook(db, wid)
    state = await health(db, wid)
    assert (hook["status"], hook["disabled_reason"]) == ("disabled", "failing")
    assert state["consecutive_failures"] >= 3
    assert (hook["disabled_at"] - state["first_failure_at"]).total_seconds() >= 1.0
    assert "500" in state["last_error"]
    # No attempt was lost to the disable: each one sent is recorded, and nothing is pending.
    [delivery] = await db.fetch("SELECT * FROM dispatcher.deliveries WHERE webhook_id = $1", wid)
    assert delivery["status"] in ("cancelled", "failed")
    recorded = await db.fetchval(
        "SELECT count(*) FROM dispatcher.attempts WHERE delivery_id = $1", delivery["id"]
    )
    assert delivery["attempts"] == recorded == len(receiver.on("/down"))

    events = await operator_events(db)
    assert [e["type"] for e in events] == [
        "dispatcher.webhook.failing",
        "dispatcher.webhook.disabled",
    ]
    failing, disabled = events
    assert failing["webhook_id"] == disabled["webhook_id"] == wid
    assert failing["service_name"] == disabled["service_name"] == "endpoint"
    assert failing["url"] == disabled["url"] == receiver.url + "/down"
    assert {"failing_since", "consecutive_failures", "last_error"} <= set(failing)
    assert disabled["reason"] == "failing"
    assert disabled["consecutive_failures"] >= 3
    assert "500" in disabled["last_error"]
    assert {"first_failure_at", "disabled_at"} <= set(disabled)
    assert failing["failing_since"] == disabled["first_failure_at"]

    # The operations webhook got both, as published; the '*' webhook got neither.
    assert sent_to(receiver, "/ops", "dispatcher.webhook.disabled") == [
        {k: v for k, v in disabled.items() if k != "type"}
    ]
    assert sent_to(receiver, "/ops", "dispatcher.webhook.failing") == [
        {k: v for k, v in failing.items() if k != "type"}
    ]
    assert {e["type"] for e in received_events(receiver, "/star")} == {"t.x"}


async def test_enabling_again_clears_the_streak(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    from dispatcher.manage.admin import enable_webhook

    wid = await auto_disabled(db, dsn, receiver)

    async with db.acquire() as conn:
        await enable_webhook(conn, wid)

    hook = await webhook(db, wid)
    assert (hook["status"], hook["disabled_reason"], hook["disabled_at"]) == ("active", None, None)
    state = await health(db, wid)
    assert (state["consecutive_failures"], state["first_failure_at"]) == (0, None)
    assert (state["breaker_failures"], state["breaker_until"], state["breaker_trips"]) == (
        0,
        None,
        0,
    )
    assert (state["failing_since"], state["probe_delivery_id"]) == (None, None)
    # Kept as history.
    assert state["last_error"] is not None and state["last_failure_at"] is not None

    # A fresh start: the next event is delivered, and no second disable follows.
    receiver.handler = ok
    await publish(db, "t.x")
    await deliver_all(fast_settings(**STREAK), dsn)
    assert (await statuses(db, wid)).get("succeeded") == 1
    assert (await webhook(db, wid))["status"] == "active"


async def test_success_after_failing_publishes_recovered_once(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    receiver.handler = by_path(ok, flaky=answers(500, 500, 500, 200))
    wid, ops, _ = await watched(db, receiver, "/flaky")
    await publish(db, "t.x")
    settings = fast_settings(**{**STREAK, "retry_schedule": (0.05,) * 10})

    await deliver_all(settings, dsn)
    state = await health(db, wid)
    await publish(db, "t.x")  # another success does not recover it again
    await deliver_all(settings, dsn)

    assert await statuses(db, wid) == {"succeeded": 2}
    assert (state["consecutive_failures"], state["first_failure_at"]) == (0, None)
    assert state["failing_since"] is None
    assert "500" in state["last_error"]  # kept as history
    events = await operator_events(db)
    assert [e["type"] for e in events] == [
        "dispatcher.webhook.failing",
        "dispatcher.webhook.recovered",
    ]
    failing, recovered = events
    assert recovered["webhook_id"] == wid
    assert recovered["url"] == receiver.url + "/flaky"
    assert recovered["service_name"] == "endpoint"
    assert recovered["failing_since"] == failing["failing_since"]
    assert "recovered_at" in recovered
    assert await statuses(db, ops) == {"succeeded": 2}
    assert sorted(e["type"] for e in received_events(receiver, "/ops")) == [
        "dispatcher.webhook.failing",
        "dispatcher.webhook.recovered",
    ]
    assert {e["type"] for e in received_events(receiver, "/star")} == {"t.x"}
    assert (await webhook(db, wid))["status"] == "active"


async def test_short_streak_below_the_minimum_attempts_is_not_disabled(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    # Failing for longer than the window, but with fewer attempts than the minimum.
    receiver.handler = by_path(ok, down=answers(500))
    wid, _, _ = await watched(db, receiver, "/down")
    await publish(db, "t.x")

    await deliver_all(
        fast_settings(**{**STREAK, "retry_schedule": (1.2,), "auto_disable_min_attempts": 3}),
        dsn,
    )

    assert len(receiver.on("/down")) == 2
    assert (await webhook(db, wid))["status"] == "active"
    assert await statuses(db, wid) == {"failed": 1}
    assert [e["type"] for e in await operator_events(db)] == ["dispatcher.webhook.failing"]
