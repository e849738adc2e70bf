"""Limits on what goes in and what comes back: the payload cap the database enforces, capped and
bounded reading of responses (huge, endless, gzip bombs, oversized headers, slow trickles), and
one error kind per network failure, each retried."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import resource
import socket
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from dispatcher.daemon import RunStats, serve
from dispatcher.delivery.retry import RetryPolicy
from dispatcher.delivery.sender import Sender, create_session
from dispatcher.settings import Settings
from tests.conftest import (
    Cli,
    Receiver,
    add_webhook,
    deliver_all,
    fast_settings,
    publish,
    refused_port,
)

DEFAULT_CAP = 262144
CAP_MESSAGE = "event payload is {size} bytes, over the limit of {cap} bytes (max_payload_bytes)"
INSERT_EVENT = "INSERT INTO dispatcher.events (event_type, payload) VALUES ('t.x', $1::jsonb)"
NO_RETRIES: tuple[float, ...] = ()


def payload_of_size(size: int) -> str:
    """A JSON object whose jsonb text form is exactly `size` bytes."""
    return '{"blob": "' + "a" * (size - 12) + '"}'


async def counts(db: asyncpg.Pool) -> tuple[int, int]:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM dispatcher.events) AS events,"
        " (SELECT count(*) FROM dispatcher.deliveries) AS deliveries"
    )
    assert row is not None
    return row["events"], row["deliveries"]


async def stored_cap(db: asyncpg.Pool) -> int:
    cap: int = await db.fetchval(
        "SELECT value FROM dispatcher.limits WHERE name = 'max_payload_bytes'"
    )
    return cap


async def attempts(db: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT delivery_id, attempt, duration_ms, response_status, response_body,"
        " response_truncated, error_kind, error_message FROM dispatcher.attempts ORDER BY id"
    )
    return [dict(r) for r in rows]


async def delivery(db: asyncpg.Pool, webhook_id: int) -> dict[str, Any]:
    row = await db.fetchrow(
        "SELECT status, attempts, run_at FROM dispatcher.deliveries WHERE webhook_id = $1",
        webhook_id,
    )
    assert row is not None
    return dict(row)


async def db_clock(db: asyncpg.Pool) -> datetime:
    """The database's clock now: the clock every run_at is set by."""
    moment: datetime = await db.fetchval("SELECT clock_timestamp()")
    return moment


async def assert_retry_due_after(
    db: asyncpg.Pool, webhook_id: int, delay_s: float, run_began: datetime, run_ended: datetime
) -> None:
    """The delivery's one failed attempt scheduled a retry `delay_s` after the outcome was
    written, which happened between `run_began` and `run_ended` (database clock): a window
    measured from inside the run, however slowly it went."""
    retry = await delivery(db, webhook_id)
    assert (retry["status"], retry["attempts"]) == ("pending", 1)
    [(retry_in_s, retry_reason)] = await db.fetch(
        "SELECT a.retry_in_s, a.retry_reason FROM dispatcher.attempts a"
        " JOIN dispatcher.deliveries d ON d.id = a.delivery_id WHERE d.webhook_id = $1",
        webhook_id,
    )
    assert (retry_in_s, retry_reason) == (delay_s, "schedule")
    delay = timedelta(seconds=delay_s)
    assert run_began + delay <= retry["run_at"] <= run_ended + delay


async def serve_until_attempts(
    settings: Settings, dsn: str, db: asyncpg.Pool, count: int, within_s: float = 20.0
) -> RunStats:
    """Run the daemon in this loop until `count` attempts are stored, then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, dsn, stop=stop, handle_signals=False))
    try:
        async with asyncio.timeout(within_s):
            while await db.fetchval("SELECT count(*) FROM dispatcher.attempts") < count:
                assert not task.done(), task.result()
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        async with asyncio.timeout(10):
            stats = await task
    return stats


# --- raw TCP servers for what aiohttp's test server cannot send -------------------------------


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawServer:
    url: str
    accepted: int = 0
    finished: asyncio.Event = field(default_factory=asyncio.Event)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """Read one HTTP request (headers and Content-Length body) so the client is not cut off
    while it is still writing."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


@contextlib.asynccontextmanager
async def raw_server(handle: RawHandler, within_s: float = 15.0) -> AsyncIterator[RawServer]:
    """Serve on 127.0.0.1 until the block ends; every connection is cut after `within_s`."""
    server_state = RawServer(url="")
    writers: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_state.accepted += 1
        writers.append(writer)
        try:
            async with asyncio.timeout(within_s):
                await handle(reader, writer)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            server_state.finished.set()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server_state.url = f"http://127.0.0.1:{port}/"
    try:
        yield server_state
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        async with asyncio.timeout(5):
            await server.wait_closed()


