"""Lifecycle of `dispatcher run`: start, run, stop in order."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from dataclasses import dataclass

import aiohttp
import asyncpg
import structlog

from dispatcher import store
from dispatcher.delivery.leasing import Leaser
from dispatcher.delivery.listener import Listener
from dispatcher.delivery.outcomes import Backoff, OutcomeWriter, describe
from dispatcher.delivery.sender import Sender, create_session
from dispatcher.ops import embedded, migrate, notify, partitions
from dispatcher.ops.metrics import Metrics, refresh_queue_gauges, start_http
from dispatcher.ops.retention import run_retention
from dispatcher.ops.signals import stop_on_signals
from dispatcher.settings import Settings

log = structlog.get_logger("dispatcher.daemon")


@dataclass
class RunStats:
    """What a run did, for tests and the exit log line."""

    leased: int = 0
    rejected_outcomes: int = 0
    failed_task: str | None = None


async def connect_pool(settings: Settings, dsn: str, stop: asyncio.Event) -> asyncpg.Pool | None:
    """Open the pool, retrying with backoff while the database is down; None if stopped first."""
    backoff = Backoff()
    while not stop.is_set():
        try:
            return await store.create_pool(dsn, settings.pool_max_size)
        except store.TRANSIENT_DB_ERRORS as exc:
            delay = backoff.next()
            log.warning(
                "database_unavailable",
                database=store.database_target(dsn),
                error=describe(exc),
                retry_in_s=delay,
            )
            notify.status("waiting for the database")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
    return None


async def serve(
    settings: Settings,
    dsn: str,
    stop: asyncio.Event | None = None,
    exit_when_idle: bool = False,
    handle_signals: bool = True,
) -> RunStats:
    """Deliver until stopped (SIGTERM/SIGINT or `stop`), then drain and shut down in order."""
    stop = stop or asyncio.Event()
    stats = RunStats()
    with (
        stop_on_signals(stop, _stopping, _exiting_now)
        if handle_signals
        else contextlib.nullcontext()
    ):
        pool = await connect_pool(settings, dsn, stop)
        if pool is None:
            return stats
        try:
            async with pool.acquire() as conn:
                if settings.apply_migrations:
                    applied = await migrate.apply_migrations(conn)
                    if applied:
                        log.info("migrations_applied", versions=[m.version for m in applied])
                else:
                    await migrate.check_migrations(conn)
            await store.set_limit(pool, "max_payload_bytes", settings.max_payload_bytes)
            # Before leasing: the first outcome writes find the history partition they go to.
            try:
                await partitions.maintain(pool, settings)
            except store.TRANSIENT_DB_ERRORS as exc:
                log.warning("partition_maintenance_failed", error=describe(exc))
            session = create_session(settings)
            try:
                await _run(settings, dsn, pool, session, stop, exit_when_idle, stats)
            finally:
                await session.close()
        finally:
            await pool.close()
    return stats


async def _run(
    settings: Settings,
    dsn: str,
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    stop: asyncio.Event,
    exit_when_idle: bool,
    stats: RunStats,
) -> None:
    leaser: Leaser | None = None
    cause = ""

    def retry_due() -> None:
        if leaser is not None:
            leaser.wake()

    metrics = Metrics()
    # The two hot loops each hold a connection of their own: no pool acquire and reset per
    # statement, and neither waits behind the other or behind retention.
    lease_conn = store.DedicatedConnection(dsn, "lease")
    outcome_conn = store.DedicatedConnection(dsn, "outcomes")
    writer = OutcomeWriter(settings, outcome_conn, on_retry_due=retry_due, metrics=metrics)
    leaser = Leaser(settings, lease_conn, Sender(settings, session), writer, metrics=metrics)
    listener = Listener(dsn, on_notify=leaser.wake, metrics=metrics)
    # Before any task starts: a metrics address that cannot be bound fails start-up cleanly.
    http = None
    if settings.metrics_listen is not None:
        http = await start_http(
            settings.metrics_listen, metrics, functools.partial(store.ping, pool)
        )
    stop_waiter = asyncio.create_task(stop.wait(), name="stop-waiter")
    leasing = asyncio.create_task(leaser.run(stop, exit_when_idle), name="leaser")
    side = [
        asyncio.create_task(writer.run(), name="outcome-writer"),
        asyncio.create_task(listener.run(), name="listener"),
        asyncio.create_task(run_retention(pool, settings), name="retention"),
    ]
    watchdog_every = notify.watchdog_interval()
    if watchdog_every is not None:
        probe = functools.partial(store.ping, pool)
        side.append(
            asyncio.create_task(
                notify.keep_alive(watchdog_every, probe, store.TRANSIENT_DB_ERRORS),
                name="watchdog",
            )
        )
    if http is not None:
        side.append(asyncio.create_task(refresh_queue_gauges(pool, metrics), name="queue-gauges"))
    log.info(
        "daemon_started",
        max_in_flight=settings.max_in_flight,
        per_endpoint_concurrency=settings.per_endpoint_concurrency,
        pid=os.getpid(),
    )
    # The pool answers, the schema is current and the session is open: leasing starts now.
    notify.ready()
    try:
        done, _ = await asyncio.wait(
            [stop_waiter, leasing, *side], return_when=asyncio.FIRST_COMPLETED
        )
        for task in done:
            if task in side or (task is leasing and task.exception() is not None):
                # A side task never returns on its own: if it did, stop loudly, don't limp.
                stats.failed_task = task.get_name()
                exc = task.exception()
                cause = describe(exc) if exc else "returned"
                log.error("task_died", task=task.get_name(), error=cause)
    finally:
        log.info("stopping", in_flight=leaser.in_flight)
        metrics.draining = True  # /readyz answers 503 from here on
        stop.set()
        leaser.wake()
        stop_waiter.cancel()
        await asyncio.gather(leasing, return_exceptions=True)
        await leaser.drain(settings.shutdown_grace_s)
        for task in side:
            task.cancel()
        await asyncio.gather(*side, return_exceptions=True)
        try:
            await writer.flush()
        # Any database error: one that killed the outcome writer fails this flush too, and
        # must not cut the rest of the shutdown short or hide which task died.
        except (*store.TRANSIENT_DB_ERRORS, asyncpg.PostgresError) as exc:
            metrics.database_error("record_outcomes")
            log.error(
                "outcome_flush_failed",
                count=len(writer),
                error=describe(exc),
                note="these deliveries are sent again when their leases expire",
            )
        await lease_conn.close()
        await outcome_conn.close()
        stats.leased = leaser.leased_total
        stats.rejected_outcomes = writer.rejected
        log.info("stopped", leased=stats.leased)
        # Last, so /readyz says "draining" for the whole drain.
        if http is not None:
            await http.cleanup()
    if stats.failed_task:
        # The cause too, on one line (asyncpg adds DETAIL and HINT lines): stderr's last line
        # is what `systemctl status` shows of a failed unit.
        first = cause.splitlines()[0] if cause else "returned"
        raise SystemExit(f"internal task {stats.failed_task} died ({first}); see the log above")


def _stopping(signal_name: str) -> None:
    log.info("signal_received", signal=signal_name)
    notify.stopping()


def _exiting_now(signal_name: str) -> None:
    log.warning("second_signal_exiting_now", signal=signal_name)
    embedded.detach_all_now()
