"""The dedicated LISTEN connection that wakes the lease loop when events are published."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import structlog

from dispatcher.delivery.outcomes import Backoff, describe
from dispatcher.ops.metrics import Metrics
from dispatcher.store import APPLICATION_NAME, TRANSIENT_DB_ERRORS

CHANNEL = "dispatcher_deliveries"

log = structlog.get_logger("dispatcher.delivery.listener")


class Listener:
    """Hold one LISTEN connection open, reconnecting with backoff when it drops."""

    def __init__(
        self, dsn: str, on_notify: Callable[[], None], metrics: Metrics | None = None
    ) -> None:
        self._dsn = dsn
        self._metrics = metrics
        self._on_notify = on_notify
        self.connected = asyncio.Event()

    def _notified(self, *_: object) -> None:
        self._on_notify()

    async def run(self) -> None:
        """Listen until cancelled."""
        backoff = Backoff()
        while True:
            lost = asyncio.Event()
            conn = None
            try:
                conn = await asyncpg.connect(
                    self._dsn, server_settings={"application_name": APPLICATION_NAME + "-listen"}
                )
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, self._notified)
                self.connected.set()
                backoff.reset()
                # Anything published while we were not listening is found by this lease.
                self._on_notify()
                await lost.wait()
                log.warning("listen_connection_lost")
            except TRANSIENT_DB_ERRORS as exc:
                if self._metrics is not None:
                    self._metrics.database_error("listen")
                delay = backoff.next()
                log.warning("listen_connect_failed", error=describe(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
            finally:
                self.connected.clear()
                if conn is not None and not conn.is_closed():
                    await conn.close(timeout=2)
