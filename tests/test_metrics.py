"""Health and metrics: the daemon in-process, a real database and a real receiver, scraped over
HTTP the way Prometheus and a load balancer would."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from dispatcher import store
from dispatcher.daemon import RunStats, serve
from dispatcher.delivery.outcomes import OutcomeWriter
from dispatcher.delivery.sender import Outcome
from dispatcher.errors import ConfigError
from dispatcher.ops import metrics as metrics_module
from dispatcher.ops.metrics import LoopHistogram, Metrics, readiness
from tests.conftest import Receiver, add_webhook, fast_settings, publish, running

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class Scraper:
    """GET the daemon's endpoints."""

    def __init__(self, session: aiohttp.ClientSession, listen: str) -> None:
        self._session = session
        self._base = f"http://{listen}"

    async def get(self, path: str) -> tuple[int, str, str]:
        async with self._session.get(self._base + path) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.text()

    async def samples(self) -> Samples:
        status, _, text = await self.get("/metrics")
        assert status == 200
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def until_up(self, daemon: asyncio.Task[RunStats], within_s: float = 20.0) -> None:
        """Wait until /healthz answers 200; if the daemon stops first, raise what it raised."""
        async with asyncio.timeout(within_s):
            while True:
                if daemon.done():
                    stats = daemon.result()  # re-raises the daemon's exception
                    pytest.fail(f"the daemon returned before /healthz answered: {stats}")
                try:
                    if (await self.get("/healthz"))[0] == 200:
                        return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.02)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def named(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def eventually(
    check: Callable[[], Awaitable[bool]], within_s: float = 20.0, what: str = ""
) -> None:
    try:
        async with asyncio.timeout(within_s):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {within_s} s: {what}") from None


async def test_counts_and_histograms_match_what_was_delivered(
    db: asyncpg.Pool,
    dsn: str,
    receiver: Receiver,
    http: aiohttp.ClientSession,
    server_port: int,
) -> None:
    async def ok_or_500(request: web.Request, rec: Receiver) -> web.Response:
        return web.Response(status=500 if request.path == "/fail" else 200)

    receiver.handler = ok_or_500
    good, _ = await add_webhook(db, receiver.url + "/ok", ["a.x"], name="good")
    bad, _ = await add_webhook(db, receiver.url + "/fail", ["b.x"], name="bad")
    for _ in range(5):
        await publish(db, "a.x")
    for _ in range(3):
        await publish(db, "b.x")
    listen = f"127.0.0.1:{server_port}"
    # Two retries: each failing delivery is 3 attempts, 2 of them ending in a retry.
    settings = fast_settings(metrics_listen=listen, retry_schedule=(0, 0))
    scraper = Scraper(http, listen)

    async with running(settings, dsn) as daemon:
        await scraper.until_up(daemon)

        async def all_finished() -> bool:
            s = await scraper.samples()
            return (
                value(s, "dispatcher_deliveries_total", outcome="succeeded", webhook_id=str(good))
                == 5
                and value(s, "dispatcher_deliveries_total", outcome="failed", webhook_id=str(bad))
                == 3
            )

        await eventually(all_finished, what="5 succeeded and 3 failed counted")
        status, content_type, _ = await scraper.get("/metrics")
        assert status == 200
        assert content_type.startswith("text/plain; version=")
        s = await scraper.samples()
        assert named(s, "dispatcher_deliveries_total") == {
            (("outcome", "succeeded"), ("webhook_id", str(good))): 5,
            (("outcome", "retry"), ("webhook_id", str(bad))): 6,
            (("outcome", "failed"), ("webhook_id", str(bad))): 3,
        }
        assert value(s, "dispatcher_attempt_duration_seconds_count") == 5 + 9
        assert value(s, "dispatcher_attempt_duration_seconds_bucket", le="+Inf") == 5 + 9
        assert value(s, "dispatcher_delivery_lag_seconds_count") == 5
        lag_sum = value(s, "dispatcher_delivery_lag_seconds_sum")
        assert lag_sum is not None and 0 < lag_sum < 5 * 20
        assert value(s, "dispatcher_in_flight") == 0
        lease_count = value(s, "dispatcher_lease_batch_size_count")
        assert lease_count is not None and lease_count > 0
        # Every leased row was attempted: nothing was leased only to be handed back.
        assert value(s, "dispatcher_lease_batch_size_sum") == 5 + 9
        assert named(s, "dispatcher_database_errors_total") == {}
        assert await scraper.get("/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
        assert (await scraper.get("/readyz"))[0] == 200
    assert daemon.result().leased == 5 + 9
    assert len(receiver.requests) == 5 + 9


async def test_readyz_is_503_while_draining_and_queue_gauges_follow_the_table(
    db: asyncpg.Pool,
    dsn: str,
    receiver: Receiver,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    server_port: int,
) -> None:
    monkeypatch.setattr(metrics_module, "QUEUE_REFRESH_S", 0.05)
    release = asyncio.Event()

    async def hold(request: web.Request, rec: Receiver) -> web.Response:
        async with asyncio.timeout(20):
            await release.wait()
        return web.Response(text="ok")

    receiver.handler = hold
    await add_webhook(db, receiver.url, ["t.x"])
    await publish(db, "t.x")
    listen = f"127.0.0.1:{server_port}"
    settings = fast_settings(
        metrics_listen=listen, per_endpoint_concurrency=1, shutdown_grace_s=15.0
    )
    scraper = Scraper(http, listen)
    stop = asyncio.Event()

    async with running(settings, dsn, stop) as daemon:
        await scraper.until_up(daemon)
        await receiver.wait_for(1)
        # The webhook is at its cap: one row due but held back (for a minute, backdated), and
        # one waiting for a retry time an hour away.
        due = await publish(db, "t.x")
        later = await publish(db, "t.x")
        await db.execute(
            "UPDATE dispatcher.deliveries SET run_at = now() - interval '60 seconds'"
            " WHERE message_id = $1",
            due,
        )
        await db.execute(
            "UPDATE dispatcher.deliveries SET run_at = now() + interval '1 hour'"
            " WHERE message_id = $1",
            later,
        )

        async def gauges_seen() -> bool:
            s = await scraper.samples()
            oldest = value(s, "dispatcher_oldest_due_seconds") or 0.0
            return (
                value(s, "dispatcher_queue_due") == 1
                and value(s, "dispatcher_queue_scheduled") == 1
                and 60 <= oldest < 120
            )

        await eventually(gauges_seen, what="due=1, scheduled=1, oldest due >= 60 s")
        s = await scraper.samples()
        assert value(s, "dispatcher_in_flight") == 1
        assert (await scraper.get("/readyz"))[0] == 200

        stop.set()

        async def draining() -> bool:
            return (await scraper.get("/readyz"))[0] == 503

        await eventually(draining, within_s=10, what="/readyz 503 during the drain")
        status, _, body = await scraper.get("/readyz")
        assert (status, body) == (503, "draining: the daemon is stopping\n")
        assert (await scraper.get("/healthz"))[0] == 200
        assert value(await scraper.samples(), "dispatcher_in_flight") == 1
        assert not daemon.done()

        release.set()
        async with asyncio.timeout(15):
            stats = await daemon
    assert stats.leased == 1
    # The listener is cleaned up with the daemon.
    with pytest.raises(aiohttp.ClientConnectionError):
        await scraper.get("/healthz")


class TcpProxy:
    """Forward 127.0.0.1:port to PostgreSQL; close() makes the database unreachable.

    Closed, the port stays bound but not listening (connections are refused) until open()
    listens on it again, so nothing else can take it in between: the listening socket and the
    one that holds the port share it with SO_REUSEPORT, which only this user's sockets that set
    it too can join.
    """

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._server: asyncio.Server | None = None
        self._held: socket.socket | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    async def open(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_port=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self._held is not None:
            self._held.close()
            self._held = None

    async def close(self) -> None:
        assert self._server is not None
        if self._held is None:
            self._held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self._held.bind(("127.0.0.1", self.port))
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        async with asyncio.timeout(5):
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await self._connect()
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            w.transport.abort()
            self._writers.discard(w)

    def release(self) -> None:
        """Let go of the port after the last close()."""
        if self._held is not None:
            self._held.close()
            self._held = None

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()


async def proxy_for(dsn: str) -> tuple[TcpProxy, str]:
    """A proxy to the server behind `dsn`, and a DSN that goes through it."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    host = query.pop("host", None) or parts.hostname or "localhost"
    query.pop("port", None)
    conn = await asyncpg.connect(dsn)
    try:
        server_port = int(await conn.fetchval("SHOW port"))
    finally:
        await conn.close()
    if host.startswith("/"):
        path = str(Path(host) / f".s.PGSQL.{server_port}")

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_unix_connection(path)
    else:
        port = parts.port or server_port

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection(host, port)

    proxy = TcpProxy(connect)
    await proxy.open()
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
    return proxy, urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))


async def test_readyz_is_503_while_the_database_is_unreachable_and_recovers(
    dsn: str, http: aiohttp.ClientSession, server_port: int
) -> None:
    proxy, proxied = await proxy_for(dsn)
    listen = f"127.0.0.1:{server_port}"
    scraper = Scraper(http, listen)
    try:
        async with running(fast_settings(metrics_listen=listen), proxied) as daemon:
            await scraper.until_up(daemon)
            assert (await scraper.get("/readyz"))[0] == 200

            await proxy.close()

            async def unready() -> bool:
                return (await scraper.get("/readyz"))[0] == 503

            await eventually(unready, within_s=10, what="/readyz 503 with the database gone")
            status, _, body = await scraper.get("/readyz")
            assert status == 503
            assert body.startswith("database unreachable: "), body
            assert (await scraper.get("/healthz"))[0] == 200
            errors = named(await scraper.samples(), "dispatcher_database_errors_total")
            assert errors.get((("operation", "readiness_probe"),), 0) >= 1, errors

            await proxy.open()

            async def ready() -> bool:
                return (await scraper.get("/readyz"))[0] == 200

            await eventually(ready, within_s=10, what="/readyz 200 once the database is back")
    finally:
        await proxy.close()
        proxy.release()


async def test_readiness_asks_the_database_only_without_a_recent_round_trip() -> None:
    calls: list[str] = []

    async def answers() -> None:
        calls.append("probe")

    async def refuses() -> None:
        calls.append("probe")
        raise ConnectionRefusedError(111, "Connection refused")

    m = Metrics()
    # Nothing known yet: ask.
    assert await readiness(m, answers) is None
    assert calls == ["probe"]
    # A recent round trip answers without a query.
    m.leased(3)
    assert await readiness(m, refuses) is None
    assert calls == ["probe"]
    # An error since then: ask again, and report what failed.
    m.database_error("lease")
    reason = await readiness(m, refuses)
    assert reason == "database unreachable: ConnectionRefusedError: [Errno 111] Connection refused"
    assert calls == ["probe", "probe"]
    assert (
        m.registry.get_sample_value(
            "dispatcher_database_errors_total", {"operation": "readiness_probe"}
        )
        == 1
    )
    m.draining = True
    assert await readiness(m, answers) == "draining: the daemon is stopping"


async def test_readiness_gives_up_on_a_probe_that_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "_PROBE_TIMEOUT_S", 0.05)

    async def hangs() -> None:
        await asyncio.sleep(30)

    async with asyncio.timeout(5):
        assert await readiness(Metrics(), hangs) == "database unreachable: TimeoutError"


def test_loop_histogram_exposes_what_prometheus_clients_histogram_does() -> None:
    bounds = (0, 0.005, 1, 2.5, 60)
    values = [0, 0.0049, 0.005, 0.0051, 0.5, 1, 1.0000001, 2.5, 59.99, 60, 61, 1e9]
    ours = CollectorRegistry()
    reference = CollectorRegistry()
    loop_histogram = LoopHistogram("h_seconds", "h", bounds, ours)
    histogram = Histogram("h_seconds", "h", buckets=bounds, registry=reference)
    for v in values:
        loop_histogram.observe(v)
        histogram.observe(v)

    def exposed(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name, s.labels, s.value)
            for family in registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert exposed(ours) == exposed(reference)
    assert len(exposed(ours)) == len(bounds) + 3  # the buckets, +Inf, _count and _sum


@pytest.mark.parametrize("stale", [1, 2])
async def test_outcomes_written_after_the_lease_was_lost_count_as_rejected(
    db: asyncpg.Pool, dsn: str, stale: int
) -> None:
    webhook_id, _ = await add_webhook(db, "https://x.example/", ["t.x"])
    await publish(db, "t.x")
    await publish(db, "t.x")
    leased = (await store.lease_batch(db, 2, 60.0)).deliveries
    assert len(leased) == 2
    # The first `stale` leases expired and were taken by another process.
    await db.execute(
        "UPDATE dispatcher.deliveries SET lease_token = gen_random_uuid() WHERE id = ANY($1)",
        [d.id for d in leased[:stale]],
    )
    m = Metrics()
    conn = store.DedicatedConnection(dsn, "outcomes")
    writer = OutcomeWriter(fast_settings(), conn, on_retry_due=lambda: None, metrics=m)
    for d in leased:
        writer.add(
            d,
            Outcome(
                ok=True,
                retryable=False,
                started_at=datetime.now(UTC),
                duration_ms=7,
                response_status=200,
            ),
        )
    async with asyncio.timeout(10):
        await writer.flush()
    await conn.close()

    def sample(name: str, **labels: str) -> float | None:
        return m.registry.get_sample_value(name, labels)

    wid = str(webhook_id)
    assert writer.rejected == stale
    assert sample("dispatcher_deliveries_total", outcome="rejected", webhook_id=wid) == stale
    assert sample("dispatcher_deliveries_total", outcome="succeeded", webhook_id=wid) == (
        None if stale == 2 else 2 - stale
    )
    assert sample("dispatcher_attempt_duration_seconds_count") == 2
    assert sample("dispatcher_attempt_duration_seconds_sum") == pytest.approx(0.014)
    assert sample("dispatcher_delivery_lag_seconds_count") == 2 - stale


async def test_a_metrics_address_in_use_fails_start_up_with_a_message(dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = fast_settings(metrics_listen=f"127.0.0.1:{port}")
        async with asyncio.timeout(20):
            with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
                await serve(settings, dsn, handle_signals=False)