# --- (a) the payload cap, enforced by the database --------------------------------------------


async def test_the_payload_helper_builds_exact_sizes(db: asyncpg.Pool) -> None:
    size = await db.fetchval("SELECT octet_length($1::jsonb::text)", payload_of_size(DEFAULT_CAP))
    assert size == DEFAULT_CAP


async def test_an_oversized_insert_is_rejected_and_nothing_is_stored(db: asyncpg.Pool) -> None:
    await add_webhook(db, "http://127.0.0.1:9/", ["t.x"])
    assert await stored_cap(db) == DEFAULT_CAP

    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await db.execute(INSERT_EVENT, payload_of_size(300 * 1024))

    assert caught.value.message == CAP_MESSAGE.format(size=300 * 1024, cap=DEFAULT_CAP)
    assert caught.value.detail.startswith("message_id ")
    assert caught.value.hint == (
        "Send a smaller payload, or raise max_payload_bytes in the dispatcher config."
    )
    assert await counts(db) == (0, 0)


async def test_publish_function_is_capped_too(db: asyncpg.Pool) -> None:
    await add_webhook(db, "http://127.0.0.1:9/", ["t.x"])

    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await publish(db, "t.x", payload_of_size(300 * 1024))

    assert caught.value.message == CAP_MESSAGE.format(size=300 * 1024, cap=DEFAULT_CAP)

    assert await counts(db) == (0, 0)


async def test_one_oversized_row_fails_a_whole_bulk_insert(db: asyncpg.Pool) -> None:
    await add_webhook(db, "http://127.0.0.1:9/", ["t.x"])

    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await db.execute(
            "INSERT INTO dispatcher.events (event_type, payload)"
            " SELECT 't.x', CASE WHEN i = 500 THEN $1::jsonb ELSE '{}'::jsonb END"
            " FROM generate_series(1, 1000) AS i",
            payload_of_size(300 * 1024),
        )

    assert caught.value.message == CAP_MESSAGE.format(size=300 * 1024, cap=DEFAULT_CAP)
    assert await counts(db) == (0, 0)


async def test_a_payload_at_the_cap_is_accepted_and_one_byte_more_is_not(
    db: asyncpg.Pool,
) -> None:
    await add_webhook(db, "http://127.0.0.1:9/", ["t.x"])

    await db.execute(INSERT_EVENT, payload_of_size(DEFAULT_CAP - 1))
    await db.execute(INSERT_EVENT, payload_of_size(DEFAULT_CAP))
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await db.execute(INSERT_EVENT, payload_of_size(DEFAULT_CAP + 1))

    assert caught.value.message == CAP_MESSAGE.format(size=DEFAULT_CAP + 1, cap=DEFAULT_CAP)
    assert await counts(db) == (2, 2)


async def test_the_daemon_writes_its_configured_cap_to_the_database(
    db: asyncpg.Pool, dsn: str
) -> None:
    await add_webhook(db, "http://127.0.0.1:9/", ["t.x"])

    await deliver_all(fast_settings(max_payload_bytes=2048), dsn)

    assert await stored_cap(db) == 2048
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await db.execute(INSERT_EVENT, payload_of_size(3 * 1024))
    assert caught.value.message == CAP_MESSAGE.format(size=3 * 1024, cap=2048)
    assert await counts(db) == (0, 0)
    await db.execute(INSERT_EVENT, payload_of_size(2048))
    assert await counts(db) == (1, 1)

    # A daemon started with another cap replaces it.
    await db.execute("UPDATE dispatcher.webhooks SET status = 'disabled'")
    await deliver_all(fast_settings(), dsn)
    assert await stored_cap(db) == DEFAULT_CAP


async def test_events_publish_with_oversized_data_fails_without_a_traceback(
    cli: Cli, db: asyncpg.Pool
) -> None:
    await add_webhook(db, "http://127.0.0.1:9/", ["t.x"])

    output = await cli.error("events", "publish", "t.x", "--data", payload_of_size(300 * 1024))

    message = CAP_MESSAGE.format(size=300 * 1024, cap=DEFAULT_CAP)
    assert output.startswith(f"error: rejected by the database: {message}\n")
    assert "Traceback" not in output
    assert await counts(db) == (0, 0)


