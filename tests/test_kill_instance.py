"""kill -9 of one daemon of four loses nothing, and the only duplicates are what it held.

Four `dispatcher run` processes share one database; each sends from its own loopback address
(bind_address), so the receiver knows which instance sent every request. The receiver answers
slowly, so every instance always has requests in flight. Once all four are sending and the
victim has requests unanswered, the victim is frozen with SIGSTOP, its holdings are measured,
and it is killed with SIGKILL. The other three run on, unaware, until every delivery succeeded.

What the victim had in flight is measured, not assumed. While it is frozen it can write nothing,
and nobody else may touch its rows until their leases expire (lease_seconds is short but well
above what a send takes), so a snapshot then sees all of them still leased under its tokens:

- `leased`: every row with status 'pending' and a lease token, i.e. leased and unfinished by
  any of the four, with its token (one token per lease batch, drawn by the instance that leased).
- The victim's tokens: those under which it is seen to have sent something. A row of `leased`
  whose message reached the receiver from the victim's address was leased by the victim under
  that row's token (that token is its lease right now, and the victim sent under no other).
  Read after the run, so a request still in a socket buffer at the freeze counts too.
- `held`: every row of `leased` under one of the victim's tokens, sent yet or not. It may
  exceed max_in_flight: a slot is free again once an outcome is buffered, before it is written.

This can under-count the victim's holdings only by batches it had leased and not begun to send,
which cannot come back as duplicates; and it can over-count by an outcome write the victim had
handed to the server at the instant it froze, which only loosens the bound by that batch. The
receiver writes no response from just before the SIGSTOP until the victim is seen stopped, so
the requests it had not answered to the victim then are certainly in flight (the victim never
reads their response): the test checks that the measurement contains them.

It proves: every message is delivered; every message the receiver got twice is one the victim
held, and the extra receipts number no more than `held`; what the victim held is taken over by
the other three after its leases expire; the database ends with no pending row and no lease;
and the other three stop cleanly after it all.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web

from tests.conftest import Receiver, add_webhook, daemon_process, eventually

pytestmark = pytest.mark.slow

# Each instance sends from its own address, which the receiver sees as the request's remote.
INSTANCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
VICTIM = INSTANCES[0]
# One event type per webhook: a message id names exactly one delivery.
EVENT_TYPES = ("kill.a", "kill.b", "kill.c", "kill.d")
EVENTS_PER_TYPE = 500
# Slow enough that each instance always has requests unanswered, and far below the timeout.
ANSWER_S = 0.08
DAEMON_ENV = {
    "DISPATCHER_LOG_LEVEL": "warning",
    "DISPATCHER_MAX_IN_FLIGHT": "8",
    "DISPATCHER_PER_ENDPOINT_CONCURRENCY": "8",
    "DISPATCHER_LEASE_BATCH_SIZE": "8",
    # A dead holder's rows are due again within seconds; a live one finishes well inside that.
    "DISPATCHER_REQUEST_TIMEOUT_S": "2",
    "DISPATCHER_LEASE_SECONDS": "4",
    "DISPATCHER_SHUTDOWN_GRACE_S": "5",
}


class SlowEndpoint:
    """Answer after ANSWER_S and keep, per sender address, the messages not yet answered.

    While `answering` is clear, no response is written: what is unanswered then stays so.
    """

    def __init__(self) -> None:
        self.unanswered: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.answering = asyncio.Event()
        self.answering.set()

    async def answer(self, request: web.Request, receiver: Receiver) -> web.Response:
        source, message_id = request.remote or "", request.headers["webhook-id"]
        self.unanswered[source][message_id] += 1
        try:
            await asyncio.sleep(ANSWER_S)
            await self.answering.wait()
            return web.Response(text="ok")
        finally:
            self.unanswered[source][message_id] -= 1
            if not self.unanswered[source][message_id]:
                del self.unanswered[source][message_id]


@asynccontextmanager
async def instances(dsn: str, logs: Path) -> AsyncIterator[dict[str, asyncio.subprocess.Process]]:
    """Run one daemon per address in INSTANCES, its log in `logs`; kill what is left after."""
    async with AsyncExitStack() as stack:
        procs = {}
        for address in INSTANCES:
            log = stack.enter_context((logs / f"daemon-{address}.log").open("wb"))
            procs[address] = await stack.enter_async_context(
                daemon_process(
                    dsn, stdout=log.fileno(), DISPATCHER_BIND_ADDRESS=address, **DAEMON_ENV
                )
            )
        yield procs


def stopped(pid: int) -> bool:
    """Whether the process is stopped by a signal (state T in /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"


async def listening(db: asyncpg.Pool, instances: int) -> bool:
    """Whether `instances` daemons hold their LISTEN connection to this database."""
    count: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'webhook-dispatcher-listen'"
    )
    return count == instances


