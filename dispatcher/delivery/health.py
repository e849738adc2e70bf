"""Act on what an outcome write says about a webhook's health: report breaker changes, disable
webhooks that are gone or have failed for too long, and publish the operator events."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson
import structlog

from dispatcher.store import QUERIES, TRANSIENT_DB_ERRORS, HealthRules

if TYPE_CHECKING:
    from dispatcher.ops.metrics import Metrics

log = structlog.get_logger("dispatcher.delivery.health")

# The operator events, published through the producers' own SQL contract (dispatcher.publish).
# Their prefix is reserved: producers may not publish it, and '*' does not match it.
OPERATOR_PREFIX = "dispatcher."
WEBHOOK_DISABLED = OPERATOR_PREFIX + "webhook.disabled"
WEBHOOK_FAILING = OPERATOR_PREFIX + "webhook.failing"
WEBHOOK_RECOVERED = OPERATOR_PREFIX + "webhook.recovered"


class HealthKeeper:
    """Turn the health changes record_outcomes reports into log lines, metrics and actions.

    Each action is one conditional statement plus the event it publishes, in one transaction:
    the condition is checked again there, so of several instances that saw the same change
    only one acts, and an event is published exactly when its change is committed. An action
    the database refuses for a moment is logged and left: its condition still holds at the
    webhook's next outcome (a 410 answers again), so it is taken then.
    """

    def __init__(
        self, rules: HealthRules, gone_disables: bool, metrics: Metrics | None = None
    ) -> None:
        self._rules = rules
        self._gone_disables = gone_disables
        self._metrics = metrics

    async def act(
        self,
        conn: asyncpg.Connection,
        gone: Iterable[int],
        attention: Iterable[Mapping[str, Any]],
    ) -> None:
        """Handle one written batch: `gone` webhooks answered 410; `attention` is the JSON
        record_outcomes returned."""
        try:
            if self._gone_disables:
                for webhook_id in set(gone):
                    await self._disable(conn, webhook_id, "gone")
            for item in attention:
                await self._attend(conn, item)
        except TRANSIENT_DB_ERRORS as exc:
            log.warning("health_action_failed", error=f"{type(exc).__name__}: {exc}")

    async def _attend(self, conn: asyncpg.Connection, item: Mapping[str, Any]) -> None:
        webhook_id = item["webhook_id"]
        for change in ("opened", "reopened", "closed"):
            if item[change]:
                self._breaker_changed(webhook_id, change, item)
        if item["disable"]:
            await self._disable(conn, webhook_id, "failing")
        elif item["failing"]:
            await self._publish_once(
                conn,
                WEBHOOK_FAILING,
                "webhook_failing",
                True,
                QUERIES["mark_failing"],
                webhook_id,
                self._rules.failing_after_s,
            )
        if item["recovered"]:
            await self._publish_once(
                conn,
                WEBHOOK_RECOVERED,
                "webhook_recovered",
                False,
                QUERIES["mark_recovered"],
                webhook_id,
            )

    def _breaker_changed(self, webhook_id: int, change: str, item: Mapping[str, Any]) -> None:
        if change == "closed":
            log.info("breaker_closed", webhook_id=webhook_id)
        else:
            log.warning(
                f"breaker_{change}",
                webhook_id=webhook_id,
                until=item["breaker_until"],
                trips=item["breaker_trips"],
                consecutive_failures=item["consecutive_failures"],
                last_error=item["last_error"],
            )
        if self._metrics is not None:
            self._metrics.breaker_changed(change)

    async def _disable(self, conn: asyncpg.Connection, webhook_id: int, reason: str) -> None:
        async with conn.transaction():
            row = await conn.fetchrow(
                QUERIES["disable_unhealthy_webhook"],
                webhook_id,
                reason,
                self._rules.auto_disable_after_s,
                self._rules.auto_disable_min_attempts,
            )
            if row is None:
                return
            await self._publish(conn, WEBHOOK_DISABLED, dict(row))
        log.warning(
            "webhook_disabled",
            webhook_id=webhook_id,
            reason=reason,
            first_failure_at=row["first_failure_at"],
            consecutive_failures=row["consecutive_failures"],
            last_error=row["last_error"],
        )
        if self._metrics is not None:
            self._metrics.webhook_disabled(reason)

    async def _publish_once(
        self,
        conn: asyncpg.Connection,
        event_type: str,
        log_event: str,
        alarming: bool,
        sql: str,
        *args: Any,
    ) -> None:
        async with conn.transaction():
            row = await conn.fetchrow(sql, *args)
            if row is None:
                return
            payload = dict(row)
            await self._publish(conn, event_type, payload)
        (log.warning if alarming else log.info)(log_event, **payload)

    async def _publish(
        self, conn: asyncpg.Connection, event_type: str, payload: Mapping[str, Any]
    ) -> None:
        await conn.fetchval(QUERIES["publish_event"], event_type, orjson.dumps(payload).decode())
        if self._metrics is not None:
            self._metrics.operator_event(event_type)
