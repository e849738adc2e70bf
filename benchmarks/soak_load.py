"""The soak's load: a publisher at a steady offered rate, and a receiver of three kinds.

The publisher runs in its own process, started by benchmarks.soak:

    python -m benchmarks.soak_load --dsn DSN --rate 1000 --seconds 900 \\
        --types soak.fast_0,soak.slow_0,... --status-file PATH

Every --tick-ms it inserts, with one INSERT INTO dispatcher.events ... SELECT, as many events as
the monotonic clock says are due (rate x time since the start, at most one second's worth per
statement), so a slow INSERT is caught up by the next ones rather than lowering the rate. The
types are taken in turn from --types (a type named twice gets twice the share). Each payload
carries 't', the transaction's now() as epoch seconds: the event's created_at. Once a second it
appends a JSON line to --status-file: {"s", "published", "lag_s", "insert_ms"}, where lag_s is
the most the published count trailed the clock that second beyond one tick's worth; the first
line is {"started": epoch seconds}, the last {"done": true, ...}.

The receiver (MixedReceiver, served in the soak's own process) answers /fast/<i> at once,
/slow/<i> after --slow-ms, and /failing/<i> with 500 to a share of its requests (and 200 to
the rest), in a fixed alternation per path so a failure streak never trips the circuit breaker.
Every 200 is recorded with its latency: arrival time minus the payload's 't'.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import orjson
import uvloop
from aiohttp import web

from benchmarks.report import percentiles

HOST = "127.0.0.1"
KINDS = ("fast", "slow", "failing")
LATENCY_KEYS = ("p50_ms", "p99_ms", "max_ms")
PUBLISH_SQL = """
INSERT INTO dispatcher.events (event_type, payload)
SELECT ($3::text[])[1 + ($1 + g) % cardinality($3::text[])],
       jsonb_build_object('seq', $1 + g, 't', extract(epoch FROM now()), 'note', repeat('x', 64))
FROM generate_series(0, $2 - 1) AS g"""


@dataclass
class Window:
    """What one kind of endpoint received since the window opened."""

    requests: int = 0
    ok: int = 0
    latency_s: list[float] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        ms: list[float | None] = [v * 1000 for v in percentiles(self.latency_s, (50, 99, 100))]
        figures = dict(zip(LATENCY_KEYS, ms or [None] * 3, strict=True))
        return {"requests": self.requests, "ok": self.ok, **figures}


class MixedReceiver:
    """Answer fast, slow and failing endpoints; count requests and time each 200 by window."""

    def __init__(self, slow_s: float, fail_ratio: float) -> None:
        self.slow_s, self.fail_ratio = slow_s, fail_ratio
        self._windows = {kind: Window() for kind in KINDS}
        self._failing_seen: dict[str, int] = {}

    def _fails(self, path: str) -> bool:
        """Fail the n-th request to `path` when floor(n x ratio) steps up: a fixed alternation."""
        n = self._failing_seen[path] = self._failing_seen.get(path, 0) + 1
        return int(n * self.fail_ratio) > int((n - 1) * self.fail_ratio)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        arrived = time.time()
        kind = request.path.split("/", 2)[1]
        window = self._windows.get(kind)
        if window is None:
            return web.Response(status=404)
        window.requests += 1
        if kind == "failing" and self._fails(request.path):
            return web.Response(status=500, body=b"failing on purpose")
        published = orjson.loads(await request.read())["data"]["t"]
        window.ok += 1
        window.latency_s.append(arrived - float(published))
        if kind == "slow":
            await asyncio.sleep(self.slow_s)
        return web.Response(body=b"ok")

    def take_window(self) -> dict[str, Any]:
        """Return each kind's figures, and some kinds' together; open a new window."""
        windows, self._windows = self._windows, {kind: Window() for kind in KINDS}
        return {
            "all": _merged(windows.values()).figures(),
            # Where the first attempt succeeds: the latency of the pipeline, not of retry delays.
            "first_try": _merged(windows[k] for k in KINDS if k != "failing").figures(),
            **{k: w.figures() for k, w in windows.items()},
        }


def _merged(windows: Iterable[Window]) -> Window:
    merged = Window()
    for w in windows:
        merged.requests += w.requests
        merged.ok += w.ok
        merged.latency_s += w.latency_s
    return merged


@contextlib.asynccontextmanager
async def receiving(slow_s: float, fail_ratio: float) -> AsyncIterator[tuple[str, MixedReceiver]]:
    """Serve a MixedReceiver on a free loopback port; yield its base URL and itself."""
    receiver = MixedReceiver(slow_s, fail_ratio)
    runner = web.ServerRunner(web.Server(receiver.handle, access_log=None))
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0, backlog=1024)
        await site.start()
        yield f"http://{HOST}:{runner.addresses[0][1]}", receiver
    finally:
        await runner.cleanup()


def _line(out: TextIO, value: dict[str, Any]) -> None:
    out.write(orjson.dumps(value).decode() + "\n")
    out.flush()


async def publish(args: argparse.Namespace) -> None:
    """Offer args.rate events a second for args.seconds; report each second to the status file."""
    types = args.types.split(",")
    total = round(args.rate * args.seconds)
    tick_s = args.tick_ms / 1000
    most = max(1, round(args.rate))  # at most a second's worth per statement
    conn = await asyncpg.connect(args.dsn)
    with args.status_file.open("a") as out:
        try:
            started = time.monotonic()
            _line(out, {"started": time.time()})
            published, second, next_tick = 0, 1, started
            lag_s = insert_s = 0.0
            while published < total:
                now = time.monotonic()
                owed = min(total, int(args.rate * (now - started))) - published
                lag_s = max(lag_s, owed / args.rate - tick_s)
                if owed > 0:
                    n = min(owed, most)
                    await conn.execute(PUBLISH_SQL, published, n, types)
                    insert_s = max(insert_s, time.monotonic() - now)
                    published += n
                while time.monotonic() - started >= second:
                    status = {"s": second, "published": published, "lag_s": max(0.0, lag_s)}
                    _line(out, {**status, "insert_ms": insert_s * 1000})
                    second, lag_s, insert_s = second + 1, 0.0, 0.0
                # A late tick is not made up by a burst of ticks: the next INSERT takes all owed.
                next_tick = max(next_tick + tick_s, time.monotonic())
                await asyncio.sleep(next_tick - time.monotonic())
            elapsed = time.monotonic() - started
            _line(out, {"done": True, "published": published, "elapsed_s": elapsed})
        finally:
            await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak_load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--dsn", required=True)
    add("--rate", type=float, required=True, help="events per second")
    add("--seconds", type=float, required=True)
    add("--types", required=True, help="comma-separated event types, taken in turn")
    add("--tick-ms", type=float, default=50.0)
    add("--status-file", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.tick_ms <= 0:
        parser.error("need --rate, --seconds and --tick-ms > 0")
    uvloop.run(publish(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
