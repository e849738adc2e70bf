"""End to end: SQL insert -> lease -> signed POST to a real local receiver -> recorded outcome."""

from __future__ import annotations

import asyncio
import itertools
import time

import asyncpg
import orjson
import pytest
import structlog.testing
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from dispatcher import __version__
from dispatcher.delivery.leasing import Leaser
from dispatcher.delivery.signing import verify
from dispatcher.store import LeasedDelivery
from tests.conftest import (
    Receiver,
    add_webhook,
    deliver_all,
    eventually,
    fast_settings,
    publish,
    running,
)


async def test_delivers_signed_standard_webhook(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    _, secret = await add_webhook(db, receiver.url + "/hook", ["customer.updated"])
    mid = await publish(db, "customer.updated", '{"id": 42, "name": "Ada"}')
    created = await db.fetchval("SELECT created_at FROM dispatcher.events")

    await deliver_all(fast_settings(secret_header="stigg-webhooks-secret"), dsn)

    [req] = receiver.requests
    assert req.path == "/hook"
    assert orjson.loads(req.body) == {
        "messageId": mid,
        "type": "customer.updated",
        "timestamp": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "data": {"id": 42, "name": "Ada"},
    }
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["User-Agent"] == f"webhook-dispatcher/{__version__}"
    assert req.headers["webhook-id"] == mid
    assert abs(int(req.headers["webhook-timestamp"]) - time.time()) < 30
    assert req.headers["stigg-webhooks-secret"] == secret
    assert "webhook-secret" not in req.headers
    lower = {k.lower(): v for k, v in req.headers.items()}
    verify(secret, lower, req.body)
    Webhook(secret).verify(req.body, lower)

    row = await db.fetchrow("SELECT status, attempts, finished_at FROM dispatcher.deliveries")
    assert (row["status"], row["attempts"]) == ("succeeded", 1)
    attempt = await db.fetchrow("SELECT * FROM dispatcher.attempts")
    assert (attempt["attempt"], attempt["response_status"], attempt["error_kind"]) == (1, 200, None)
    # A 2xx body is not read (only failures' bodies help anyone), so none is stored.
    assert attempt["response_body"] is None


@pytest.mark.slow
async def test_retries_with_schedule_spacing_same_id_and_valid_signatures(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    async def fail_three_times(request: web.Request, rec: Receiver) -> web.Response:
        return web.Response(status=503 if len(rec.requests) <= 3 else 200)

    receiver.handler = fail_three_times
    _, secret = await add_webhook(db, receiver.url, ["t.x"])
    mid = await publish(db, "t.x", '{"n": 1}')
    schedule = (0.3, 0.6, 0.9, 5, 5, 5)
    # Polls 30 s apart: a retry that comes sooner was woken when it fell due, not found by a poll.
    settings = fast_settings(retry_schedule=schedule, poll_interval_s=30.0)

    async with running(settings, dsn):
        await receiver.wait_for(4, within_s=60)

        async def written() -> bool:
            return await db.fetchval("SELECT status FROM dispatcher.deliveries") == "succeeded"

        await eventually(written)

    assert len(receiver.requests) == 4
    gaps = [b.at - a.at for a, b in itertools.pairwise(receiver.requests)]
    for gap, delay in zip(gaps, schedule, strict=False):
        # Never early: the retry's run_at is set from the outcome, written after the answer
        # came. No sooner bound than a third of the poll interval: how late is CPU's business.
        assert delay <= gap < 10, (gaps, schedule)
    assert {r.headers["webhook-id"] for r in receiver.requests} == {mid}
    assert len({r.headers["webhook-timestamp"] for r in receiver.requests}) >= 2
    for r in receiver.requests:
        Webhook(secret).verify(r.body, dict(r.headers))

    rows = await db.fetch(
        "SELECT attempt, response_status, error_kind FROM dispatcher.attempts ORDER BY attempt"
    )
    assert [tuple(r) for r in rows] == [
        (1, 503, "status"),
        (2, 503, "status"),
        (3, 503, "status"),
        (4, 200, None),
    ]
    assert await db.fetchval("SELECT status FROM dispatcher.deliveries") == "succeeded"


async def test_always_failing_delivery_ends_failed_after_seven_attempts(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    async def always_500(request: web.Request, rec: Receiver) -> web.Response:
        return web.Response(status=500, text="nope")

    receiver.handler = always_500
    await add_webhook(db, receiver.url, ["t.x"])
    await publish(db, "t.x")

    await deliver_all(fast_settings(), dsn)  # the seed's 6 retries, with zero delays

    assert len(receiver.requests) == 7
    row = await db.fetchrow(
        "SELECT status, attempts, lease_token, finished_at FROM dispatcher.deliveries"
    )
    assert (row["status"], row["attempts"], row["lease_token"]) == ("failed", 7, None)
    assert row["finished_at"] is not None
    assert await db.fetchval("SELECT count(*) FROM dispatcher.attempts") == 7


async def test_redirect_is_a_failure_and_not_followed(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    async def redirect(request: web.Request, rec: Receiver) -> web.Response:
        if request.path == "/start":
            raise web.HTTPFound(rec.url + "/elsewhere")
        return web.Response(text="followed")

    receiver.handler = redirect
    await add_webhook(db, receiver.url + "/start", ["t.x"])
    await publish(db, "t.x")

    await deliver_all(fast_settings(retry_schedule=()), dsn)

    assert receiver.on("/elsewhere") == []
    attempt = await db.fetchrow(
        "SELECT response_status, error_kind, error_message FROM dispatcher.attempts"
    )
    assert attempt["response_status"] == 302
    assert attempt["error_kind"] == "status"
    assert "/elsewhere" in attempt["error_message"]
    assert await db.fetchval("SELECT status FROM dispatcher.deliveries") == "failed"


async def test_disabled_webhook_receives_nothing_and_has_no_backlog_when_enabled(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    wid, _ = await add_webhook(db, receiver.url, ["t.x"])
    await publish(db, "t.x")  # pending when the webhook is disabled
    await db.execute("UPDATE dispatcher.webhooks SET status = 'disabled' WHERE id = $1", wid)
    for _ in range(3):
        await publish(db, "t.x")

    await deliver_all(fast_settings(), dsn)
    assert receiver.requests == []

    await db.execute("UPDATE dispatcher.webhooks SET status = 'active' WHERE id = $1", wid)
    await deliver_all(fast_settings(), dsn)
    assert receiver.requests == []

    await publish(db, "t.x")
    await deliver_all(fast_settings(), dsn)
    assert len(receiver.requests) == 1


async def test_hostile_response_bodies_are_recorded_safely(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    bodies = {
        "/nul": b"before\x00after",
        "/utf8": b"ok \xff\xfe\xc3\x28 end",
        "/huge": b"x" * (10 * 1024 * 1024),
    }

    async def hostile(request: web.Request, rec: Receiver) -> web.Response:
        return web.Response(status=500, body=bodies[request.path])

    receiver.handler = hostile
    for path in bodies:
        await add_webhook(db, receiver.url + path, ["t.x"], name=path)
    await publish(db, "t.x")

    await deliver_all(fast_settings(retry_schedule=()), dsn)

    rows = {
        r["url"].removeprefix(receiver.url): r
        for r in await db.fetch(
            "SELECT w.url, a.response_status, a.response_body, a.response_truncated"
            " FROM dispatcher.attempts a JOIN dispatcher.deliveries d ON d.id = a.delivery_id"
            " JOIN dispatcher.webhooks w ON w.id = d.webhook_id"
        )
    }
    assert rows["/nul"]["response_body"] == "before\ufffdafter"
    assert rows["/utf8"]["response_body"] == "ok \ufffd\ufffd\ufffd( end"
    assert rows["/huge"]["response_body"] == "x" * 4096
    assert rows["/huge"]["response_truncated"] is True
    assert rows["/nul"]["response_truncated"] is False
    assert {r["response_status"] for r in rows.values()} == {500}


@pytest.mark.slow
async def test_slow_endpoint_does_not_delay_a_fast_one(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    slow_release = asyncio.Event()

    async def handler(request: web.Request, rec: Receiver) -> web.Response:
        if request.path == "/slow":
            await slow_release.wait()
        return web.Response(text="ok")

    receiver.handler = handler
    await add_webhook(db, receiver.url + "/slow", ["slow.x"])
    await add_webhook(db, receiver.url + "/fast", ["fast.x"])
    # The slow endpoint's backlog is older, so it sits at the head of the queue.
    await db.execute(
        "INSERT INTO dispatcher.events (event_type, payload)"
        " SELECT 'slow.x', '{}' FROM generate_series(1, 100)"
    )
    await db.execute(
        "INSERT INTO dispatcher.events (event_type, payload)"
        " SELECT 'fast.x', '{}' FROM generate_series(1, 100)"
    )
    # The slow endpoint's requests are held until the fast ones are in: they must not time
    # out (and be sent again) first, however slowly the machine gets through the fast ones.
    settings = fast_settings(
        max_in_flight=16, per_endpoint_concurrency=4, lease_batch_size=16, request_timeout_s=90
    )
    daemon = asyncio.create_task(deliver_all(settings, dsn, within_s=100))
    try:
        await receiver.wait_for(100, "/fast", within_s=60)
        # Every fast delivery arrived while the slow endpoint still held all its requests,
        # and the slow one never had more than its cap in flight.
        assert len(receiver.on("/slow")) == 4
    finally:
        slow_release.set()
    await daemon
    assert len(receiver.on("/slow")) == 100
    assert (
        await db.fetchval("SELECT count(*) FROM dispatcher.deliveries WHERE status = 'succeeded'")
        == 200
    )


async def test_a_sender_worker_that_dies_stops_the_daemon_loudly(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that kills a worker must not leave the daemon running with fewer senders."""

    def broken(self: Leaser, d: LeasedDelivery) -> None:
        raise RuntimeError("bookkeeping bug")

    monkeypatch.setattr(Leaser, "_finish", broken)
    await add_webhook(db, receiver.url, ["t.x"])
    await publish(db, "t.x")
    with pytest.raises(SystemExit, match="internal task leaser died"):
        await deliver_all(fast_settings(), dsn)


async def test_log_levels_say_which_failures_need_a_person(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    """A retry is logged at info; a delivery's last failure and a refused address at warning."""

    async def unavailable(request: web.Request, rec: Receiver) -> web.StreamResponse:
        return web.Response(status=503)

    receiver.handler = unavailable
    await add_webhook(db, receiver.url, ["t.x"], name="flaky")
    # 127.0.0.2 is loopback too, but outside the one address allowed below.
    await add_webhook(db, receiver.url.replace("127.0.0.1", "127.0.0.2"), ["t.x"], name="far")
    await publish(db, "t.x")

    settings = fast_settings(retry_schedule=(0,), allowed_networks=("127.0.0.1/32",))
    with structlog.testing.capture_logs() as logs:
        await deliver_all(settings, dsn)

    failed = sorted(
        (e["error_kind"], e["attempt"], e["next_status"], e["log_level"])
        for e in logs
        if e["event"] == "attempt_failed"
    )
    assert failed == [
        ("blocked_address", 1, "failed", "warning"),
        ("status", 1, "pending", "info"),
        ("status", 2, "failed", "warning"),
    ]
