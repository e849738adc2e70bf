"""Pure retry policy: which attempt comes next, and when."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta


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


def decide(
    ok: bool, retryable: bool, attempt: int, schedule: Sequence[timedelta]
) -> tuple[str, float]:
    """Return the delivery's next status and, for 'pending', the seconds until the retry."""
    if ok:
        return "succeeded", 0.0
    if retryable:
        delay = next_retry_delay(attempt, schedule)
        if delay is not None:
            return "pending", delay.total_seconds()
    return "failed", 0.0
