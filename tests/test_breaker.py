"""The circuit breaker per webhook: it opens on connection failures and 5xx answers, holds the
backlog without spending attempts, lets one probe through per cool-off, survives a restart,
and closes when the endpoint answers again."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import asyncpg
import pytest

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
    answers,
    attempt_count,
    attempts_of,
    black_hole,
    breaker_opened,
    by_path,
    health,
    ok,
    port_of,
    publish_many,
    receiver_on,
    refused_port,
    settle_and_stop,
    statuses,
)

# One event, six attempts at most, no wait between them: only the breaker can hold one back.
BREAKER = {
    "retry_schedule": (0, 0, 0, 0, 0),
    "breaker_threshold": 3,
    "breaker_cooloff_s": 60.0,
    "breaker_cooloff_max_s": 60.0,
    "throttle_min_delay_s": 0.0,
    "connect_timeout_s": 0.5,
}


@contextmanager
def endpoint(kind: str, receiver: Receiver) -> Iterator[str]:
    """Yield the URL of an endpoint that fails as `kind`: 'refused', 'black hole' or a status."""
    with ExitStack() as stack:
        if kind == "refused":
            yield f"http://127.0.0.1:{port_of(stack.enter_context(refused_port()))}/hook"
        elif kind == "black hole":
            yield f"http://127.0.0.1:{stack.enter_context(black_hole())}/hook"
        else:
            receiver.handler = by_path(ok, endpoint=answers(int(kind)))
            yield receiver.url + "/endpoint"


async def leased(db: asyncpg.Pool, webhook_id: int) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM dispatcher.deliveries"
        " WHERE webhook_id = $1 AND lease_token IS NOT NULL",
        webhook_id,
    )
    return count


@pytest.mark.parametrize("kind", ["refused", "black hole", "500", "502", "503"])
async def test_breaker_opens_after_threshold_failures_and_holds_the_rest(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, kind: str
) -> None:
    await add_webhook(db, receiver.url + "/witness", ["witness.x"], name="witness")
    with endpoint(kind, receiver) as url:
        wid, _ = await add_webhook(db, url, ["t.x"], name="endpoint")
        await publish(db, "t.x")

        await settle_and_stop(
            db, dsn, fast_settings(**BREAKER), receiver, lambda: breaker_opened(db, wid)
        )

    # Three attempts opened it; the retry that was due at once was then held without an attempt.
    rows = await attempts_of(db, wid)
    assert len(rows) == 3
    assert (rows[-1]["status"], rows[-1]["delivery_attempts"]) == ("pending", 3)
    state = await health(db, wid)
    assert state["breaker_open"]
    assert state["breaker_failures"] >= 3
    assert state["breaker_trips"] == 1
    assert state["breaker_opened_at"] is not None
    until_s = await db.fetchval(
        "SELECT extract(epoch FROM breaker_until - now())::float8"
        " FROM dispatcher.webhook_health WHERE webhook_id = $1",
        wid,
    )
    assert 40 < until_s <= 60


@pytest.mark.parametrize("status", [400, 404, 429])
async def test_4xx_answers_do_not_open_the_breaker(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, status: int
) -> None:
    receiver.handler = answers(status)
    wid, _ = await add_webhook(db, receiver.url, ["t.x"])
    await publish(db, "t.x")

    await deliver_all(fast_settings(**BREAKER), dsn)

    assert len(receiver.requests) == 6
    assert await statuses(db, wid) == {"failed": 1}
    state = await health(db, wid)
    assert (state["breaker_until"], state["breaker_trips"]) == (None, 0)
    assert state["breaker_failures"] == 0
    assert state["consecutive_failures"] == 6


async def test_an_answer_between_5xx_restarts_the_breaker_count(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    receiver.handler = answers(500, 500, 400, 500, 500, 200)
    wid, _ = await add_webhook(db, receiver.url, ["t.x"])
    await publish(db, "t.x")

    await deliver_all(fast_settings(**BREAKER), dsn)

    assert len(receiver.requests) == 6
    assert await statuses(db, wid) == {"succeeded": 1}
    state = await health(db, wid)
    assert (state["breaker_until"], state["breaker_trips"], state["breaker_failures"]) == (
        None,
        0,
        0,
    )
    assert (state["consecutive_failures"], state["first_failure_at"]) == (0, None)


async def test_open_breaker_survives_a_restart(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    await add_webhook(db, receiver.url + "/witness", ["witness.x"], name="witness")
    settings = fast_settings(**{**BREAKER, "retry_schedule": (0,) * 20})
    with refused_port() as sock:
        wid, _ = await add_webhook(db, f"http://127.0.0.1:{port_of(sock)}/", ["t.x"])
        await publish_many(db, 20)
        await settle_and_stop(db, dsn, settings, receiver, lambda: breaker_opened(db, wid))
        before = await attempt_count(db, wid)
        opened = await health(db, wid)

        # New daemons (two, sharing the database) read the breaker from it: nothing is sent.
        async def at_once() -> bool:
            return True

        async with running(settings, dsn):
            await settle_and_stop(db, dsn, settings, receiver, at_once)

    assert await attempt_count(db, wid) == before
    after = await health(db, wid)
    assert after["breaker_until"] == opened["breaker_until"]
    assert after["breaker_open"]
    assert await statuses(db, wid) == {"pending": 20}
    assert await leased(db, wid) == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_dead_endpoint_with_10000_events_gets_one_probe_per_cooloff_then_everything(
    db: asyncpg.Pool, dsn: str
) -> None:
    events = 10_000
    cooloff_s = 0.5
    settings = fast_settings(
        retry_schedule=(0,) * 50,
        breaker_threshold=5,
        breaker_cooloff_s=cooloff_s,
        breaker_cooloff_max_s=1.0,
    )
    with refused_port() as sock:
        port = port_of(sock)
        wid, _ = await add_webhook(db, f"http://127.0.0.1:{port}/hook", ["t.x"])
        await publish_many(db, events)
        async with running(settings, dsn):
            await eventually(lambda: breaker_opened(db, wid), within_s=60)

            # Attempts already under way when it opened are written; at most one probe is out.
            async def settled() -> bool:
                return await leased(db, wid) <= 1

            await eventually(settled, within_s=30)
            first = await attempt_count(db, wid)

            # Probes keep coming: five more attempts, however long the machine takes for them.
            async def probed() -> bool:
                return await attempt_count(db, wid) >= first + 5

            await eventually(probed, within_s=60)
            assert await leased(db, wid) <= 1
            # One probe per cool-off: each began at least cooloff_s after the one before, by
            # the clocks that started and recorded them, not by when this test looked. (The
            # last four began after every attempt made before the breaker held the rest.)
            starts = await db.fetch(
                "SELECT a.started_at FROM dispatcher.attempts a"
                " JOIN dispatcher.deliveries d ON d.id = a.delivery_id"
                " WHERE d.webhook_id = $1 ORDER BY a.started_at DESC LIMIT 4",
                wid,
            )
            gaps = [(a[0] - b[0]).total_seconds() for a, b in itertools.pairwise(starts)]
            assert min(gaps) >= cooloff_s, gaps
            # Held after the threshold's failures: what was in flight then, and no more leases.
            assert first <= settings.per_endpoint_concurrency + settings.breaker_threshold, first
            state = await health(db, wid)
            assert state["breaker_trips"] >= 2
            assert await statuses(db, wid) == {"pending": events}

            # The endpoint comes back on the same port.
            sock.close()
            async with receiver_on(port) as back:

                async def all_delivered() -> bool:
                    return await statuses(db, wid) == {"succeeded": events}

                await eventually(all_delivered, within_s=200, every_s=0.5)
                assert len({r.headers["webhook-id"] for r in back.requests}) == events

    state = await health(db, wid)
    assert state["breaker_until"] is None
    assert (state["breaker_failures"], state["breaker_trips"]) == (0, 0)
    assert (state["consecutive_failures"], state["first_failure_at"]) == (0, None)
    # Every attempt that failed was a refused connect, and none came near the schedule's end.
    failed = await db.fetch(
        "SELECT DISTINCT error_kind FROM dispatcher.attempts WHERE error_kind IS NOT NULL"
    )
    assert [r["error_kind"] for r in failed] == ["connect"]
    assert await db.fetchval("SELECT max(attempts) FROM dispatcher.deliveries") < 50