async def test_events_publish_with_oversized_data_is_a_one_line_error(
    cli: Cli, db: asyncpg.Pool
) -> None:
    await add_webhook(db, "http://127.0.0.1:9/", ["t.x"])

    output = await cli.error("events", "publish", "t.x", "--data", payload_of_size(300 * 1024))

    assert output.count("\n") == 1
    assert output.startswith("error: ")
    assert "max_payload_bytes" in output


# --- (b) response size ------------------------------------------------------------------------


async def test_a_huge_error_body_is_stored_truncated(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    huge = b"x" * (10 * 1024 * 1024)

    async def ten_megabytes(request: web.Request, rec: Receiver) -> web.StreamResponse:
        return web.Response(status=500, body=huge)

    receiver.handler = ten_megabytes
    await add_webhook(db, receiver.url, ["t.x"])
    await publish(db, "t.x")

    await deliver_all(fast_settings(retry_schedule=NO_RETRIES), dsn)

    [attempt] = await attempts(db)
    assert (
        attempt["response_status"],
        attempt["response_body"],
        attempt["response_truncated"],
        attempt["error_kind"],
    ) == (500, "x" * 4096, True, "status")


@pytest.mark.parametrize(
    ("status", "recorded"),
    [
        (500, ("y" * 4096, True, "status")),
        # A 2xx body is not read at all: the attempt ends and the connection is closed.
        (200, (None, False, None)),
    ],
)
async def test_an_endless_body_ends_the_attempt_at_the_read_cap(
    db: asyncpg.Pool,
    dsn: str,
    receiver: Receiver,
    status: int,
    recorded: tuple[str | None, bool, str | None],
) -> None:
    stopped = asyncio.Event()
    written = 0
    ended_by = ""
    max_chunks = 100_000

    async def endless(request: web.Request, rec: Receiver) -> web.StreamResponse:
        nonlocal written, ended_by
        response = web.StreamResponse(status=status)
        response.enable_chunked_encoding()
        await response.prepare(request)
        # The limits only keep a client that reads on and on from hanging the test.
        deadline = time.monotonic() + 50
        try:
            while written < max_chunks and time.monotonic() < deadline:
                await response.write(b"y" * 16384)
                written += 1
            ended_by = "the server's limit"
        except ConnectionError:
            ended_by = "the client"
        except asyncio.CancelledError:  # aiohttp cancels the handler when the client is gone
            ended_by = "the client"
            raise
        finally:
            stopped.set()
        return response

    receiver.handler = endless
    await add_webhook(db, receiver.url, ["t.x"])
    await publish(db, "t.x")

    # A request timeout far beyond the run's own 60 s limit: only the read cap can end it.
    settings = fast_settings(request_timeout_s=300.0, retry_schedule=NO_RETRIES)
    await deliver_all(settings, dsn, within_s=60)

    [attempt] = await attempts(db)
    assert (
        attempt["response_status"],
        attempt["response_body"],
        attempt["response_truncated"],
        attempt["error_kind"],
    ) == (status, *recorded)
    # Reading 4 KiB takes milliseconds; the bound only says the timeout did not end it.
    assert attempt["duration_ms"] < 30_000
    async with asyncio.timeout(10):
        await stopped.wait()
    # The client hung up: the server neither ran out of chunks nor hit its deadline.
    assert ended_by == "the client"
    assert written < max_chunks


# --- (c) gzip -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """About 200 MB of zeros, gzipped to about 200 KB, built without holding the 200 MB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    megabyte = bytes(1024 * 1024)
    parts = [compressor.compress(megabyte) for _ in range(200)]
    parts.append(compressor.flush())
    bomb = b"".join(parts)
    assert len(bomb) < 300 * 1024
    return bomb


def answering(status: int, body: bytes, **headers: str) -> Any:
    async def handler(request: web.Request, rec: Receiver) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return handler


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def test_a_gzip_bomb_is_decompressed_only_up_to_the_cap(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, gzip_bomb: bytes
) -> None:
    receiver.handler = answering(500, gzip_bomb, **{"Content-Encoding": "gzip"})
    await add_webhook(db, receiver.url, ["t.x"])
    await publish(db, "t.x")
    before = peak_rss_kib()

    await deliver_all(fast_settings(retry_schedule=NO_RETRIES), dsn)

    growth_kib = peak_rss_kib() - before
    [attempt] = await attempts(db)
    # Zeros decompressed, stored with NUL replaced (PostgreSQL text cannot hold NUL).
    assert (
        attempt["response_status"],
        attempt["response_body"],
        attempt["response_truncated"],
    ) == (500, "\ufffd" * 4096, True)
    assert growth_kib < 50 * 1024


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress)],
)
async def test_a_small_compressed_error_body_is_stored_decompressed(
    db: asyncpg.Pool,
    dsn: str,
    receiver: Receiver,
    encoding: str,
    compress: Callable[[bytes], bytes],
) -> None:
    receiver.handler = answering(
        500, compress(b'{"error": "nope"}'), **{"Content-Encoding": encoding}
    )
    await add_webhook(db, receiver.url, ["t.x"])
    await publish(db, "t.x")

    await deliver_all(fast_settings(retry_schedule=NO_RETRIES), dsn)

    [attempt] = await attempts(db)
    assert (
        attempt["response_status"],
        attempt["response_body"],
        attempt["response_truncated"],
    ) == (500, '{"error": "nope"}', False)


