"""How soon an idle daemon acts on new work: the timing figures the tests only bound loosely.

The tests prove each wake-up happens far inside a 30 s poll (tests/test_wakeups.py); how soon,
in milliseconds, is a figure for this file, which prints it instead of failing on a busy
machine (benchmarks/watchdog.py does the same for the watchdog's pings).

One `dispatcher run` process with a 30 s poll idles on an empty table, then, one at a time with
a pause between them:

  publish   an event is published; time from the INSERT returning to its arrival
  retry     the receiver fails an event's first attempt; retry_schedule is 1 s; how late the
            retry arrives after the first attempt plus that 1 s
  resend    a delivered event is resent (the CLI's code path); time from the call to arrival

    python -m benchmarks.wakeups [--samples 40] [--database-url postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import asyncpg
import uvloop
from aiohttp import web

from benchmarks.processes import daemon_process, embedded_server
from dispatcher.manage import history
from dispatcher.ops import migrate

POLL_S = 30.0
RETRY_DELAY_S = 1.0


class Arrivals:
    """A receiver on 127.0.0.1 that records when each message id arrives, failing /fail once."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        now = time.time()
        message_id = request.headers.get("webhook-id", "")
        self.times[message_id].append(now)
        self.changed.set()
        failing = request.path == "/fail" and len(self.times[message_id]) == 1
        return web.Response(status=500 if failing else 200, text="ok")

    async def wait(self, message_id: str, count: int, within_s: float = 10.0) -> float:
        """Return the time of `message_id`'s `count`th arrival."""
        async with asyncio.timeout(within_s):
            while len(self.times[message_id]) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.times[message_id][count - 1]


def figures(name: str, values_ms: list[float]) -> str:
    values = sorted(values_ms)
    p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
    return (
        f"{name:<9} n={len(values):<4} median {statistics.median(values):8.1f} ms"
        f"   p99 {p99:8.1f} ms   max {values[-1]:8.1f} ms"
    )


async def measure(admin_dsn: str, samples: int, workdir: Path) -> None:
    name = f"bench_wakeups_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + "/" + name
    conn = await asyncpg.connect(dsn)
    arrivals = Arrivals()
    runner = web.AppRunner(web.Application(), access_log=None)
    runner.app.router.add_route("POST", "/{tail:.*}", arrivals.handle)
    try:
        await migrate.apply_migrations(conn)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        ids = []
        for path in ("ok", "fail"):
            ids.append(
                await conn.fetchval(
                    "INSERT INTO dispatcher.webhooks (service_name, url, event_types)"
                    " VALUES ($1, $2, $3) RETURNING id",
                    path,
                    f"{url}/{path}",
                    [f"bench.{path}"],
                )
            )
        ok_id, fail_id = ids
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")},
            "DISPATCHER_DATABASE_URL": dsn,
            "DISPATCHER_ALLOWED_NETWORKS": "127.0.0.0/8",
            "DISPATCHER_POLL_INTERVAL_S": str(POLL_S),
            "DISPATCHER_RETRY_SCHEDULE": str(RETRY_DELAY_S),
            "DISPATCHER_THROTTLE_MIN_DELAY_S": "0",
        }
        async with daemon_process(env, workdir / "daemon.log", grace_s=10) as daemon:
            await asyncio.sleep(3)  # let it start and go idle on the empty table
            results: dict[str, list[float]] = defaultdict(list)
            for _ in range(samples):
                daemon.check_running()
                start = time.time()
                mid = str(await conn.fetchval("SELECT dispatcher.publish('bench.ok', '{}')"))
                results["publish"].append((await arrivals.wait(mid, 1) - start) * 1000)
                await asyncio.sleep(0.2)

                mid = str(await conn.fetchval("SELECT dispatcher.publish('bench.fail', '{}')"))
                first = await arrivals.wait(mid, 1)
                second = await arrivals.wait(mid, 2)
                results["retry"].append((second - first - RETRY_DELAY_S) * 1000)
                await asyncio.sleep(0.2)

                start = time.time()
                await history.resend_event(conn, uuid.UUID(mid), fail_id)
                results["resend"].append((await arrivals.wait(mid, 3) - start) * 1000)
                await asyncio.sleep(0.2)
        print(f"poll_interval_s={POLL_S:.0f}; webhooks {ok_id} (ok) and {fail_id} (fail once)")
        for key in ("publish", "retry", "resend"):
            print(figures(key, results[key]))
    finally:
        await runner.cleanup()
        await conn.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--database-url", help="an admin DSN; default: an embedded PostgreSQL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-wakeups-") as tmp:
        if args.database_url:
            uvloop.run(measure(args.database_url, args.samples, Path(tmp)))
        else:
            with embedded_server() as dsn:
                uvloop.run(measure(dsn, args.samples, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
