"""`max_in_flight` caps the requests one daemon has open at once, over every webhook.

The receiver holds every request until the cap's worth are open together, and for a moment
more: with a cap that does not hold, more requests arrive meanwhile, or more rows are leased
than are being sent. The webhooks' own caps (per_endpoint_concurrency) are well above it, so
they are not what stops the daemon.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiohttp import web

from tests.conftest import Receiver, add_webhook, deliver_all, fast_settings, publish

PER_WEBHOOK_CAP = 10


class Gate:
    """Hold requests until `full` of them are open at once, then until released; remember the
    most that were ever open at once."""

    def __init__(self, full: int) -> None:
        self.count = full
        self.full = asyncio.Event()
        self.release = asyncio.Event()
        self.most = 0

    async def __call__(self, request: web.Request, rec: Receiver) -> web.StreamResponse:
        self.most = max(self.most, rec.in_progress)
        if rec.in_progress >= self.count:
            self.full.set()
        await self.release.wait()
        return web.Response(text="ok")


@pytest.mark.parametrize(
    ("cap", "webhooks", "events"),
    [(3, 1, 20), (3, 6, 4), (5, 1, 20)],
    ids=["3-one-webhook", "3-six-webhooks", "5-one-webhook"],
)
async def test_no_more_than_max_in_flight_requests_are_open_at_once(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, cap: int, webhooks: int, events: int
) -> None:
    gate = Gate(cap)
    receiver.handler = gate
    for i in range(webhooks):
        await add_webhook(db, f"{receiver.url}/w{i}", ["t.x"], name=f"w{i}")
    for _ in range(events):
        await publish(db, "t.x")
    total = webhooks * events
    assert cap < total and cap < PER_WEBHOOK_CAP
    settings = fast_settings(max_in_flight=cap, per_endpoint_concurrency=PER_WEBHOOK_CAP)

    daemon = asyncio.create_task(deliver_all(settings, dsn, within_s=60))
    try:
        async with asyncio.timeout(20):
            await gate.full.wait()
        # A negative check: nothing more may arrive while the first `cap` requests are held.
        # Leasing and sending another takes milliseconds; this waits far longer.
        await asyncio.sleep(0.5)
        assert (len(receiver.requests), receiver.in_progress, gate.most) == (cap, cap, cap)
        # Nor is anything leased that cannot be sent now: a lease waiting for a free slot
        # would run out while it waits.
        leased = await db.fetchval(
            "SELECT count(*) FROM dispatcher.deliveries_active WHERE lease_token IS NOT NULL"
        )
        assert leased == cap
    finally:
        gate.release.set()
        stats = await daemon

    assert stats.failed_task is None
    assert len(receiver.requests) == total
    assert gate.most == cap
    assert (
        await db.fetchval("SELECT count(*) FROM dispatcher.deliveries WHERE status = 'succeeded'")
        == total
    )
