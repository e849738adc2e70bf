"""How one batch of outcomes sums up per webhook for record_outcomes' health update: a pure
function, so a table of batches and the literal summaries they give."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from dispatcher.store import OutcomeRow, _health_columns

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def row(n: int, webhook_id: int, kind: str) -> OutcomeRow:
    """Attempt n (started n seconds after T0): 'ok', '503' (a breaker failure) or '404'."""
    ok = kind == "ok"
    return OutcomeRow(
        delivery_id=n,
        lease_token=uuid.uuid4(),
        status="succeeded" if ok else "pending",
        retry_in_s=0.0,
        attempt=1,
        started_at=T0 + timedelta(seconds=n),
        duration_ms=1,
        response_status=200 if ok else int(kind),
        response_body=None,
        response_truncated=False,
        error_kind=None if ok else "status",
        error_message=None if ok else f"HTTP {kind}",
        webhook_id=webhook_id,
        retry_reason=None if ok else "schedule",
        breaker=kind == "503",
    )


def at(n: int) -> datetime:
    return T0 + timedelta(seconds=n)


# Per webhook: (any success, any non-breaker outcome, failures after the last success, the first
# and last failure, the last error, breaker failures after the last non-breaker outcome).
@pytest.mark.parametrize(
    ("kinds", "expected"),
    [
        (["ok", "ok"], (True, True, 0, None, None, None, 0)),
        (["503", "503"], (False, False, 2, at(1), at(2), "HTTP 503", 2)),
        # A success ends the failure streak; failures after it start a new one.
        (["503", "ok", "503", "503"], (True, True, 2, at(3), at(4), "HTTP 503", 2)),
        (["503", "503", "ok"], (True, True, 0, None, at(2), "HTTP 503", 0)),
        # A 404 is a failure but not a breaker failure: it ends the breaker's count only.
        (["503", "404", "503"], (False, True, 3, at(1), at(3), "HTTP 503", 1)),
        (["503", "503", "404"], (False, True, 3, at(1), at(3), "HTTP 404", 0)),
    ],
)
def test_one_webhooks_batch(kinds: list[str], expected: tuple[object, ...]) -> None:
    columns = _health_columns([row(n, 7, k) for n, k in enumerate(kinds, start=1)])
    assert columns[0] == [7]
    assert tuple(c[0] for c in columns[1:]) == expected


def test_webhooks_are_summed_apart_in_id_order() -> None:
    """Id order, whatever order they finished in: every writer locks health rows that way."""
    batch = [row(1, 9, "503"), row(2, 4, "ok"), row(3, 9, "503"), row(4, 4, "404")]
    assert _health_columns(batch) == [
        [4, 9],
        [True, False],
        [True, False],
        [1, 2],
        [at(4), at(1)],
        [at(4), at(3)],
        ["HTTP 404", "HTTP 503"],
        [0, 2],
    ]
