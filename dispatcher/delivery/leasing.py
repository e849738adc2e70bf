"""The lease loop: take capacity, lease a batch, hand each delivery to a sender worker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from datetime import UTC, datetime

import asyncpg
import structlog

from dispatcher import store
from dispatcher.delivery.outcomes import Backoff, OutcomeWriter, describe
from dispatcher.delivery.sender import Outcome, Sender, Signer, build_body, failed
from dispatcher.ops.metrics import Metrics
from dispatcher.settings import Settings
from dispatcher.store import TRANSIENT_DB_ERRORS, DedicatedConnection, LeasedDelivery

log = structlog.get_logger("dispatcher.delivery.leasing")

# After a lease that found due rows it could not take (locked by another instance for a moment),
# look again this soon rather than after a full poll interval.
_RECHECK_S = 0.02


class Leaser:
    """Lease due deliveries on demand and send them under a global and a per-webhook cap.

    A fixed set of worker coroutines (one per slot of max_in_flight) takes leased deliveries
    from a deque, so no task is created per delivery. One sweep enforces request_timeout_s for
    every attempt in flight, instead of a timer per request.
    """

    def __init__(
        self,
        settings: Settings,
        conn: DedicatedConnection,
        sender: Sender,
        writer: OutcomeWriter,
        metrics: Metrics | None = None,
    ) -> None:
        self._conn = conn
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
        # Each webhook's cap (its max_concurrency, or per_endpoint_concurrency), as the last
        # lease of its rows returned it. It bounds this process's attempts; the lease bounds the
        # attempts of all instances together.
        self._caps: dict[int, int] = {}
        self._lease_s = settings.lease_duration.total_seconds()
        self._poll_s = settings.poll_interval_s
        self._timeout_s = settings.request_timeout_s
        self._cursor = 0
        # Leased and not finished: waiting in _ready, or being sent by a worker.
        self._in_flight: dict[int, LeasedDelivery] = {}
        self._ready: deque[LeasedDelivery] = deque()
        self._idle: deque[asyncio.Future[LeasedDelivery]] = deque()
        # The deadline of the attempt each worker is sending now; read by the sweep.
        self._sending: dict[asyncio.Task[None], float] = {}
        self._timed_out: set[asyncio.Task[None]] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._per_webhook: Counter[int] = Counter()
        # Per webhook: breaker failures this process saw in a row since writer batch number n,
        # as (count, n). The breaker opens in the database when the outcomes are written; until
        # then, a webhook with a threshold's worth here is not leased for, so a dead endpoint
        # gets about one threshold of attempts before its breaker opens, not every attempt
        # that fits in a flush interval.
        self._tripping: dict[int, tuple[int, int]] = {}
        self._breaker_threshold = settings.breaker_threshold
        self._wake = asyncio.Event()
        # Set whenever nothing is in flight; drain() waits on it.
        self._all_done = asyncio.Event()
        self._all_done.set()
        self._capacity_wanted = False
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
        """Lease until `stop` is set, or, with exit_when_idle, until nothing is pending.

        The workers outlive this: drain() lets them finish. If a worker or the sweep dies
        (a bug), this raises, and the daemon stops instead of running short of senders.
        """
        self._workers = [
            asyncio.create_task(self._work(), name=f"sender-{i}") for i in range(self._cap)
        ]
        sweep = asyncio.create_task(self._sweep(), name="timeout-sweep")
        leasing = asyncio.create_task(self._lease_loop(stop, exit_when_idle), name="lease-loop")
        try:
            done, _ = await asyncio.wait(
                [leasing, sweep, *self._workers], return_when=asyncio.FIRST_COMPLETED
            )
            if leasing not in done:
                [dead, *_] = done
                exc = dead.exception()
                raise RuntimeError(
                    f"{dead.get_name()} died: {describe(exc) if exc else 'returned'}"
                )
            leasing.result()
        finally:
            for task in (leasing, sweep):
                task.cancel()
            await asyncio.gather(leasing, sweep, return_exceptions=True)

    async def _lease_loop(self, stop: asyncio.Event, exit_when_idle: bool) -> None:
        backoff = Backoff()
        while not stop.is_set():
            free = self._cap - len(self._in_flight)
            if free < (self._min_lease if self._in_flight else 1):
                # Only a finished attempt helps now; it sets _wake again (see _finish). A
                # NOTIFY that lands meanwhile is not lost: the next lease finds its rows.
                self._capacity_wanted = True
                self._wake.clear()
                await self._sleep(self._poll_s)
                continue
            asked = min(self._batch, free)
            self._wake.clear()
            try:
                conn = await self._conn.get()
                lease = await store.lease_batch(
                    conn,
                    asked,
                    self._lease_s,
                    self._per_webhook,
                    self._per_webhook_cap,
                    self._cursor,
                    held=self._tripped(),
                    caps=self._caps,
                )
                backoff.reset()
            except TRANSIENT_DB_ERRORS as exc:
                if self._metrics is not None:
                    self._metrics.database_error("lease")
                pause = backoff.next()
                log.warning(
                    "database_unavailable",
                    database=self._conn.target,
                    error=describe(exc),
                    retry_in_s=pause,
                )
                await self._sleep(pause)
                continue
            self._cursor = lease.next_cursor
            self._caps.update(lease.caps)
            if self._metrics is not None:
                self._metrics.leased(len(lease.deliveries))
            self._start(lease.deliveries)
            if lease.deliveries or self._cursor:
                # Rows came back, or webhooks past the cursor are still to be visited: there is
                # probably more. A webhook at its cap is not offered rows, so this does not spin
                # on a backlog held back by caps: the next lease returns nothing.
                continue
            if lease.next_due_s is None:
                if exit_when_idle and not self._in_flight:
                    return
                pause = self._poll_s
            elif lease.next_due_s > 0:
                # At least _RECHECK_S: a rate-limited webhook's next token may be a millisecond
                # away, and a lease per token would be a lease per request.
                pause = min(self._poll_s, max(lease.next_due_s, _RECHECK_S))
            elif self._in_flight:
                # Due rows it could not take: webhooks at their cap, whose next finished
                # attempt wakes the loop, or rows another instance holds for a moment.
                pause = self._poll_s if self._per_webhook_saturated() else _RECHECK_S
            else:
                pause = _RECHECK_S
            await self._sleep(pause)

    def _tripped(self) -> list[int]:
        """Webhooks whose breaker this process expects to open once its outcomes are written."""
        if not self._tripping:
            return []
        written = self._writer.flushes
        for webhook_id, (_, since) in list(self._tripping.items()):
            if since != written:
                del self._tripping[webhook_id]  # written since: the database decides now
        return [w for w, (n, _) in self._tripping.items() if n >= self._breaker_threshold]

    def _note_health(self, webhook_id: int, breaker_failure: bool) -> None:
        if not breaker_failure:
            self._tripping.pop(webhook_id, None)
            return
        written = self._writer.flushes
        n, since = self._tripping.get(webhook_id, (0, written))
        self._tripping[webhook_id] = (n + 1 if since == written else 1, written)

    def _cap_of(self, webhook_id: int) -> int:
        return self._caps.get(webhook_id, self._per_webhook_cap)

    def _per_webhook_saturated(self) -> bool:
        return any(n >= self._cap_of(w) for w, n in self._per_webhook.items())

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

    def _start(self, leased: list[LeasedDelivery]) -> None:
        """Hand each leased delivery to an idle worker, or queue it for the next free one."""
        if leased:
            self._all_done.clear()
        for delivery in leased:
            self._per_webhook[delivery.webhook_id] += 1
            self._in_flight[delivery.id] = delivery
            if self._idle:
                self._idle.popleft().set_result(delivery)
            else:
                self._ready.append(delivery)
        self.leased_total += len(leased)

    async def _work(self) -> None:
        """Send leased deliveries one at a time, forever; the owner cancels it at shutdown."""
        loop = asyncio.get_running_loop()
        while True:
            if self._ready:
                delivery = self._ready.popleft()
            else:
                waiter: asyncio.Future[LeasedDelivery] = loop.create_future()
                self._idle.append(waiter)
                delivery = await waiter
            try:
                await self._attempt(delivery)
            except Exception:
                # A bug, not an HTTP failure (those are Outcomes). Keep the worker; the lease
                # expires and the delivery is attempted again.
                log.exception("attempt_crashed", delivery_id=delivery.id)
                if delivery.id in self._in_flight:
                    self._finish(delivery)

    async def _attempt(self, d: LeasedDelivery) -> None:
        """Sign, send and record one attempt. Cancelled at shutdown, the delivery stays in
        _in_flight, and drain() hands its lease back."""
        body = build_body(d.message_id, d.event_type, d.created_at, d.payload)
        headers = self._signer.headers(
            d.message_id, d.secret, body, int(time.time()), d.previous_secret
        )
        outcome = await self._send(d, headers, body)
        row = self._writer.add(d, outcome)
        self._note_health(d.webhook_id, row.breaker)
        self._finish(d)
        if not outcome.ok:
            # A retry is routine; the end of a delivery, or a refused address, needs a person.
            final = row.status != "pending" or outcome.error_kind == "blocked_address"
            (log.warning if final else log.info)(
                "attempt_failed",
                webhook_id=d.webhook_id,
                message_id=d.message_id,
                delivery_id=d.id,
                attempt=d.attempt,
                error_kind=outcome.error_kind,
                error=outcome.error_message,
                next_status=row.status,
                retry_in_s=row.retry_in_s if row.status == "pending" else None,
                retry_reason=row.retry_reason,
            )

    async def _send(self, d: LeasedDelivery, headers: dict[str, str], body: bytes) -> Outcome:
        """Send under the sweep's deadline; a deadline passed becomes a timeout Outcome."""
        task = asyncio.current_task()
        assert task is not None
        start = time.monotonic()
        # _sending is set and cleared with no await in between and the send, so the sweep only
        # ever cancels a worker that is suspended inside this send.
        self._sending[task] = start + self._timeout_s
        try:
            return await self._sender.send(d.url, headers, body, timed=False, read_ok_body=False)
        except asyncio.CancelledError:
            if task not in self._timed_out or task.uncancel() > 0:
                raise  # shutdown, not (only) the deadline
            elapsed = time.monotonic() - start
            return failed(
                TimeoutError(f"no response within {self._timeout_s:g} s"),
                datetime.fromtimestamp(time.time() - elapsed, UTC),
                int(elapsed * 1000),
            )
        finally:
            del self._sending[task]
            self._timed_out.discard(task)

    async def _sweep(self) -> None:
        """Cancel every attempt past its deadline; runs ten times per request timeout, at most
        once a second, so a timeout fires at most a tenth late."""
        interval = min(1.0, self._timeout_s / 10)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for task, deadline in list(self._sending.items()):
                if deadline <= now and task not in self._timed_out:
                    self._timed_out.add(task)
                    task.cancel()

    def _finish(self, d: LeasedDelivery) -> None:
        del self._in_flight[d.id]
        if not self._in_flight:
            self._all_done.set()
        count = self._per_webhook[d.webhook_id]
        if count > 1:
            self._per_webhook[d.webhook_id] = count - 1
        else:
            del self._per_webhook[d.webhook_id]
        # Wake the loop when it waits for capacity (it checks again whether enough is free), or
        # when this webhook, perhaps held back by its cap, has a quarter of its slots free
        # again: not at every finished attempt. The loop clears _wake only just before it
        # leases, so a wake-up that lands during a lease query is not lost.
        cap = self._cap_of(d.webhook_id)
        if self._capacity_wanted or count == cap - max(1, cap // 4) + 1:
            self._capacity_wanted = False
            self._wake.set()

    async def drain(self, grace_s: float) -> None:
        """Let in-flight attempts finish for up to grace_s, then cancel and release the rest."""
        if self._in_flight:
            log.info("draining", in_flight=len(self._in_flight), grace_s=grace_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._all_done.wait()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        abandoned = list(self._in_flight.values())
        self._in_flight.clear()
        self._ready.clear()
        self._per_webhook.clear()
        if abandoned:
            log.warning("attempts_abandoned", count=len(abandoned))
            try:
                conn = await self._conn.get()
                await asyncio.shield(store.release_leases(conn, abandoned))
            # Any database error (a revoked privilege that killed the lease loop fails this
            # too): the daemon's shutdown goes on, and the leases expire on their own.
            except (*TRANSIENT_DB_ERRORS, asyncpg.PostgresError) as exc:
                if self._metrics is not None:
                    self._metrics.database_error("release_leases")
                log.error(
                    "lease_release_failed",
                    count=len(abandoned),
                    error=describe(exc),
                    note="these deliveries are sent again when their leases expire",
                )
