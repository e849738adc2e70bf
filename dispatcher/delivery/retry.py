"""Pure retry policy: which attempt comes next, when, and why."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from dispatcher.settings import Settings

# Answers that say "too much, slow down": the next attempt waits at least throttle_min_delay_s.
THROTTLE_STATUSES = frozenset((429, 502, 503, 504))
# Answers whose Retry-After header is honoured (RFC 9110 §10.2.3 names 503 and 3xx; RFC 6585
# names 429; redirects are failures here, not instructions).
RETRY_AFTER_STATUSES = frozenset((429, 503))
# Failures that say the endpoint cannot be reached or cannot cope: they count toward its
# circuit breaker. A 4xx or a refused address says nothing about the endpoint's health.
BREAKER_ERROR_KINDS = frozenset(("connect", "dns", "tls", "timeout", "connection_reset"))


def next_retry_delay(attempt: int, schedule: Sequence[timedelta]) -> timedelta | None:
    """Return the wait before the attempt after `attempt` (1-based), or None when it was the last.

    `schedule[i]` is the delay after the (i+1)-th failed attempt, so a schedule of n delays
    allows n + 1 attempts in all.
    """
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    if attempt > len(schedule):
        return None
    return schedule[attempt - 1]


def exponential_delay(
    attempt: int,
    base_s: float,
    max_s: float,
    attempts: int,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float | None:
    """Return a full-jitter exponential wait after `attempt`, or None after the last attempt.

    The wait is drawn from [0, min(max_s, base_s * 2^(attempt-1))], so retries of many
    deliveries that failed together spread out instead of arriving together again.
    """
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    if attempt >= attempts:
        return None
    ceiling = min(max_s, base_s * 2.0 ** min(attempt - 1, 60))
    return uniform(0.0, ceiling)


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens after an attempt: the delivery's next status, when, and why."""

    status: str  # 'succeeded', 'pending' (a retry) or 'failed'
    retry_in_s: float
    reason: str | None  # see attempts.retry_reason in migration 007


SUCCEEDED = Decision("succeeded", 0.0, None)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The retry rules of the daemon's settings; a webhook may choose its own named policy."""

    schedule: tuple[timedelta, ...]
    default_policy: str
    exponential_base_s: float
    exponential_max_s: float
    exponential_attempts: int
    retry_after_min_s: float
    retry_after_max_s: float
    throttle_min_s: float
    gone_disables: bool

    @classmethod
    def from_settings(cls, s: Settings) -> RetryPolicy:
        return cls(
            schedule=s.retry_delays,
            default_policy=s.retry_policy,
            exponential_base_s=s.retry_exponential_base_s,
            exponential_max_s=s.retry_exponential_max_s,
            exponential_attempts=s.retry_exponential_attempts,
            retry_after_min_s=s.retry_after_min_s,
            retry_after_max_s=s.retry_after_max_s,
            throttle_min_s=s.throttle_min_delay_s,
            gone_disables=s.gone_disables_webhook,
        )

    def planned_delay(self, attempt: int, policy: str | None) -> float | None:
        """Return the policy's own wait after `attempt`, or None when no attempt is left."""
        if (policy or self.default_policy) == "exponential":
            return exponential_delay(
                attempt, self.exponential_base_s, self.exponential_max_s, self.exponential_attempts
            )
        delay = next_retry_delay(attempt, self.schedule)
        return None if delay is None else delay.total_seconds()

    def decide(
        self,
        *,
        ok: bool,
        retryable: bool,
        attempt: int,
        response_status: int | None = None,
        error_kind: str | None = None,
        retry_after_s: float | None = None,
        policy: str | None = None,
    ) -> Decision:
        """Decide what follows an attempt.

        A status that asks for patience (429, 502, 503, 504, or a timeout) waits at least the
        throttle minimum, and a Retry-After on a 429 or 503 at least what it says, clamped to
        [retry_after_min_s, retry_after_max_s]. Neither ever shortens the policy's own delay,
        nor adds an attempt the policy does not have.
        """
        if ok:
            return SUCCEEDED
        if response_status == 410 and self.gone_disables:
            return Decision("failed", 0.0, "gone")
        if not retryable:
            return Decision("failed", 0.0, "not_retryable")
        planned = self.planned_delay(attempt, policy)
        if planned is None:
            return Decision("failed", 0.0, "exhausted")
        delay, reason = planned, "schedule"
        patience = response_status in THROTTLE_STATUSES or error_kind == "timeout"
        if patience and self.throttle_min_s > delay:
            delay, reason = self.throttle_min_s, "throttle"
        if retry_after_s is not None and response_status in RETRY_AFTER_STATUSES:
            asked = min(self.retry_after_max_s, max(self.retry_after_min_s, retry_after_s))
            if asked > delay:
                delay, reason = asked, "retry_after"
        return Decision("pending", delay, reason)


def counts_toward_breaker(response_status: int | None, error_kind: str | None) -> bool:
    """Say whether a failed attempt shows the endpoint down or overloaded (not just refusing)."""
    if response_status is not None:
        return response_status >= 500
    return error_kind in BREAKER_ERROR_KINDS
