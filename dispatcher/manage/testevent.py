"""`webhooks test`: send one test event now, synchronously, and record it in the delivery log."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from dispatcher import store
from dispatcher.delivery.outcomes import outcome_row
from dispatcher.delivery.retry import SUCCEEDED, Decision
from dispatcher.delivery.sender import Outcome, Sender, Signer, build_body, create_session
from dispatcher.manage import admin
from dispatcher.manage.validation import check_event_type, parse_json
from dispatcher.settings import Settings
from dispatcher.store import HealthRules

GENERIC_TEST_PAYLOAD = '{"test": true, "message": "This is a test event from webhook-dispatcher."}'
SECRET_SHOWN_AS = "whsec_… (the webhook's secret; `webhooks show` prints it)"


@dataclass(frozen=True)
class TestResult:
    delivery_id: int
    message_id: str
    event_type: str
    url: str
    request_headers: list[tuple[str, str]]
    request_body: str
    outcome: Outcome

    def as_json(self) -> dict[str, Any]:
        o = self.outcome
        return {
            "delivery_id": self.delivery_id,
            "message_id": self.message_id,
            "event_type": self.event_type,
            "request": {
                "url": self.url,
                "headers": dict(self.request_headers),
                "body": self.request_body,
            },
            "response": {
                "status": o.response_status,
                "headers": dict(o.response_headers or ()),
                "body": o.response_body,
                "truncated": o.response_truncated,
                "duration_ms": o.duration_ms,
            },
            "delivered": o.ok,
            "error_kind": o.error_kind,
            "error_message": o.error_message,
        }


@contextlib.asynccontextmanager
async def _connection(db: asyncpg.Connection | asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


async def send_test(
    db: asyncpg.Connection | asyncpg.Pool,
    settings: Settings,
    webhook: asyncpg.Record,
    event_type: str | None,
    *,
    payload_json: str | None = None,
) -> TestResult:
    """Store a test event for this webhook only, send it, and record the attempt.

    `webhook` is the row `admin.get_webhook` returns. The payload is `payload_json` if given,
    else the type's catalog sample, else a generic test payload. Given a pool, no connection is
    held while the endpoint takes its time to answer (up to request_timeout_s).
    """
    if event_type is None:
        event_type = next((t for t in webhook["event_types"] if t != "*"), "webhook.test")
    check_event_type(event_type, allow_star=False)
    if payload_json is not None:
        parse_json(payload_json, what="the data")
    async with _connection(db) as conn:
        payload = (
            payload_json or await admin.event_type_sample(conn, event_type) or GENERIC_TEST_PAYLOAD
        )
        token = uuid.uuid4()
        async with conn.transaction():
            # Only this webhook gets a test event: skip the fan-out for this transaction.
            await conn.execute("SET LOCAL dispatcher.skip_fan_out = 'on'")
            event = await conn.fetchrow(
                "INSERT INTO dispatcher.events (event_type, payload) VALUES ($1, $2::jsonb)"
                " RETURNING message_id, payload::text AS payload, created_at",
                event_type,
                payload,
            )
            inserted = await conn.fetchrow(
                admin.Q["insert_test_delivery"],
                event["message_id"],
                webhook["id"],
                settings.lease_duration.total_seconds(),
                token,
            )
            delivery_id: int = inserted["id"]
    message_id = str(event["message_id"])
    body = build_body(message_id, event_type, event["created_at"], event["payload"])
    headers = Signer(settings).headers(
        message_id, webhook["secret"], body, int(time.time()), webhook["previous_secret"]
    )
    async with create_session(settings) as session:
        outcome = await Sender(settings, session).send(
            webhook["url"], headers, body, capture_headers=True
        )
    # A test is one attempt, never retried; its outcome counts toward the webhook's health like
    # any other (a success closes an open breaker).
    decision = SUCCEEDED if outcome.ok else Decision("failed", 0.0, None)
    row = outcome_row(
        delivery_id, token, 1, outcome, decision, webhook["id"], inserted["lease_until"]
    )
    async with _connection(db) as conn:
        await store.record_outcomes(conn, [row], HealthRules.from_settings(settings))
    shown = [
        (name, SECRET_SHOWN_AS if name == settings.secret_header else value)
        for name, value in headers.items()
    ]
    return TestResult(
        delivery_id=delivery_id,
        message_id=message_id,
        event_type=event_type,
        url=webhook["url"],
        request_headers=shown,
        request_body=body.decode(),
        outcome=outcome,
    )
