"""Buffer attempt outcomes and write them in batches, one statement per batch."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import structlog

from dispatcher import store
from dispatcher.delivery.health import HealthKeeper
from dispatcher.delivery.retry import Decision, RetryPolicy, counts_toward_breaker
from dispatcher.delivery.sender import Outcome
from dispatcher.settings import Settings
from dispatcher.store import (
    TRANSIENT_DB_ERRORS,
    DedicatedConnection,
    HealthRules,
    LeasedDelivery,
    OutcomeRow,
)

if TYPE_CHECKING:
    from dispatcher.ops.metrics import Metrics, OutcomeTag

log = structlog.get_logger("dispatcher.delivery.outcomes")


class OutcomeWriter:
    """Collect outcomes and flush them every flush interval, or sooner when the batch is full."""

    def __init__(
        self,
        settings: Settings,
        conn: DedicatedConnection,
        on_retry_due: Callable[[], None],
        metrics: Metrics | None = None,
    ) -> None:
        self._conn = conn
        self._metrics = metrics
        self._policy = RetryPolicy.from_settings(settings)
        self._rules = HealthRules.from_settings(settings)
        self._health = HealthKeeper(self._rules, settings.gone_disables_webhook, metrics)
        self._interval = settings.flush_interval_s
        self._max = settings.flush_max_outcomes
        self._on_retry_due = on_retry_due
        self._buffer: list[OutcomeRow] = []
        # What the metrics need beyond the row, kept in step with _buffer (empty without metrics).
        self._tags: list[OutcomeTag] = []
        self._arrived = asyncio.Event()
        self._lock = asyncio.Lock()
        self.rejected = 0
        # Batches written so far: what the database knows of each webhook's health is current
        # up to the last one.
        self.flushes = 0

    def __len__(self) -> int:
        return len(self._buffer)

    def add(self, delivery: LeasedDelivery, outcome: Outcome) -> OutcomeRow:
        decision = self._policy.decide(
            ok=outcome.ok,
            retryable=outcome.retryable,
            attempt=delivery.attempt,
            response_status=outcome.response_status,
            error_kind=outcome.error_kind,
            retry_after_s=outcome.retry_after_s,
            policy=delivery.retry_policy,
        )
        row = outcome_row(
            delivery.id,
            delivery.lease_token,
            delivery.attempt,
            outcome,
            decision,
            delivery.webhook_id,
            delivery.lease_until,
        )
        self._buffer.append(row)
        if self._metrics is not None:
            self._tags.append((delivery.webhook_id, delivery.created_at))
        self._arrived.set()
        return row

    async def run(self) -> None:
        """Flush forever; the owner cancels this task and then calls flush() once more."""
        backoff = Backoff()
        while True:
            await self._arrived.wait()
            if len(self._buffer) < self._max:
                await asyncio.sleep(self._interval)  # let a batch gather
            try:
                # Shielded: if this task is cancelled at shutdown mid-write, the write still
                # completes and leaves the buffer, and the final flush() waits on the lock
                # instead of writing the same batch a second time.
                await asyncio.shield(self.flush())
            except TRANSIENT_DB_ERRORS as exc:
                if self._metrics is not None:
                    self._metrics.database_error("record_outcomes")
                delay = backoff.next()
                log.warning(
                    "outcome_write_failed",
                    error=describe(exc),
                    buffered=len(self._buffer),
                    retry_in_s=round(delay, 2),
                )
                await asyncio.sleep(delay)
            else:
                backoff.reset()

    async def flush(self) -> None:
        """Write everything buffered now; on a database error the batch stays buffered."""
        async with self._lock:
            while self._buffer:
                batch = self._buffer[: self._max]
                conn = await self._conn.get()
                written, attention = await store.write_outcomes(conn, batch, self._rules)
                del self._buffer[: len(batch)]
                tags = self._tags[: len(batch)]
                del self._tags[: len(batch)]
                rejected = {
                    (r.delivery_id, r.attempt) for r in batch if r.delivery_id not in written
                }
                if rejected:
                    self.rejected += len(rejected)
                    log.warning("stale_outcomes_rejected", count=len(rejected))
                self.flushes += 1
                if any(r.status == "pending" for r in batch):
                    self._on_retry_due()
                if self._metrics is not None:
                    self._metrics.database_ok()
                    self._metrics.outcomes_written(batch, tags, rejected=rejected)
                gone = [
                    r.webhook_id
                    for r in batch
                    if r.retry_reason == "gone" and r.delivery_id in written
                ]
                if gone or attention:
                    await self._health.act(conn, gone, attention)
            self._arrived.clear()


def outcome_row(
    delivery_id: int,
    lease_token: uuid.UUID,
    attempt: int,
    outcome: Outcome,
    decision: Decision,
    webhook_id: int,
    lease_until: datetime | None = None,
) -> OutcomeRow:
    """Describe an attempt's outcome as the row record_outcomes writes."""
    return OutcomeRow(
        delivery_id=delivery_id,
        lease_token=lease_token,
        status=decision.status,
        retry_in_s=decision.retry_in_s,
        attempt=attempt,
        started_at=outcome.started_at,
        duration_ms=outcome.duration_ms,
        response_status=outcome.response_status,
        response_body=outcome.response_body,
        response_truncated=outcome.response_truncated,
        error_kind=outcome.error_kind,
        error_message=outcome.error_message,
        webhook_id=webhook_id,
        retry_reason=decision.reason,
        breaker=not outcome.ok
        and counts_toward_breaker(outcome.response_status, outcome.error_kind),
        lease_until=lease_until,
    )


class Backoff:
    """Exponential backoff for reconnecting: 0.25 s doubling up to 10 s."""

    def __init__(self, first: float = 0.25, cap: float = 10.0) -> None:
        self._first = first
        self._cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self._cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self._first


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