async def all_succeeded(db: asyncpg.Pool, total: int) -> bool:
    row = await db.fetchrow(
        "SELECT count(*) AS rows, count(*) FILTER (WHERE status = 'succeeded') AS succeeded"
        " FROM dispatcher.deliveries"
    )
    assert row is not None and row["rows"] == total
    return bool(row["succeeded"] == total)


async def test_kill_9_of_one_instance_of_four_loses_nothing(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, tmp_path: Path
) -> None:
    endpoint = SlowEndpoint()
    receiver.handler = endpoint.answer
    for i, event_type in enumerate(EVENT_TYPES):
        await add_webhook(db, f"{receiver.url}/w{i}", [event_type], name=f"kill-{i}")
    total = len(EVENT_TYPES) * EVENTS_PER_TYPE

    async with instances(dsn, tmp_path) as procs:
        # Publish once all four are up, so that none finds the work done before it starts.
        await eventually(lambda: listening(db, len(INSTANCES)), within_s=30)
        await db.execute(
            "INSERT INTO dispatcher.events (event_type, payload) SELECT t,"
            " jsonb_build_object('i', i) FROM unnest($1::text[]) t, generate_series(1, $2) i",
            list(EVENT_TYPES),
            EVENTS_PER_TYPE,
        )
        published = {str(r[0]) for r in await db.fetch("SELECT message_id FROM dispatcher.events")}
        assert len(published) == total

        async def all_four_sending_and_victim_busy() -> bool:
            sources = {r.remote for r in receiver.requests}
            return sources >= set(INSTANCES) and len(endpoint.unanswered[VICTIM]) >= 3

        await eventually(all_four_sending_and_victim_busy, within_s=30)
        victim = procs.pop(VICTIM)
        # SIGSTOP takes effect a moment after it is sent: hold every response until the victim
        # is seen stopped, so none of its unanswered requests can be answered and read first.
        endpoint.answering.clear()
        victim.send_signal(signal.SIGSTOP)

        async def victim_stopped() -> bool:
            return stopped(victim.pid)

        await eventually(victim_stopped, within_s=10)
        # In flight for good: the victim never reads these responses.
        unanswered = set(endpoint.unanswered[VICTIM])
        endpoint.answering.set()
        frozen_at = time.monotonic()
        leased: dict[str, uuid.UUID] = {
            str(r["message_id"]): r["lease_token"]
            for r in await db.fetch(
                "SELECT message_id, lease_token FROM dispatcher.deliveries"
                " WHERE status = 'pending' AND lease_token IS NOT NULL"
            )
        }
        victim.send_signal(signal.SIGKILL)
        assert await victim.wait() == -signal.SIGKILL
        assert receiver.requests, "nothing was sent before the kill"

        await eventually(lambda: all_succeeded(db, total), within_s=45)
        left = await db.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'pending') AS pending,"
            " count(*) FILTER (WHERE lease_token IS NOT NULL) AS leases"
            " FROM dispatcher.deliveries"
        )
        assert left is not None and (left["pending"], left["leases"]) == (0, 0)

        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            exits = {address: await proc.wait() for address, proc in procs.items()}
        assert exits == dict.fromkeys(procs, 0)

    received = Counter(r.headers["webhook-id"] for r in receiver.requests)
    sent_by_victim = {r.headers["webhook-id"] for r in receiver.requests if r.remote == VICTIM}
    victim_tokens = {token for mid, token in leased.items() if mid in sent_by_victim}
    held = {mid for mid, token in leased.items() if token in victim_tokens}
    duplicates = {mid: n - 1 for mid, n in received.items() if n > 1}
    taken_over = {
        r.headers["webhook-id"]
        for r in receiver.requests
        if r.remote != VICTIM and r.at > frozen_at and r.headers["webhook-id"] in held
    }
    figures = (
        f"leased by all four at the freeze: {len(leased)}, held by the victim: {len(held)}"
        f" ({len(victim_tokens)} batches), unanswered to it: {len(unanswered)},"
        f" taken over: {len(taken_over)}, duplicate receipts: {sum(duplicates.values())}"
    )
    print(figures)

    assert set(received) == published  # every message at least once
    assert unanswered, figures  # the victim died with requests in flight
    assert unanswered <= held, figures  # the measurement sees what is surely in flight
    assert set(duplicates) <= held, figures
    assert sum(duplicates.values()) <= len(held), figures
    assert unanswered <= taken_over, figures  # its work went on without it
