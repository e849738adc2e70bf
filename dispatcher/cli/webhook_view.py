"""How `dispatcher webhooks ...` prints a webhook: its fields, its health, its listing row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click

from dispatcher.cli.output import cell, fields, plain, shorten, table
from dispatcher.manage.fields import WEBHOOK_FIELDS
from dispatcher.manage.health import breaker_state, health_json, health_of, success_rate
from dispatcher.manage.validation import (
    check_max_concurrency,
    check_rate_limit,
    check_retry_policy,
)


def webhook_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A webhook as every --json output shows it (as the API does): never its secret."""
    return {**plain(row, WEBHOOK_FIELDS), "health": health_json(row)}


def health_text(row: Mapping[str, Any]) -> str:
    return health_of(row).text(cell)


def rate(value: float | None) -> str:
    return "none" if value is None else f"{value:g}/s"


def parse_rate_limit(text: str) -> float | None:
    """--rate-limit: requests per second, or none (no limit)."""
    if text.strip().lower() == "none":
        return None
    return check_rate_limit(text, "--rate-limit")


def parse_max_concurrency(text: str) -> int | None:
    """--max-concurrency: attempts in flight over all instances, or default (the setting)."""
    if text.strip().lower() == "default":
        return None
    return check_max_concurrency(text, "--max-concurrency")


def concurrency(value: int | None) -> str:
    if value is None:
        return "default (the daemon's per_endpoint_concurrency)"
    return f"at most {value} at once"


def parse_retry_policy(text: str) -> str | None:
    """--retry-policy: schedule or exponential, or default (the daemon's retry_policy)."""
    if text.strip().lower() == "default":
        return None
    return check_retry_policy(text.strip().lower(), "--retry-policy", default="default")


def print_webhook(row: Mapping[str, Any], show_secret: bool = False) -> None:
    pairs: list[tuple[str, Any]] = [
        ("id", row["id"]),
        ("name", row["service_name"]),
        ("url", row["url"]),
        ("description", row["description"] or None),
        ("status", row["status"]),
    ]
    if row["status"] == "disabled":
        pairs.append(
            ("disabled", f"{row['disabled_reason'] or 'manual'} at {cell(row['disabled_at'])}")
        )
    pairs += [
        ("events", row["event_types"]),
        ("rate limit", rate(row["rate_limit"])),
        ("concurrency", concurrency(row["max_concurrency"])),
        ("retry policy", row["retry_policy"] or "default (the daemon's retry_policy)"),
    ]
    if show_secret:
        pairs.append(("secret", row["secret"]))
        if row["previous_secret"]:
            pairs.append(("previous secret", row["previous_secret"]))
            pairs.append(("  also signs until", row["previous_secret_expires_at"]))
    pairs += [("created", row["created_at"]), ("updated", row["updated_at"])]
    fields(pairs)


def print_health(row: Mapping[str, Any]) -> None:
    """The health block of `webhooks show`: streak, breaker and rate limit."""
    breaker = breaker_state(row)
    if breaker == "open":
        breaker += f" until {cell(row['breaker_until'])}"
    if breaker != "closed":
        breaker += f" (trip {row['breaker_trips']}, opened at {cell(row['breaker_opened_at'])})"
    if row["rate_limit"] is None:
        limited = "none"
    elif row["throttled_at"] is None:
        limited = f"{rate(row['rate_limit'])}, has not held deliveries back"
    else:
        now = "holding deliveries back" if row["rate_limited"] else "last held deliveries back"
        limited = f"{rate(row['rate_limit'])}, {now} at {cell(row['throttled_at'])}"
    click.echo(f"\nHealth: {health_text(row)}")
    fields(
        [
            ("  consecutive failures", row["consecutive_failures"]),
            ("  first failure", row["first_failure_at"]),
            ("  last failure", row["last_failure_at"]),
            ("  last error", shorten(row["last_error"], 100)),
            ("  breaker", breaker),
            ("  rate limit", limited),
        ]
    )


def list_json(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            **webhook_json(r),
            "event_type_count": r["event_type_count"],
            "deliveries_24h": r["deliveries"],
            "failed_24h": r["failed"],
            "succeeded_24h": r["succeeded"],
            "success_rate_24h": success_rate(r["succeeded"], r["failed"]),
        }
        for r in rows
    ]


def percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def print_list(rows: Sequence[Mapping[str, Any]]) -> None:
    table(
        [
            (
                r["id"],
                shorten(r["service_name"], 30),
                shorten(r["url"], 60),
                r["status"],
                r["event_type_count"],
                r["deliveries"],
                r["failed"],
                percent(success_rate(r["succeeded"], r["failed"])),
                health_text(r),
            )
            for r in rows
        ],
        (
            "id",
            "name",
            "url",
            "status",
            "events",
            "deliveries 24h",
            "failed 24h",
            "success 24h",
            "health",
        ),
    )