async def test_a_multi_member_gzip_body_is_stored_whole(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    # RFC 1952: a gzip stream may hold several members, and a reader decodes them all. Both
    # together are far below the read cap, so nothing may be cut or marked truncated.
    body = gzip.compress(b"first,") + gzip.compress(b"second")
    receiver.handler = answering(500, body, **{"Content-Encoding": "gzip"})
    await add_webhook(db, receiver.url, ["t.x"])
    await publish(db, "t.x")

    await deliver_all(fast_settings(retry_schedule=NO_RETRIES), dsn)

    [attempt] = await attempts(db)
    stored = (attempt["response_body"], attempt["response_truncated"])
    assert stored == ("first,second", False)


async def test_a_body_that_claims_gzip_but_is_not_is_stored_raw(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    receiver.handler = answering(500, b"plainly not gzip", **{"Content-Encoding": "gzip"})
    await add_webhook(db, receiver.url, ["t.x"])
    await publish(db, "t.x")

    stats = await deliver_all(fast_settings(retry_schedule=NO_RETRIES), dsn)

    assert stats.failed_task is None
    [attempt] = await attempts(db)
    assert (
        attempt["response_status"],
        attempt["response_body"],
        attempt["response_truncated"],
        attempt["error_kind"],
    ) == (500, "plainly not gzip", False, "status")


# --- (d) oversized response headers ---------------------------------------------------------


async def test_an_oversized_response_header_fails_the_attempt_and_is_retried(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    async def big_header(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        await writer.drain()

    async with raw_server(big_header) as server:
        big_id, _ = await add_webhook(db, server.url, ["t.x"], name="big")
        ok_id, _ = await add_webhook(db, receiver.url, ["t.x"], name="ok")
        await publish(db, "t.x")

        began = await db_clock(db)
        stats = await serve_until_attempts(fast_settings(retry_schedule=(5,)), dsn, db, 2)
        ended = await db_clock(db)

    assert stats.failed_task is None
    assert server.accepted == 1
    [big] = [a for a in await attempts(db) if a["response_status"] != 200]
    assert (big["attempt"], big["response_status"], big["error_kind"]) == (1, None, "bad_response")
    assert "Got more than 8190 bytes" in big["error_message"]
    await assert_retry_due_after(db, big_id, 5.0, began, ended)
    # The daemon kept going: the other webhook got its delivery in the same run.
    assert (await delivery(db, ok_id))["status"] == "succeeded"
    assert len(receiver.requests) == 1


async def test_oversized_headers_are_retried_per_schedule_until_the_last_attempt(
    db: asyncpg.Pool, dsn: str
) -> None:
    async def big_header(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        await writer.drain()

    async with raw_server(big_header) as server:
        webhook_id, _ = await add_webhook(db, server.url, ["t.x"])
        await publish(db, "t.x")
        stats = await deliver_all(fast_settings(retry_schedule=(0, 0)), dsn)

    assert stats.failed_task is None
    assert server.accepted == 3
    assert [(a["attempt"], a["error_kind"]) for a in await attempts(db)] == [
        (1, "bad_response"),
        (2, "bad_response"),
        (3, "bad_response"),
    ]
    assert (await delivery(db, webhook_id))["status"] == "failed"


# --- (e) a slow trickle -----------------------------------------------------------------------


async def test_a_slow_trickle_of_headers_times_out_at_the_request_timeout(
    db: asyncpg.Pool, dsn: str
) -> None:
    sent = 0
    ended_by = ""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Send a header that never ends, a byte every 0.1 s (the sleep is the slowness under
        test, not a wait), until the client hangs up."""
        nonlocal sent, ended_by
        await read_request(reader)
        for byte in itertools.chain(b"HTTP/1.1 200 OK\r\nX-Slow: ", itertools.repeat(ord("a"))):
            if writer.is_closing() or reader.at_eof():
                ended_by = "the client"
                return
            writer.write(bytes([byte]))
            try:
                await writer.drain()
            except ConnectionError:
                ended_by = "the client"
                return
            sent += 1
            await asyncio.sleep(0.1)

    # raw_server cuts a connection after 50 s: far beyond any wait for the 2 s timeout.
    async with raw_server(trickle, within_s=50) as server:
        webhook_id, _ = await add_webhook(db, server.url, ["t.x"])
        await publish(db, "t.x")
        settings = fast_settings(request_timeout_s=2.0, retry_schedule=NO_RETRIES)
        await deliver_all(settings, dsn, within_s=60)
        async with asyncio.timeout(10):
            await server.finished.wait()

    [attempt] = await attempts(db)
    assert (attempt["response_status"], attempt["error_kind"]) == (None, "timeout")
    # Never before the timeout (10 ms for rounding), and nowhere near the 50 s it would take
    # if each byte that arrived restarted the clock.
    assert 2000 - 10 <= attempt["duration_ms"] < 20_000
    assert (await delivery(db, webhook_id))["status"] == "failed"
    # Bytes kept coming (a gap is 20 times shorter than the timeout), and the client hung up
    # on them: the timeout bounds the whole response, not the wait for each byte.
    assert sent >= 2
    assert ended_by == "the client"


# --- (f) network failures: one kind each, each retried ----------------------------------------


async def reset_after_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    sock = writer.get_extra_info("socket")
    # Linger on, timeout 0: close() sends RST instead of FIN.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.asynccontextmanager
async def failing_target(kind: str, receiver: Receiver) -> AsyncIterator[str]:
    if kind == "connection_reset":
        async with raw_server(reset_after_request) as server:
            yield server.url
    elif kind == "tls":
        yield receiver.url.replace("http://", "https://") + "/"
    else:
        with refused_port() as port:
            yield f"http://127.0.0.1:{port}/"


@pytest.mark.parametrize("kind", ["connection_reset", "tls", "connect"])
async def test_each_network_failure_has_its_own_kind_and_is_retried(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, kind: str
) -> None:
    async with failing_target(kind, receiver) as url:
        webhook_id, _ = await add_webhook(db, url, ["t.x"])
        await publish(db, "t.x")
        began = await db_clock(db)
        stats = await serve_until_attempts(fast_settings(retry_schedule=(5,)), dsn, db, 1)
        ended = await db_clock(db)

    assert stats.failed_task is None
    [attempt] = await attempts(db)
    assert (attempt["attempt"], attempt["response_status"], attempt["error_kind"]) == (
        1,
        None,
        kind,
    )
    await assert_retry_due_after(db, webhook_id, 5.0, began, ended)
    # Not even a plaintext request reached the HTTP-only port behind the https:// URL.
    assert receiver.requests == []


class FailingResolver(AbstractResolver):
    """A resolver whose every lookup fails as an unknown name does."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        raise OSError(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        pass


async def test_a_dns_failure_is_its_own_retryable_kind() -> None:
    settings = fast_settings(retry_schedule=(5,))
    resolver = FailingResolver()

    async with create_session(settings, resolver=resolver) as session:
        outcome = await Sender(settings, session).send("http://hooks.invalid/", {}, b"{}")

    assert resolver.asked == ["hooks.invalid"]
    assert (outcome.ok, outcome.retryable, outcome.error_kind, outcome.response_status) == (
        False,
        True,
        "dns",
        None,
    )
    decision = RetryPolicy.from_settings(settings).decide(
        ok=outcome.ok,
        retryable=outcome.retryable,
        attempt=1,
        response_status=outcome.response_status,
        error_kind=outcome.error_kind,
    )
    assert (decision.status, decision.retry_in_s) == ("pending", 5.0)


async def test_an_update_cannot_exceed_the_payload_cap(db: asyncpg.Pool) -> None:
    await db.execute("INSERT INTO dispatcher.events (event_type, payload) VALUES ('t.x', '{}')")
    big = '{"blob": "' + "x" * 300_000 + '"}'
    with pytest.raises(asyncpg.CheckViolationError, match="max_payload_bytes"):
        await db.execute("UPDATE dispatcher.events SET payload = $1::jsonb", big)
    assert await db.fetchval("SELECT payload::text FROM dispatcher.events") == "{}"
