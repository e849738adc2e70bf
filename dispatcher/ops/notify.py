"""Tell systemd how the daemon is doing (sd_notify); every call is a no-op outside systemd.

The protocol is one AF_UNIX datagram of newline-separated `KEY=value` lines sent to the socket
named by $NOTIFY_SOCKET; a leading '@' names a socket in the abstract namespace.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from datetime import timedelta
from typing import Any

import structlog

log = structlog.get_logger("dispatcher.ops.notify")

# How many watchdog intervals without a database answer still count as healthy. Probes start
# one interval apart, so a single hung probe already means two intervals of silence.
_SILENCE_FORGIVEN = 2.5


def notify(*fields: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `fields` (e.g. "READY=1") to $NOTIFY_SOCKET; return whether a datagram was sent.

    Never raises: systemd notification is advisory, and a daemon that cannot reach the manager
    should keep delivering (a missed watchdog ping is then what restarts it).
    """
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET", "")
    if not target:
        return False
    if target.startswith("@"):
        address = "\0" + target[1:]
    elif target.startswith("/"):
        address = target
    else:
        log.warning("sd_notify_unsupported_socket", notify_socket=target)
        return False
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block the event loop: if the manager's queue is full, drop the message.
            sock.setblocking(False)
            sock.sendto(message, address)
    except OSError as exc:
        log.warning("sd_notify_failed", notify_socket=target, error=str(exc))
        return False
    return True


def status(text: str) -> bool:
    """Set the one-line status `systemctl status` shows."""
    return notify("STATUS=" + " ".join(text.split()))


def ready(text: str = "delivering") -> bool:
    """Report start-up finished: the database answers and leasing is about to begin."""
    return notify("READY=1", "STATUS=" + text)


def stopping(text: str = "draining in-flight attempts") -> bool:
    """Report that shutdown has begun."""
    return notify("STOPPING=1", "STATUS=" + text)


def watchdog() -> bool:
    """Send one keep-alive ping."""
    return notify("WATCHDOG=1")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> timedelta | None:
    """Return how often to ping the watchdog (half of $WATCHDOG_USEC), or None if it is off.

    As sd_watchdog_enabled(3): the watchdog applies to this process only if $WATCHDOG_PID is
    unset or names it (a child that inherited the variables must not ping on its parent's behalf).
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC", "")
    pid_text = env.get("WATCHDOG_PID", "")
    try:
        usec = int(usec_text)
        pid = int(pid_text) if pid_text else os.getpid()
    except ValueError:
        return None
    if usec <= 0 or pid != os.getpid():
        return None
    return timedelta(microseconds=usec / 2)


async def keep_alive(
    interval: timedelta,
    probe: Callable[[], Coroutine[Any, Any, object]],
    failures: tuple[type[BaseException], ...] = (OSError,),
) -> None:
    """Ping the watchdog every `interval` while the loop and the pool are responsive.

    `probe` is a database round trip. A probe that answers, or fails fast with one of
    `failures` (the database is down: the daemon keeps running and reconnecting, and says so in
    STATUS=), counts as a sign of life. A probe that hangs longer than 2.5 intervals (1.25
    times the watchdog timeout) means a wedged pool: the pings stop and systemd restarts the
    service one watchdog timeout later. A blocked event loop stops them too, since this runs on
    it. Anything else the probe raises ends the task. Never returns.

    The pings keep one beat, one at the end of each interval, however long the probe takes: a
    ping sent as soon as a quick probe answered and the next one only when a slow probe's
    interval ran out would be two intervals apart, which is the watchdog timeout itself.
    """
    period = interval.total_seconds()
    last_ok = time.monotonic()
    withheld = False
    down = False
    # A probe stuck in a wedged pool may not even yield to cancellation (asyncpg waits for the
    # server to confirm a cancel), so it runs as its own task and is not awaited past `period`;
    # while it is stuck, no second one is started.
    pending: asyncio.Task[object] | None = None
    beat = time.monotonic()
    try:
        while True:
            # The next ping is due one interval after the last was (at once if this loop fell
            # behind, e.g. while the event loop was blocked).
            beat = max(beat + period, time.monotonic())
            if pending is None:
                pending = asyncio.create_task(probe(), name="watchdog-probe")
            done, _ = await asyncio.wait({pending}, timeout=max(0.0, beat - time.monotonic()))
            failure = f"no answer within {period:g} s"
            if done:
                exc = pending.exception()
                pending = None
                if exc is None:
                    last_ok = time.monotonic()
                    if down:
                        status("delivering")
                        down = False
                elif isinstance(exc, failures):
                    last_ok = time.monotonic()
                    status(f"database unreachable: {type(exc).__name__}; reconnecting")
                    down = True
                else:
                    raise exc
            await asyncio.sleep(max(0.0, beat - time.monotonic()))
            silent_s = time.monotonic() - last_ok
            # A probe that answered in this interval vouches for it, however long the sleep
            # to the beat took (a loop starved for a moment is not a wedged pool).
            if done or silent_s <= _SILENCE_FORGIVEN * period:
                if withheld:
                    log.info("watchdog_resumed")
                    withheld = False
                watchdog()
            elif not withheld:
                log.error(
                    "watchdog_withheld",
                    error=failure,
                    database_silent_s=round(silent_s, 3),
                    note="systemd restarts the service if no ping follows within WatchdogSec",
                )
                withheld = True
    finally:
        if pending is not None:
            pending.cancel()
