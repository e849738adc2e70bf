"""Unit tests for the pure retry policy, as tables of inputs and literal expected outputs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dispatcher.delivery.retry import decide, next_retry_delay

# The schedule new installations get: three immediate retries, then three after 30 s.
SEED = tuple(timedelta(seconds=s) for s in (0, 0, 0, 30, 30, 30))
SHORT = (timedelta(seconds=1.5), timedelta(minutes=5))


@pytest.mark.parametrize(
    ("attempt", "schedule", "expected"),
    [
        (1, SEED, timedelta(0)),
        (2, SEED, timedelta(0)),
        (3, SEED, timedelta(0)),
        (4, SEED, timedelta(seconds=30)),
        (5, SEED, timedelta(seconds=30)),
        (6, SEED, timedelta(seconds=30)),
        (7, SEED, None),
        (8, SEED, None),
        (100, SEED, None),
        (1, SHORT, timedelta(seconds=1.5)),
        (2, SHORT, timedelta(seconds=300)),
        (3, SHORT, None),
        (1, (), None),
        (1, [timedelta(hours=1)], timedelta(seconds=3600)),
        (2, [timedelta(hours=1)], None),
    ],
)
def test_next_retry_delay(
    attempt: int, schedule: tuple[timedelta, ...], expected: timedelta | None
) -> None:
    assert next_retry_delay(attempt, schedule) == expected


def test_seed_schedule_allows_seven_attempts() -> None:
    delays = [next_retry_delay(attempt, SEED) for attempt in range(1, 8)]

    # Six failures are each followed by a retry; the seventh attempt is the last.
    assert delays == [
        timedelta(0),
        timedelta(0),
        timedelta(0),
        timedelta(seconds=30),
        timedelta(seconds=30),
        timedelta(seconds=30),
        None,
    ]


@pytest.mark.parametrize("attempt", [0, -1])
def test_next_retry_delay_rejects_attempt_below_one(attempt: int) -> None:
    with pytest.raises(ValueError, match=f"attempt numbers start at 1, got {attempt}"):
        next_retry_delay(attempt, SEED)


@pytest.mark.parametrize(
    ("ok", "retryable", "attempt", "schedule", "expected"),
    [
        # Success ends the delivery whatever the attempt or schedule.
        (True, False, 1, SEED, ("succeeded", 0.0)),
        (True, True, 1, SEED, ("succeeded", 0.0)),
        (True, False, 7, SEED, ("succeeded", 0.0)),
        (True, False, 1, (), ("succeeded", 0.0)),
        # Retryable failures wait the scheduled delay while the schedule lasts.
        (False, True, 1, SEED, ("pending", 0.0)),
        (False, True, 3, SEED, ("pending", 0.0)),
        (False, True, 4, SEED, ("pending", 30.0)),
        (False, True, 6, SEED, ("pending", 30.0)),
        (False, True, 1, SHORT, ("pending", 1.5)),
        (False, True, 2, SHORT, ("pending", 300.0)),
        # Past the end of the schedule, a retryable failure is final.
        (False, True, 7, SEED, ("failed", 0.0)),
        (False, True, 3, SHORT, ("failed", 0.0)),
        (False, True, 1, (), ("failed", 0.0)),
        # A failure that cannot be helped by retrying is final at once.
        (False, False, 1, SEED, ("failed", 0.0)),
        (False, False, 6, SEED, ("failed", 0.0)),
    ],
)
def test_decide(
    ok: bool,
    retryable: bool,
    attempt: int,
    schedule: tuple[timedelta, ...],
    expected: tuple[str, float],
) -> None:
    assert decide(ok, retryable, attempt, schedule) == expected


def test_decide_returns_float_seconds() -> None:
    status, seconds = decide(False, True, 4, SEED)

    assert status == "pending"
    assert type(seconds) is float


def test_decide_rejects_attempt_zero_for_retryable_failure() -> None:
    with pytest.raises(ValueError, match="attempt numbers start at 1, got 0"):
        decide(False, True, 0, SEED)
