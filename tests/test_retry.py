"""Unit tests for the pure retry policy, as tables of inputs and literal expected outputs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dispatcher.delivery.retry import (
    RetryPolicy,
    counts_toward_breaker,
    exponential_delay,
    next_retry_delay,
)
from dispatcher.delivery.sender import parse_retry_after

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


def policy(schedule: tuple[timedelta, ...] = SEED, **overrides: object) -> RetryPolicy:
    """The retry rules with the defaults, apart from `overrides`."""
    rules: dict[str, object] = {
        "schedule": schedule,
        "default_policy": "schedule",
        "exponential_base_s": 5.0,
        "exponential_max_s": 21600.0,
        "exponential_attempts": 15,
        "retry_after_min_s": 1.0,
        "retry_after_max_s": 3600.0,
        "throttle_min_s": 10.0,
        "gone_disables": True,
    }
    rules.update(overrides)
    return RetryPolicy(**rules)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ok", "retryable", "attempt", "schedule", "expected"),
    [
        # Success ends the delivery whatever the attempt or schedule.
        (True, False, 1, SEED, ("succeeded", 0.0, None)),
        (True, True, 1, SEED, ("succeeded", 0.0, None)),
        (True, False, 7, SEED, ("succeeded", 0.0, None)),
        (True, False, 1, (), ("succeeded", 0.0, None)),
        # Retryable failures wait the scheduled delay while the schedule lasts.
        (False, True, 1, SEED, ("pending", 0.0, "schedule")),
        (False, True, 3, SEED, ("pending", 0.0, "schedule")),
        (False, True, 4, SEED, ("pending", 30.0, "schedule")),
        (False, True, 6, SEED, ("pending", 30.0, "schedule")),
        (False, True, 1, SHORT, ("pending", 1.5, "schedule")),
        (False, True, 2, SHORT, ("pending", 300.0, "schedule")),
        # Past the end of the schedule, a retryable failure is final.
        (False, True, 7, SEED, ("failed", 0.0, "exhausted")),
        (False, True, 3, SHORT, ("failed", 0.0, "exhausted")),
        (False, True, 1, (), ("failed", 0.0, "exhausted")),
        # A failure that cannot be helped by retrying is final at once.
        (False, False, 1, SEED, ("failed", 0.0, "not_retryable")),
        (False, False, 6, SEED, ("failed", 0.0, "not_retryable")),
    ],
)
def test_decide(
    ok: bool,
    retryable: bool,
    attempt: int,
    schedule: tuple[timedelta, ...],
    expected: tuple[str, float, str | None],
) -> None:
    decision = policy(schedule).decide(ok=ok, retryable=retryable, attempt=attempt)
    assert (decision.status, decision.retry_in_s, decision.reason) == expected


# (attempt, HTTP status, error kind, Retry-After seconds) -> (status, delay, reason), with the
# defaults: Retry-After clamped to [1 s, 1 h], a 10 s minimum for 429/502/503/504 and timeouts.
@pytest.mark.parametrize(
    ("attempt", "status", "kind", "retry_after", "expected"),
    [
        # Retry-After on a 429 or 503 is honoured, in either form (the sender turns both into
        # seconds).
        (1, 429, "status", 120.0, ("pending", 120.0, "retry_after")),
        (1, 503, "status", 90.0, ("pending", 90.0, "retry_after")),
        # Clamped to the configured range.
        (1, 429, "status", 999_999.0, ("pending", 3600.0, "retry_after")),
        # Below the throttle minimum, the minimum wins.
        (1, 429, "status", 0.0, ("pending", 10.0, "throttle")),
        (1, 503, "status", 4.0, ("pending", 10.0, "throttle")),
        # Never earlier than the schedule.
        (4, 429, "status", 12.0, ("pending", 30.0, "schedule")),
        # Ignored on other statuses (a 500 with Retry-After follows the schedule).
        (1, 500, "status", 120.0, ("pending", 0.0, "schedule")),
        (4, 502, "status", 120.0, ("pending", 30.0, "schedule")),
        # The throttle minimum: 429, 502, 503, 504 and timeouts, not other failures.
        (1, 429, "status", None, ("pending", 10.0, "throttle")),
        (1, 502, "status", None, ("pending", 10.0, "throttle")),
        (1, 503, "status", None, ("pending", 10.0, "throttle")),
        (1, 504, "status", None, ("pending", 10.0, "throttle")),
        (1, None, "timeout", None, ("pending", 10.0, "throttle")),
        (1, 500, "status", None, ("pending", 0.0, "schedule")),
        (1, None, "connect", None, ("pending", 0.0, "schedule")),
        # Neither adds an attempt the schedule does not have.
        (7, 429, "status", 120.0, ("failed", 0.0, "exhausted")),
        (7, None, "timeout", None, ("failed", 0.0, "exhausted")),
        # 410 Gone: final at once, whatever the attempt.
        (1, 410, "status", None, ("failed", 0.0, "gone")),
        (3, 410, "status", 60.0, ("failed", 0.0, "gone")),
    ],
)
def test_decide_by_status(
    attempt: int,
    status: int | None,
    kind: str,
    retry_after: float | None,
    expected: tuple[str, float, str],
) -> None:
    decision = policy().decide(
        ok=False,
        retryable=True,
        attempt=attempt,
        response_status=status,
        error_kind=kind,
        retry_after_s=retry_after,
    )
    assert (decision.status, decision.retry_in_s, decision.reason) == expected


def test_a_410_follows_the_schedule_when_gone_does_not_disable() -> None:
    decision = policy(gone_disables=False).decide(
        ok=False, retryable=True, attempt=4, response_status=410, error_kind="status"
    )
    assert (decision.status, decision.retry_in_s, decision.reason) == ("pending", 30.0, "schedule")


def test_a_smaller_retry_after_range_clamps_both_ways() -> None:
    rules = policy(retry_after_min_s=20.0, retry_after_max_s=300.0, throttle_min_s=0.0)
    asked = [
        rules.decide(
            ok=False, retryable=True, attempt=1, response_status=429, retry_after_s=s
        ).retry_in_s
        for s in (0.0, 5.0, 20.0, 150.0, 300.0, 301.0, 86400.0)
    ]
    assert asked == [20.0, 20.0, 20.0, 150.0, 300.0, 300.0, 300.0]


# Full jitter: a uniform draw from [0, min(max, base * 2^(attempt-1))]. The draw is replaced by
# one that returns the top of its range, so the table shows each ceiling.
@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 5.0), (2, 10.0), (3, 20.0), (8, 640.0), (12, 10240.0), (13, 20480.0), (14, 21600.0)],
)
def test_exponential_ceilings(attempt: int, ceiling: float) -> None:
    assert exponential_delay(attempt, 5.0, 21600.0, 15, uniform=lambda lo, hi: hi) == ceiling
    assert exponential_delay(attempt, 5.0, 21600.0, 15, uniform=lambda lo, hi: lo) == 0.0


@pytest.mark.parametrize(("attempt", "expected"), [(14, 21600.0), (15, None), (16, None)])
def test_exponential_allows_its_number_of_attempts(attempt: int, expected: float | None) -> None:
    assert exponential_delay(attempt, 5.0, 21600.0, 15, uniform=lambda lo, hi: hi) == expected


def test_a_webhook_may_choose_the_exponential_policy() -> None:
    rules = policy(exponential_base_s=100.0, exponential_attempts=3)
    draws = {
        rules.decide(ok=False, retryable=True, attempt=1, policy="exponential").retry_in_s
        for _ in range(200)
    }
    # Jittered: spread over [0, 100], not the schedule's 0.
    assert all(0.0 <= d <= 100.0 for d in draws)
    assert len(draws) > 100
    assert max(draws) > 50.0
    assert rules.decide(ok=False, retryable=True, attempt=3, policy="exponential").reason == (
        "exhausted"
    )
    # The default policy is still the schedule.
    assert rules.decide(ok=False, retryable=True, attempt=1).retry_in_s == 0.0
    assert policy(default_policy="exponential").planned_delay(16, None) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        # An HTTP-date 90 s after the fixed "now" below; a past date is "now".
        ("Mon, 30 Nov 2026 12:01:30 GMT", 90.0),
        ("Monday, 30-Nov-26 12:01:30 GMT", 90.0),
        ("Mon, 30 Nov 2026 11:00:00 GMT", 0.0),
        # Not a delay: ignored, never an error.
        (None, None),
        ("", None),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("Mon, 99 Foo 2026 25:61:61 GMT", None),
        # Absurd values are returned as asked; the policy clamps them.
        ("99999999999999999999", 1e9),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    now = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after(header, now=now) == expected


@pytest.mark.parametrize(
    ("status", "kind", "expected"),
    [
        (500, "status", True),
        (503, "status", True),
        (599, "status", True),
        (429, "status", False),
        (404, "status", False),
        (410, "status", False),
        (None, "connect", True),
        (None, "dns", True),
        (None, "tls", True),
        (None, "timeout", True),
        (None, "connection_reset", True),
        (None, "blocked_address", False),
        (None, "invalid_url", False),
        (None, "internal", False),
    ],
)
def test_what_counts_toward_the_breaker(status: int | None, kind: str, expected: bool) -> None:
    assert counts_toward_breaker(status, kind) is expected
