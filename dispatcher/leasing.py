"""The lease loop: take capacity, lease a batch, start one attempt per leased delivery."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import asyncpg
import structlog

from dispatcher import store
from dispatcher.metrics import Metrics
from dispatcher.outcomes import Backoff, OutcomeWriter, describe
from dispatcher.sender import Sender, Signer, build_body
from dispatcher.settings import Settings
from dispatcher.store import TRANSIENT_DB_ERRORS, LeasedDelivery

log = structlog.get_logger("dispatcher.leasing")

# After a partial batch with due rows still present (locked by another instance for a moment),
# look again this soon rather than after a full poll interval.
_RECHECK_S = 0.02
# How long to let freed slots accumulate before leasing for them.
_GATHER_S = 0.002


class Leaser:
    """Lease due deliveries on demand and send them under a global and a per-webhook cap."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        sender: Sender,
        writer: OutcomeWriter,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._sender = sender
        self._signer = Signer(settings)
        self._writer = writer
        self._cap = settings.max_in_flight
        self._per_webhook_cap = settings.per_endpoint_concurrency
        self._batch = settings.lease_batch_size
        # Lease in chunks of at least this many rows while busy, so a drain of a backlog is a
        # few large leases rather than one tiny lease per finished attempt.
        self._min_lease = max(1, min(self._batch, self._cap) // 4)
        self._lease_s = settings.lease_duration.total_seconds()
        self._poll_s = settings.poll_interval_s
        self._in_flight: dict[int, tuple[asyncio.Task[None], LeasedDelivery]] = {}
        self._per_webhook: Counter[int] = Counter()
        self._wake = asyncio.Event()
        self._capacity_wanted = False
        self._capacity_woke = False
        self.leased_total = 0
        if metrics is not None:
            # Read at scrape time: nothing to update per attempt.
            metrics.in_flight.set_function(lambda: len(self._in_flight))

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def wake(self) -> None:
        """Make the loop look for due work now (a NOTIFY, a retry written, or stop)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event, exit_when_idle: bool = False) -> None:
        """Lease until `stop` is set, or, with exit_when_idle, until nothing is pending."""
        backoff = Backoff()
        while not stop.is_set():
            free = self._cap - len(self._in_flight)
            if free < (self._min_lease if self._in_flight else 1):
                # Only a finished attempt helps now; it sets _wake again (see _attempt). A
                # NOTIFY that lands meanwhile is not lost: the next lease finds its rows.
                self._capacity_wanted = True
                self._wake.clear()
                await self._sleep(self._poll_s)
                continue
            if self._capacity_woke:
                # Slots free up one attempt at a time; gather a few before leasing, so a backlog
                # held back by per-webhook caps is leased in batches, not a row per query.
                self._capacity_woke = False
                await asyncio.sleep(_GATHER_S)
            saturated = any(n >= self._per_webhook_cap for n in self._per_webhook.values())
            asked = min(self._batch, free)
            self._wake.clear()
            try:
                leased = await store.lease_batch(
                    self._pool, asked, self._lease_s, self._per_webhook, self._per_webhook_cap
                )
                if self._metrics is not None:
                    self._metrics.leased(len(leased))
                skipped = self._start(leased)
                if skipped:
                    await store.release_leases(self._pool, skipped)
                if len(leased) == asked and not skipped:
                    backoff.reset()
                    continue  # a full batch: more is probably due
                pause = self._poll_s
                # With webhooks at their cap, the attempt that frees one of their slots wakes
                # the loop (see _attempt); otherwise sleep until the next row falls due.
                if not (saturated or skipped):
                    next_due = await store.seconds_until_next_due(self._pool)
                    if next_due is None and exit_when_idle:
                        return
                    if next_due is not None:
                        pause = min(self._poll_s, max(next_due, _RECHECK_S))
                backoff.reset()
            except TRANSIENT_DB_ERRORS as exc:
                if self._metrics is not None:
                    self._metrics.database_error("lease")
                pause = backoff.next()
                log.warning("database_unavailable", error=describe(exc), retry_in_s=pause)
            await self._sleep(pause)

    async def _sleep(self, seconds: float) -> None:
        """Wait for _wake, at most `seconds`; always yield to the loop at least once.

        Event.wait() on a set event returns without suspending, so without the explicit
        yield a loop that finds _wake set would spin and starve every other task.
        """
        if self._wake.is_set():
            await asyncio.sleep(0)
            return
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _start(self, leased: list[LeasedDelivery]) -> list[LeasedDelivery]:
        """Start an attempt for each leased row whose webhook has a free slot; return the rest."""
        skipped = []
        for delivery in leased:
            if self._per_webhook[delivery.webhook_id] >= self._per_webhook_cap:
                skipped.append(delivery)
                continue
            self._per_webhook[delivery.webhook_id] += 1
            task = asyncio.create_task(self._attempt(delivery), name=f"delivery-{delivery.id}")
            self._in_flight[delivery.id] = (task, delivery)
        self.leased_total += len(leased) - len(skipped)
        return skipped

    async def _attempt(self, d: LeasedDelivery) -> None:
        try:
            body = build_body(d.message_id, d.event_type, d.created_at, d.payload)
            headers = self._signer.headers(
                d.message_id, d.secret, body, int(time.time()), d.previous_secret
            )
            outcome = await self._sender.send(d.url, headers, body)
            row = self._writer.add(d, outcome)
            if not outcome.ok:
                log.info(
                    "attempt_failed",
                    webhook_id=d.webhook_id,
                    message_id=d.message_id,
                    delivery_id=d.id,
                    attempt=d.attempt,
                    error_kind=outcome.error_kind,
                    error=outcome.error_message,
                    next_status=row.status,
                    retry_in_s=row.retry_in_s if row.status == "pending" else None,
                )
        finally:
            del self._in_flight[d.id]
            count = self._per_webhook[d.webhook_id]
            if count > 1:
                self._per_webhook[d.webhook_id] = count - 1
            else:
                del self._per_webhook[d.webhook_id]
            # Wake the loop when it waits for capacity, or when this webhook's backlog was
            # held back by its cap. The loop clears _wake only just before it leases, so a
            # wake-up that lands during a lease query is not lost.
            if self._capacity_wanted or count >= self._per_webhook_cap:
                self._capacity_wanted = False
                self._capacity_woke = True
                self._wake.set()

    async def drain(self, grace_s: float) -> None:
        """Let in-flight attempts finish for up to grace_s, then cancel and release the rest."""
        pending = list(self._in_flight.values())
        if pending:
            log.info("draining", in_flight=len(pending), grace_s=grace_s)
            await asyncio.wait([task for task, _ in pending], timeout=grace_s)
        unfinished = [(task, d) for task, d in pending if not task.done()]
        for task, _ in unfinished:
            task.cancel()
        await asyncio.gather(*(task for task, _ in unfinished), return_exceptions=True)
        abandoned = [d for task, d in unfinished if task.cancelled()]
        if abandoned:
            log.warning("attempts_abandoned", count=len(abandoned))
            try:
                await asyncio.shield(store.release_leases(self._pool, abandoned))
            except TRANSIENT_DB_ERRORS as exc:
                if self._metrics is not None:
                    self._metrics.database_error("release_leases")
                log.error(
                    "lease_release_failed",
                    count=len(abandoned),
                    error=describe(exc),
                    note="these deliveries are sent again when their leases expire",
                )
