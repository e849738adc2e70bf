"""Disabling or deleting a webhook while the real daemon holds some of its deliveries in flight
and others pending: the pending ones are never sent, late outcomes are rejected, nothing is sent
while it is disabled, and enabling it again replays nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web

from dispatcher import store
from dispatcher.daemon import RunStats, serve
from dispatcher.delivery.outcomes import OutcomeWriter
from dispatcher.delivery.sender import Outcome
from dispatcher.settings import Settings
from tests.conftest import Cli, Receiver, add_webhook, deliver_all, fast_settings, publish

HELD = "/held"
CONTROL = "/control"


def settings() -> Settings:
    # Two in flight per webhook, so a backlog of five leaves three pending behind them; retries
    # allowed, so an accepted late failure would show up as another request.
    return fast_settings(per_endpoint_concurrency=2, retry_schedule=(0, 0, 0))


@dataclass
class Daemon:
    """`serve` running in a task of this loop, stopped (and drained) on request."""

    dsn: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[RunStats] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(
            serve(settings(), self.dsn, stop=self.stop, handle_signals=False), name="daemon"
        )

    async def shutdown(self) -> RunStats:
        assert self.task is not None
        self.stop.set()
        async with asyncio.timeout(30):
            return await self.task


@dataclass
class Scene:
    held: int
    control: int
    release: asyncio.Event
    daemon: Daemon


@pytest.fixture
async def scene(db: asyncpg.Pool, dsn: str, receiver: Receiver) -> AsyncIterator[Scene]:
    """A held webhook with 2 deliveries in flight (its receiver holds them) and 3 pending behind
    them, and a control webhook for the same events that the daemon has fully served."""
    release = asyncio.Event()

    async def handler(request: web.Request, rec: Receiver) -> web.Response:
        if request.path == HELD and not release.is_set():
            await release.wait()
            return web.Response(status=500, text="late failure")
        return web.Response(text="ok")

    receiver.handler = handler
    held, _ = await add_webhook(db, receiver.url + HELD, ["t.x"], name="Held")
    control, _ = await add_webhook(db, receiver.url + CONTROL, ["t.x"], name="Control")
    for n in range(5):
        await publish(db, "t.x", f'{{"n": {n}}}')
    daemon = Daemon(dsn)
    daemon.start()
    try:
        await receiver.wait_for(2, HELD)
        # The control backlog needs later lease passes, which come after the first pass has
        # handed back the held webhook's rows it could not start.
        await receiver.wait_for(5, CONTROL)
        assert await held_states(db, held) == {("pending", True): 2, ("pending", False): 3}
        assert len(receiver.on(HELD)) == 2
        yield Scene(held, control, release, daemon)
    finally:
        release.set()
        if not daemon.stop.is_set():
            await daemon.shutdown()


async def held_states(db: asyncpg.Pool, webhook_id: int) -> dict[tuple[str, bool], int]:
    rows = await db.fetch(
        "SELECT status, lease_token IS NOT NULL AS leased, count(*) AS n"
        " FROM dispatcher.deliveries WHERE webhook_id = $1 GROUP BY 1, 2",
        webhook_id,
    )
    return {(r["status"], r["leased"]): r["n"] for r in rows}


async def final_states(db: asyncpg.Pool, webhook_id: int) -> list[tuple[str, str | None, int]]:
    rows = await db.fetch(
        "SELECT status, last_error_kind, attempts FROM dispatcher.deliveries WHERE webhook_id = $1",
        webhook_id,
    )
    return sorted((r["status"], r["last_error_kind"], r["attempts"]) for r in rows)


async def attempts_of(db: asyncpg.Pool, webhook_id: int) -> int:
    n: int = await db.fetchval(
        "SELECT count(*) FROM dispatcher.attempts a"
        " JOIN dispatcher.deliveries d ON d.id = a.delivery_id WHERE d.webhook_id = $1",
        webhook_id,
    )
    return n


async def test_disable_cancels_pending_rejects_late_outcomes_and_replays_nothing(
    cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver, scene: Scene
) -> None:
    result = await cli("webhooks", "disable", str(scene.held))
    # Five pending, two of them leased and in flight: all are cancelled, and counted.
    assert (result.exit_code, result.output) == (
        0,
        f"Webhook {scene.held} is disabled; 5 pending deliveries cancelled.\n",
    )
    assert await held_states(db, scene.held) == {("cancelled", False): 5}

    # Published while disabled: the daemon serves the control webhook, the held one gets nothing.
    missed = [await publish(db, "t.x") for _ in range(3)]
    await receiver.wait_for(8, CONTROL)
    assert len(receiver.on(HELD)) == 2

    scene.release.set()  # the two held attempts now end, as failures that could be retried
    stats = await scene.daemon.shutdown()

    # Both late outcomes reached the writer and were refused, each once.
    assert stats.rejected_outcomes == 2
    assert (
        await final_states(db, scene.held)
        == [("cancelled", "webhook_disabled", 0)] * 3 + [("cancelled", "webhook_disabled", 1)] * 2
    )
    assert await attempts_of(db, scene.held) == 0
    assert (
        await db.fetchval(
            "SELECT count(*) FROM dispatcher.deliveries WHERE message_id = ANY($1::uuid[])",
            missed,
        )
        == 3  # the control webhook's only
    )

    # While disabled, a fresh daemon sends nothing to it.
    await deliver_all(settings(), dsn)
    assert len(receiver.on(HELD)) == 2

    result = await cli("webhooks", "enable", str(scene.held))
    assert (result.exit_code, result.output) == (0, f"Webhook {scene.held} is active.\n")
    await deliver_all(settings(), dsn)
    assert len(receiver.on(HELD)) == 2
    assert (
        await final_states(db, scene.held)
        == [("cancelled", "webhook_disabled", 0)] * 3 + [("cancelled", "webhook_disabled", 1)] * 2
    )

    # It does work again for what is published from now on.
    fresh = await publish(db, "t.x")
    await deliver_all(settings(), dsn)
    assert [r.headers["webhook-id"] for r in receiver.on(HELD)[2:]] == [fresh]
    assert await final_states(db, scene.held) == [("cancelled", "webhook_disabled", 0)] * 3 + [
        ("cancelled", "webhook_disabled", 1)
    ] * 2 + [("succeeded", None, 1)]


async def test_delete_cancels_pending_rejects_late_outcomes_and_keeps_the_log(
    cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver, scene: Scene
) -> None:
    result = await cli("webhooks", "delete", str(scene.held), "--yes")
    assert (result.exit_code, result.output) == (
        0,
        f"Deleted webhook {scene.held}; 5 pending deliveries cancelled.\n",
    )
    assert await held_states(db, scene.held) == {("cancelled", False): 5}

    await publish(db, "t.x")
    await receiver.wait_for(6, CONTROL)
    scene.release.set()
    stats = await scene.daemon.shutdown()
    await deliver_all(settings(), dsn)

    # Both late outcomes reached the writer and were refused, each once.
    assert stats.rejected_outcomes == 2
    assert len(receiver.on(HELD)) == 2
    assert (
        await final_states(db, scene.held)
        == [("cancelled", "webhook_deleted", 0)] * 3 + [("cancelled", "webhook_deleted", 1)] * 2
    )
    assert await attempts_of(db, scene.held) == 0

    # The delivery log outlives the webhook.
    listed = await cli("deliveries", "list", "--webhook", str(scene.held), "--json")
    assert listed.exit_code == 0, listed.output
    rows = orjson.loads(listed.output)
    assert [(r["service_name"], r["status"], r["last_error_kind"]) for r in rows] == [
        (None, "cancelled", "webhook_deleted")
    ] * 5
    human = await cli("deliveries", "list", "--webhook", str(scene.held))
    assert human.output.count(f"{scene.held} (deleted)") == 5


async def test_disable_with_the_daemon_idle_leaves_nothing_to_send(
    cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    wid, _ = await add_webhook(db, receiver.url + "/w", ["t.x"])
    pending = [uuid.UUID(await publish(db, "t.x")) for _ in range(4)]

    result = await cli("webhooks", "disable", str(wid))
    assert result.exit_code == 0, result.output
    await deliver_all(settings(), dsn)
    result = await cli("webhooks", "enable", str(wid))
    assert result.exit_code == 0, result.output
    await deliver_all(settings(), dsn)

    assert receiver.requests == []
    rows = await db.fetch("SELECT message_id, status FROM dispatcher.deliveries ORDER BY id")
    assert [(r["message_id"], r["status"]) for r in rows] == [(m, "cancelled") for m in pending]


# Found while testing the above: the count of rejected outcomes at shutdown was sometimes too high.


async def test_a_flush_cancelled_at_shutdown_does_not_write_its_batch_twice(
    db: asyncpg.Pool, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_webhook(db, "https://x.example/", ["t.x"])
    await publish(db, "t.x")
    [leased] = (await store.lease_batch(db, 1, 60.0)).deliveries
    committed = asyncio.Event()
    reply_arrives = asyncio.Event()
    write_outcomes = store.write_outcomes

    async def commit_then_slow_reply(
        conn: store.Executor, outcomes: Sequence[store.OutcomeRow], rules: store.HealthRules
    ) -> tuple[set[int], list[dict[str, Any]]]:
        # The statement commits in PostgreSQL; its reply is still on its way to the client.
        written = await write_outcomes(conn, outcomes, rules)
        committed.set()
        await reply_arrives.wait()
        return written

    monkeypatch.setattr(store, "write_outcomes", commit_then_slow_reply)
    conn = store.DedicatedConnection(dsn, "outcomes")
    writer = OutcomeWriter(settings(), conn, on_retry_due=lambda: None)
    flusher = asyncio.create_task(writer.run(), name="outcome-writer")
    writer.add(
        leased,
        Outcome(
            ok=True,
            retryable=False,
            started_at=datetime.now(UTC),
            duration_ms=1,
            response_status=200,
        ),
    )
    async with asyncio.timeout(10):
        await committed.wait()
        # What the daemon's shutdown does: cancel the side task, then flush once more.
        flusher.cancel()
        reply_arrives.set()
        await asyncio.gather(flusher, return_exceptions=True)
        await writer.flush()
    await conn.close()

    assert await db.fetchval("SELECT status FROM dispatcher.deliveries") == "succeeded"
    assert await db.fetchval("SELECT count(*) FROM dispatcher.attempts") == 1
    assert (len(writer), writer.rejected) == (0, 0)
