"""Prometheus metrics and the /healthz, /readyz and /metrics endpoints of one daemon."""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Container, Iterator, Sequence
from datetime import datetime

import asyncpg
import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.metrics_core import HistogramMetricFamily, Metric

from dispatcher import store
from dispatcher.delivery.outcomes import describe
from dispatcher.errors import ConfigError
from dispatcher.store import TRANSIENT_DB_ERRORS, OutcomeRow

log = structlog.get_logger("dispatcher.ops.metrics")

# How often the queue gauges are refreshed; read at each refresh, so tests can shorten it.
QUEUE_REFRESH_S = 5.0
# A database round trip this recent, with no error since, makes /readyz answer without a query.
_FRESH_S = 5.0
# Otherwise /readyz asks the database itself, and gives up after this long.
_PROBE_TIMEOUT_S = 1.0

_OUTCOME_OF_STATUS = {"pending": "retry", "succeeded": "succeeded", "failed": "failed"}

_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Retries spread a delivery over minutes to days.
_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400)
_BATCH_BUCKETS = (0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

# (webhook id, event creation time) for each buffered outcome, kept beside the outcome rows.
OutcomeTag = tuple[int, datetime]


class Metrics:
    """Hold one daemon's metrics in a registry of its own, and what /readyz decides from.

    A registry per daemon, not prometheus_client's global one, so that tests can run several
    daemons in one process.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._deliveries = Counter(
            "dispatcher_deliveries",
            "Attempts whose outcome was written: succeeded, retry, failed; or rejected, when the"
            " lease was no longer this process's (it expired, or the webhook was disabled).",
            ("outcome", "webhook_id"),
            registry=r,
        )
        self._delivery_children: dict[tuple[str, int], Counter] = {}
        self.attempt_duration = LoopHistogram(
            "dispatcher_attempt_duration_seconds",
            "Duration of one HTTP attempt, from connect to the end of the response body.",
            _SECONDS_BUCKETS,
            r,
        )
        self.delivery_lag = LoopHistogram(
            "dispatcher_delivery_lag_seconds",
            "From the event's creation to the end of the attempt that delivered it.",
            _LAG_BUCKETS,
            r,
        )
        self.in_flight = Gauge(
            "dispatcher_in_flight", "HTTP attempts in progress in this process.", registry=r
        )
        self.queue_due = Gauge(
            "dispatcher_queue_due",
            "Pending deliveries due now, expired leases included (all instances; refreshed every"
            " few seconds).",
            registry=r,
        )
        self.queue_scheduled = Gauge(
            "dispatcher_queue_scheduled",
            "Pending deliveries waiting for a later retry time (all instances).",
            registry=r,
        )
        self.oldest_due = Gauge(
            "dispatcher_oldest_due_seconds",
            "How long the oldest due delivery has been due; 0 when none is (all instances).",
            registry=r,
        )
        self.lease_batch_size = LoopHistogram(
            "dispatcher_lease_batch_size",
            "Rows leased by one lease statement, empty leases included.",
            _BATCH_BUCKETS,
            r,
        )
        self._database_errors = Counter(
            "dispatcher_database_errors",
            "Database errors the daemon caught and retried, by what it was doing.",
            ("operation",),
            registry=r,
        )
        self._breaker_changes = Counter(
            "dispatcher_breaker_changes",
            "Circuit breaker changes seen by this process: opened, reopened (a probe failed),"
            " closed.",
            ("change",),
            registry=r,
        )
        self._webhooks_disabled = Counter(
            "dispatcher_webhooks_disabled",
            "Webhooks this process disabled, by reason: gone (HTTP 410), failing (auto-disable).",
            ("reason",),
            registry=r,
        )
        self._operator_events = Counter(
            "dispatcher_operator_events",
            "Operator events this process published, by type.",
            ("type",),
            registry=r,
        )
        self._retries = Counter(
            "dispatcher_retries_scheduled",
            "Retries scheduled, by what chose the delay: schedule, retry_after, throttle.",
            ("reason",),
            registry=r,
        )
        self.breakers_open = Gauge(
            "dispatcher_webhooks_breaker_open",
            "Webhooks whose circuit breaker is open now (all instances).",
            registry=r,
        )
        self.webhooks_failing = Gauge(
            "dispatcher_webhooks_failing",
            "Active webhooks whose last attempt failed (all instances).",
            registry=r,
        )
        self.draining = False
        self._database_ok_at = -math.inf
        self._database_failed_at = -math.inf

    def database_ok(self) -> None:
        """Note a successful database round trip (cheap: called once per batch)."""
        self._database_ok_at = time.monotonic()

    def database_error(self, operation: str) -> None:
        """Count a caught database error; /readyz asks the database again after one."""
        self._database_errors.labels(operation).inc()
        self._database_failed_at = time.monotonic()

    def database_recently_ok(self) -> bool:
        """Say whether a round trip succeeded in the last few seconds, with no error since."""
        ok_at = self._database_ok_at
        return ok_at > self._database_failed_at and time.monotonic() - ok_at < _FRESH_S

    def breaker_changed(self, change: str) -> None:
        self._breaker_changes.labels(change).inc()

    def webhook_disabled(self, reason: str) -> None:
        self._webhooks_disabled.labels(reason).inc()

    def operator_event(self, event_type: str) -> None:
        self._operator_events.labels(event_type).inc()

    def leased(self, rows: int) -> None:
        """Record one lease statement that returned `rows` rows."""
        self.lease_batch_size.observe(rows)
        self._database_ok_at = time.monotonic()

    def outcomes_written(
        self,
        rows: Sequence[OutcomeRow],
        tags: Sequence[OutcomeTag],
        rejected: Container[tuple[int, int]] = (),
    ) -> None:
        """Count one written batch of outcomes; `rejected` holds (delivery id, attempt) pairs.

        Counts are summed per batch first, so the labelled counters are touched once per
        (outcome, webhook) in the batch rather than once per attempt.
        """
        counts: collections.Counter[tuple[str, int]] = collections.Counter()
        retries: collections.Counter[str | None] = collections.Counter()
        observe_duration = self.attempt_duration.observe
        observe_lag = self.delivery_lag.observe
        for row, (webhook_id, created_at) in zip(rows, tags, strict=True):
            observe_duration(row.duration_ms / 1000)
            if (row.delivery_id, row.attempt) in rejected:
                outcome = "rejected"
            else:
                outcome = _OUTCOME_OF_STATUS[row.status]
                if outcome == "succeeded":
                    lag = (row.started_at - created_at).total_seconds() + row.duration_ms / 1000
                    observe_lag(max(lag, 0.0))
            counts[outcome, webhook_id] += 1
            if outcome == "retry":
                retries[row.retry_reason] += 1
        for reason, n in retries.items():
            self._retries.labels(reason or "schedule").inc(n)
        children = self._delivery_children
        for key, n in counts.items():
            child = children.get(key)
            if child is None:
                child = children[key] = self._deliveries.labels(key[0], str(key[1]))
            child.inc(n)

    def queue(self, due: int, scheduled: int, oldest_due_s: float | None) -> None:
        self.queue_due.set(due)
        self.queue_scheduled.set(scheduled)
        self.oldest_due.set(oldest_due_s or 0.0)
        self._database_ok_at = time.monotonic()


class LoopHistogram:
    """A histogram observed only from the event loop's thread, exposed at scrape time.

    prometheus_client's Histogram takes a lock and walks its buckets on every observation
    (about 1.1 us); this is a bisect and two additions (about 0.15 us), which matters at one or
    two observations per attempt. The exposition (cumulative buckets, +Inf, _sum, _count) is
    still prometheus_client's HistogramMetricFamily. Scrapes run on the same loop, so a scrape
    never sees a half-counted observation.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = tuple(float(b) for b in buckets)
        self._le = [str(b) for b in self._bounds] + ["+Inf"]  # as prometheus_client writes them
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le = "<=").
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[Metric]:
        cumulative = itertools.accumulate(self._counts)
        yield HistogramMetricFamily(
            self._name,
            self._documentation,
            buckets=list(zip(self._le, cumulative, strict=True)),
            sum_value=self._sum,
        )


