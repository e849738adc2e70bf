"""Endpoints that fail the way real ones do, on loopback only, and readers of endpoint health."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from dispatcher.settings import Settings
from tests.conftest import Handler, Receiver, eventually, publish, running

Answer = tuple[int, dict[str, str]]
OPERATOR_TYPES = [
    "dispatcher.webhook.failing",
    "dispatcher.webhook.disabled",
    "dispatcher.webhook.recovered",
]


def answers(*script: Answer | int) -> Handler:
    """Answer each path's requests in turn from `script`; the last answer repeats."""
    steps = [(s, {}) if isinstance(s, int) else s for s in script]

    async def handler(request: web.Request, rec: Receiver) -> web.Response:
        status, headers = steps[min(len(rec.on(request.path)), len(steps)) - 1]
        return web.Response(status=status, headers=headers, text=f"answer {status}")

    return handler


def by_path(default: Handler, **handlers: Handler) -> Handler:
    """Route by the path's first segment: /name -> handlers[name], anything else -> default."""

    async def handler(request: web.Request, rec: Receiver) -> web.StreamResponse:
        name = request.path.strip("/").split("/")[0]
        return await handlers.get(name, default)(request, rec)

    return handler


async def ok(request: web.Request, rec: Receiver) -> web.Response:
    return web.Response(text="ok")


@contextmanager
def refused_port() -> Iterator[socket.socket]:
    """Hold a loopback port that refuses connections: bound, never listening.

    Holding the socket keeps the port from being taken by anyone else until it is closed (the
    breaker test closes it to bring a receiver up on the same port).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock
    finally:
        sock.close()


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


@contextmanager
def black_hole() -> Iterator[int]:
    """Yield a loopback port where a connect hangs until the client's connect timeout.

    A listener with a backlog of 0 whose accept queue already holds one connection that is
    never accepted: Linux drops the SYNs of every further connect, as a firewall that drops
    packets would. Checked on entry, so a kernel that behaves otherwise fails loudly here.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        filler.settimeout(2)
        filler.connect(("127.0.0.1", port))
        probe.settimeout(0.2)
        try:
            probe.connect(("127.0.0.1", port))
        except TimeoutError:
            pass
        else:
            raise AssertionError("the accept queue did not fill: a connect got through")
        finally:
            probe.close()
        yield port
    finally:
        filler.close()
        listener.close()


@asynccontextmanager
async def receiver_on(port: int, handler: Handler = ok) -> AsyncIterator[Receiver]:
    """Serve a recording Receiver on 127.0.0.1:`port` (0 for any free port)."""
    rec = Receiver(handler=handler)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec._handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield rec
    finally:
        await runner.cleanup()


async def publish_many(db: asyncpg.Pool, n: int, event_type: str = "t.x") -> None:
    """Publish `n` events in one statement (one fan-out)."""
    await db.execute(
        "INSERT INTO dispatcher.events (event_type, payload)"
        " SELECT $2, jsonb_build_object('i', i) FROM generate_series(1, $1) i",
        n,
        event_type,
    )


async def attempts_of(db: asyncpg.Pool, webhook_id: int) -> list[asyncpg.Record]:
    """Every attempt at the webhook's deliveries, in order."""
    return list(
        await db.fetch(
            "SELECT a.*, extract(epoch FROM d.run_at - now())::float8 AS due_in_s,"
            " d.status, d.attempts AS delivery_attempts"
            " FROM dispatcher.attempts a JOIN dispatcher.deliveries d ON d.id = a.delivery_id"
            " WHERE d.webhook_id = $1 ORDER BY a.delivery_id, a.attempt",
            webhook_id,
        )
    )


async def attempt_count(db: asyncpg.Pool, webhook_id: int) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM dispatcher.attempts a"
        " JOIN dispatcher.deliveries d ON d.id = a.delivery_id WHERE d.webhook_id = $1",
        webhook_id,
    )
    return count


async def health(db: asyncpg.Pool, webhook_id: int) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT *, breaker_until > now() AS breaker_open"
        " FROM dispatcher.webhook_health WHERE webhook_id = $1",
        webhook_id,
    )
    assert row is not None
    return row


async def webhook(db: asyncpg.Pool, webhook_id: int) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM dispatcher.webhooks WHERE id = $1", webhook_id)
    assert row is not None
    return row


async def statuses(db: asyncpg.Pool, webhook_id: int) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT status, count(*) AS n FROM dispatcher.deliveries WHERE webhook_id = $1"
        " GROUP BY status",
        webhook_id,
    )
    return {r["status"]: r["n"] for r in rows}


async def operator_events(db: asyncpg.Pool, event_type: str | None = None) -> list[Any]:
    """The payloads of the operator events published so far, oldest first."""
    rows = await db.fetch(
        "SELECT event_type, payload::text AS payload FROM dispatcher.events"
        " WHERE event_type LIKE 'dispatcher.%' AND ($1::text IS NULL OR event_type = $1)"
        " ORDER BY created_at, message_id",
        event_type,
    )
    return [{"type": r["event_type"], **orjson.loads(r["payload"])} for r in rows]


def received_events(rec: Receiver, path: str) -> list[Any]:
    """The Standard Webhooks bodies `path` received: {"type", "data", ...}."""
    return [orjson.loads(r.body) for r in rec.on(path)]


async def breaker_opened(db: asyncpg.Pool, webhook_id: int) -> bool:
    return bool((await health(db, webhook_id))["breaker_open"])


async def settle_and_stop(
    db: asyncpg.Pool,
    dsn: str,
    settings: Settings,
    rec: Receiver,
    until: Callable[[], Awaitable[bool]],
    witness_path: str = "/witness",
    within_s: float = 20.0,
) -> None:
    """Run the daemon until `until()` holds, then prove it kept leasing: publish a witness event
    (for the webhook at `witness_path`, type 'witness.x') and stop once it has arrived.

    Whatever was due when the witness was leased was leased with it or before, and the daemon
    finishes every send it started before it stops: so a row not attempted by then was held
    back, with no sleep to prove it.
    """
    async with running(settings, dsn):
        await eventually(until, within_s=within_s)
        before = len(rec.on(witness_path))
        await publish(db, "witness.x")
        await rec.wait_for(before + 1, witness_path, within_s=within_s)
