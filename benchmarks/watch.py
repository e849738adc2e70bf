"""Follow a running daemon until its deliveries are in; publish single events and time them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import psutil

from benchmarks.processes import BenchError, Daemon, ReceiverClient
from benchmarks.report import percentiles
from benchmarks.workload import PENDING_SQL, PUBLISH_SQL

SAMPLE_EVERY_S = 0.2
STALL_S = 20.0
# A drain slower than this fails: at most 60 s + 2 ms a delivery. After TOO_SLOW_AFTER_S it
# fails as soon as the last TOO_SLOW_WINDOW_S's pace would miss that deadline.
MIN_RATE = 500
TOO_SLOW_AFTER_S = 30.0
TOO_SLOW_WINDOW_S = 10.0


@dataclass
class Sample:
    t: float  # seconds since the run's start (the daemon's start, or the burst's INSERT)
    rss: int
    cpu_s: float
    received: int


def deadline_s(deliveries: int) -> float:
    return 60 + deliveries / MIN_RATE


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def stall(samples: list[Sample]) -> str | None:
    """Describe a stall: nothing received for STALL_S seconds. None while deliveries flow."""
    last = samples[-1]
    since = [s for s in samples if s.received == last.received]
    span = last.t - since[0].t
    if span < STALL_S or len(since) < 2:
        return None
    cpu_pct = (last.cpu_s - since[0].cpu_s) / span * 100
    mb = (since[0].rss / 2**20, last.rss / 2**20)
    return (
        f"nothing arrived for {span:.0f} s; meanwhile the daemon used {cpu_pct:.0f}% CPU"
        f" and its RSS went from {mb[0]:.0f} to {mb[1]:.0f} MB"
    )


def too_slow(samples: list[Sample], expected: int) -> str | None:
    """Describe a drain whose recent pace cannot finish by the deadline. None otherwise."""
    last = samples[-1]
    if last.t < TOO_SLOW_AFTER_S:
        return None
    window = next(s for s in samples if s.t >= last.t - TOO_SLOW_WINDOW_S)
    rate = (last.received - window.received) / max(last.t - window.t, SAMPLE_EVERY_S)
    needed_s = (expected - last.received) / rate if rate else float("inf")
    if last.t + needed_s <= deadline_s(expected):
        return None
    return (
        f"too slow: {rate:,.0f} deliveries/s over the last {TOO_SLOW_WINDOW_S:.0f} s"
        f" ({last.received / last.t:,.0f}/s since the start) would need {needed_s:,.0f} s more,"
        f" past the {deadline_s(expected):.0f} s deadline"
    )


async def watch_delivery(
    daemon: Daemon,
    rx: ReceiverClient,
    db: asyncpg.Pool,
    expected: int,
    t0: float,
    rss_limit_mb: int,
) -> list[Sample]:
    """Sample the daemon every 0.2 s until `expected` deliveries arrived and none is pending.

    Fail (BenchError) if the daemon exits, stalls, is too slow or passes the RSS limit.
    """
    proc = psutil.Process(daemon.proc.pid)
    limit_s = deadline_s(expected)
    samples: list[Sample] = []
    received = 0
    for _ in range(int(limit_s / SAMPLE_EVERY_S) + 1):
        if time.monotonic() - t0 > limit_s:
            break
        daemon.check_running()
        with proc.oneshot():
            rss, cpu = proc.memory_info().rss, proc.cpu_times()
        received = await rx.count()
        samples.append(Sample(time.monotonic() - t0, rss, cpu.user + cpu.system, received))
        if received >= expected and await db.fetchval(PENDING_SQL) == 0:
            return samples
        why = stall(samples) or too_slow(samples, expected)
        if why or rss > rss_limit_mb * 2**20:
            why = why or f"RSS passed --rss-limit-mb {rss_limit_mb}"
            raise daemon.failed(f"{why}; received {received:,}/{expected:,}")
        await asyncio.sleep(SAMPLE_EVERY_S)
    raise daemon.failed(f"only {received:,}/{expected:,} arrived in {limit_s:.0f} s")


async def publish_singles(
    dsn: str, event_type: str, count: int, interval_ms: float
) -> dict[str, float]:
    """Publish `count` events one at a time, `interval_ms` apart; return commit times by id."""
    committed: dict[str, float] = {}
    conn = await asyncpg.connect(dsn)
    try:
        for i in range(count):
            message_id = await conn.fetchval(PUBLISH_SQL, event_type, f'{{"n": {i}}}')
            committed[message_id] = time.time()
            await asyncio.sleep(interval_ms / 1000)
    finally:
        await conn.close()
    return committed


async def wait_for_count(rx: ReceiverClient, count: int, timeout_s: float) -> bool:
    """Wait until the receiver has `count` receipts; return whether it got there in time."""
    for _ in range(int(timeout_s / 0.05)):
        if await rx.count() >= count:
            return True
        await asyncio.sleep(0.05)
    return False


def delays_ms(stats: dict[str, Any], committed: dict[str, float]) -> list[float]:
    """Return commit-to-receipt delays of the receipts whose id is in `committed`."""
    pairs = zip(stats["ids"], stats["times"], strict=True)
    return [(t - committed[i]) * 1000 for i, t in pairs if i in committed]


def delay_figures(ms: list[float], expected: int, what: str) -> dict[str, float]:
    """Return p50, p99 and max of `ms`; fail if fewer than `expected` arrived."""
    if len(ms) < expected:
        raise BenchError(f"{what}: only {len(ms)}/{expected} deliveries arrived")
    p50, p99 = percentiles(ms, (50, 99))
    return {"p50_ms": p50, "p99_ms": p99, "max_ms": max(ms)}
