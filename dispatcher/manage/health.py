"""Endpoint health as the CLI, the API and the console show it: one derivation for all three.

A webhook row from `admin` carries its status and disabled_reason, the webhook_health columns,
and two booleans the database computed with its own now() (`breaker_open`, `rate_limited`), so
what a surface shows never depends on the clock of the process that shows it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dispatcher.delivery.health import WEBHOOK_DISABLED, WEBHOOK_FAILING, WEBHOOK_RECOVERED

# Published by the daemon about webhooks (delivery/health.py). A webhook may always subscribe
# to them: they are built in, never rows of the catalog, so an empty catalog stays empty and
# keeps accepting any type.
OPERATOR_EVENT_TYPES: dict[str, str] = {
    WEBHOOK_DISABLED: "The daemon disabled a webhook: it answered 410 Gone, or every attempt"
    " failed for auto_disable_after_s.",
    WEBHOOK_FAILING: "Every attempt to a webhook has failed for failing_after_s.",
    WEBHOOK_RECOVERED: "A webhook that was failing delivered again.",
}

# Health states, in the order they take precedence.
STATES = ("disabled", "breaker_open", "failing", "rate_limited", "ok")


@dataclass(frozen=True)
class Health:
    """What state a webhook is in, and the time or reason that goes with it."""

    state: str
    # disabled: the reason (manual, gone, failing); others: None.
    reason: str | None = None
    # breaker_open: until when; failing: since when.
    at: datetime | None = None

    def text(self, when: Callable[[datetime], str]) -> str:
        """Say it in words, with times formatted by `when`: "failing since T", "disabled: gone"."""
        at = when(self.at) if self.at is not None else "?"
        if self.state == "disabled":
            return "disabled" if self.reason in (None, "manual") else f"disabled: {self.reason}"
        if self.state == "breaker_open":
            return f"breaker open until {at}"
        if self.state == "failing":
            return f"failing since {at}"
        if self.state == "rate_limited":
            return "rate-limited"
        return "ok"


def health_of(row: Mapping[str, Any]) -> Health:
    """Derive a webhook's health from its row, first match wins, in the order of STATES."""
    if row["status"] == "disabled":
        return Health("disabled", reason=row["disabled_reason"] or "manual")
    if row["breaker_open"]:
        return Health("breaker_open", at=row["breaker_until"])
    if row["consecutive_failures"] > 0:
        return Health("failing", at=row["first_failure_at"])
    if row["rate_limited"]:
        return Health("rate_limited")
    return Health("ok")


def breaker_state(row: Mapping[str, Any]) -> str:
    """closed (no cool-off), open (in a cool-off) or half-open (a probe may go or is out)."""
    if row["breaker_until"] is None:
        return "closed"
    return "open" if row["breaker_open"] else "half-open"


def health_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The `health` object of a webhook in the CLI's --json and the API."""
    return {
        "state": health_of(row).state,
        "consecutive_failures": row["consecutive_failures"],
        "first_failure_at": row["first_failure_at"],
        "last_failure_at": row["last_failure_at"],
        "last_error": row["last_error"],
        "breaker": {
            "state": breaker_state(row),
            "until": row["breaker_until"],
            "opened_at": row["breaker_opened_at"],
            "trips": row["breaker_trips"],
        },
        "rate_limited_at": row["throttled_at"],
    }


def success_rate(succeeded: int, failed: int) -> float | None:
    """The share of finished deliveries that succeeded, or None when none finished."""
    finished = succeeded + failed
    return succeeded / finished if finished else None


# What attempts.retry_reason means, in a few words.
_RETRY_REASONS = {
    "schedule": "policy",
    "retry_after": "Retry-After",
    "throttle": "throttle minimum",
}
_FINAL_REASONS = {
    "exhausted": "no attempts left",
    "not_retryable": "not retryable",
    "gone": "410 Gone, webhook disabled",
}


def retry_text(retry_in_s: float | None, retry_reason: str | None) -> str:
    """Say what an attempt's outcome decided: "retry in 120 s (Retry-After)", "final (...)"."""
    if retry_reason in _RETRY_REASONS and retry_in_s is not None:
        wait = f"{retry_in_s:.1f}".removesuffix(".0") if retry_in_s < 10 else f"{retry_in_s:,.0f}"
        return f"retry in {wait} s ({_RETRY_REASONS[retry_reason]})"
    if retry_reason in _FINAL_REASONS:
        return f"final ({_FINAL_REASONS[retry_reason]})"
    return ""