async def refresh_queue_gauges(pool: asyncpg.Pool, metrics: Metrics) -> None:
    """Refresh the queue gauges every QUEUE_REFRESH_S until cancelled.

    The counts read every pending row, so a deep backlog makes them slow: the pause after each
    refresh is at least 20 times what it took, which keeps the gauges' share of the database
    under 5 % of a core whatever the backlog.
    """
    while True:
        started = time.monotonic()
        try:
            row = await store.queue_stats(pool)
        except TRANSIENT_DB_ERRORS:
            # The lease loop already logs the outage; here it is only counted.
            metrics.database_error("queue_stats")
        else:
            metrics.queue(row["due_now"], row["scheduled"], row["oldest_due_s"])
        try:
            health = await store.health_stats(pool)
        except TRANSIENT_DB_ERRORS:
            metrics.database_error("health_stats")
        else:
            metrics.breakers_open.set(health["breakers_open"])
            metrics.webhooks_failing.set(health["failing"])
        await asyncio.sleep(max(QUEUE_REFRESH_S, 20 * (time.monotonic() - started)))


async def readiness(metrics: Metrics, probe: Callable[[], Awaitable[None]]) -> str | None:
    """Return why the daemon should get no traffic now, or None when it is ready."""
    if metrics.draining:
        return "draining: the daemon is stopping"
    if metrics.database_recently_ok():
        return None
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT_S):
            await probe()
    except (*TRANSIENT_DB_ERRORS, asyncpg.PostgresError) as exc:
        metrics.database_error("readiness_probe")
        return f"database unreachable: {describe(exc)}"
    metrics.database_ok()
    return None


def create_app(metrics: Metrics, probe: Callable[[], Awaitable[None]]) -> web.Application:
    """Build the app behind metrics_listen; `probe` is one database round trip."""

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        reason = await readiness(metrics, probe)
        if reason is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=reason + "\n")

    async def metrics_text(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_text)
    return app


async def start_http(
    listen: str, metrics: Metrics, probe: Callable[[], Awaitable[None]]
) -> web.AppRunner:
    """Serve the endpoints on HOST:PORT; the caller owns the runner and cleans it up."""
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(create_app(metrics, probe), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot serve metrics on {listen} ({exc.strerror or exc});"
            " set metrics_listen to a free local HOST:PORT"
        ) from None
    log.info("metrics_listening", address=listen)
    return runner
