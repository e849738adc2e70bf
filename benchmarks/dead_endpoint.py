"""Count how often the daemon dials an endpoint that refuses connections, then time its recovery.

    DISPATCHER_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python -m benchmarks.dead_endpoint --minutes 3

One webhook points at a loopback port that refuses connections: a socket is bound to 127.0.0.1:0
and never listens, so every connect is answered with a reset and no other process can take the
port meanwhile. `dispatcher run` starts with its default settings, except allowed_networks =
127.0.0.0/8 (the SSRF guard refuses loopback otherwise) and log level warning (--set KEY=VALUE
changes others), on a fresh database on DISPATCHER_DATABASE_URL's server (else on a throwaway
embedded PostgreSQL). Once the daemon has a database session, one INSERT ... SELECT publishes
--events events for the webhook; that INSERT starts the clock.

Dead phase: for --minutes the endpoint refuses. Each row of dispatcher.attempts is one
connection attempt; they are counted per minute and per 10 s by their started_at.

Recovery: the placeholder socket is closed and an aiohttp server answering 200 listens on the
same port, in this process. The benchmark waits until no delivery is pending, or for at most
--recover-within minutes, and says when the first and the last delivery arrived.

The daemon runs the code `import dispatcher` finds. To measure a commit without the working
tree's changes: git clone . /tmp/c && cp benchmarks/dead_endpoint.py /tmp/c/benchmarks/ &&
cd /tmp/c && PYTHONPATH=/tmp/c /path/to/.venv/bin/python -m benchmarks.dead_endpoint
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import uvloop
from aiohttp import web

from benchmarks import report
from benchmarks.pgcpu import PgCpu
from benchmarks.processes import BenchError, Daemon, daemon_process, embedded_server
from benchmarks.receiver import HOST, Arrivals
from benchmarks.workload import (
    CREATE_WEBHOOKS_SQL,
    INSERT_EVENTS_SQL,
    db_name,
    fresh_database,
    server_info,
    with_database,
)
from dispatcher.settings import ENV_PREFIX, load_settings

BUCKET_S = 10
# The settings that decide how often a dead endpoint is dialled (the breaker's, once they exist).
SETTINGS_SHOWN = (
    "retry_policy",
    "retry_schedule",
    "per_endpoint_concurrency",
    "max_in_flight",
    "connect_timeout_s",
    "breaker_threshold",
    "breaker_cooloff_s",
    "breaker_cooloff_max_s",
)
READY_TIMEOUT_S = 30.0
# The attempts that started in [$1, $2) (epoch seconds), counted from $1 by $3-second bucket.
IN_WINDOW = "started_at >= to_timestamp($1::float8) AND started_at < to_timestamp($2::float8)"
BUCKETS_SQL = f"""
SELECT floor((extract(epoch FROM started_at)::float8 - $1) / $3)::int AS bucket, count(*)
FROM dispatcher.attempts WHERE {IN_WINDOW}
GROUP BY 1 ORDER BY 1"""
ATTEMPTS_SQL = f"""
WITH a AS (SELECT started_at FROM dispatcher.attempts WHERE {IN_WINDOW}),
per_second AS (SELECT count(*) AS n FROM a GROUP BY floor(extract(epoch FROM started_at)))
SELECT (SELECT count(*) FROM a) AS total,
       (SELECT extract(epoch FROM min(started_at))::float8 - $1 FROM a) AS first_s,
       (SELECT extract(epoch FROM max(started_at))::float8 - $1 FROM a) AS last_s,
       (SELECT coalesce(max(n), 0) FROM per_second) AS peak_per_s"""
OUTCOME_KINDS_SQL = f"""
SELECT coalesce(error_kind, 'HTTP ' || response_status) AS kind, count(*)
FROM dispatcher.attempts WHERE {IN_WINDOW}
GROUP BY 1 ORDER BY 2 DESC"""
PUBLISHED_AT_SQL = "SELECT extract(epoch FROM max(created_at))::float8 FROM dispatcher.events"
STATUS_SQL = "SELECT status, count(*) FROM dispatcher.deliveries GROUP BY 1 ORDER BY 1"
PER_DELIVERY_SQL = "SELECT min(attempts), max(attempts) FROM dispatcher.deliveries"
PENDING_SQL = "SELECT count(*) FROM dispatcher.deliveries WHERE status = 'pending'"
HEALTH_SQL = """
SELECT consecutive_failures, breaker_failures, breaker_trips,
       extract(epoch FROM breaker_until - now()) AS open_for_s
FROM dispatcher.webhook_health"""


def daemon_env(dsn: str, sets: list[str]) -> dict[str, str]:
    """Build the daemon's environment: ours without DISPATCHER_*, its defaults, plus --set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    options = {"log_level": "warning", "allowed_networks": "127.0.0.0/8"}
    for item in sets:
        key, _, value = item.partition("=")
        options[key.strip().lower()] = value
    env.update({ENV_PREFIX + k.upper(): v for k, v in options.items()})
    env[ENV_PREFIX + "DATABASE_URL"] = dsn
    return env


@contextlib.contextmanager
def refused_port() -> Iterator[socket.socket]:
    """Yield a socket bound to a loopback port and not listening: connects there are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, 0))
        yield sock
    finally:
        sock.close()


async def check_refused(port: int) -> None:
    try:
        _, writer = await asyncio.open_connection(HOST, port)
    except ConnectionRefusedError:
        return
    writer.close()
    raise BenchError(f"{HOST}:{port} accepted a connection; it should refuse")


@contextlib.asynccontextmanager
async def receiver_on(port: int) -> AsyncIterator[Arrivals]:
    """Answer 200 to every request on HOST:port, recording arrivals, until the block ends."""
    arrivals = Arrivals()

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        arrivals.times.append(time.time())
        arrivals.ids.append(request.headers.get("webhook-id", ""))
        return web.Response(body=b"ok")

    runner = web.ServerRunner(web.Server(handle, access_log=None))
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, port).start()
        yield arrivals
    finally:
        await runner.cleanup()


async def wait_ready(daemon: Daemon, db: asyncpg.Pool) -> None:
    pg = await PgCpu.attach(db)
    for _ in range(int(READY_TIMEOUT_S / 0.1)):
        daemon.check_running()
        if await pg.daemon_sessions():
            return
        await asyncio.sleep(0.1)
    raise daemon.failed(f"the daemon opened no database session in {READY_TIMEOUT_S:g} s")


async def attempts_between(db: asyncpg.Pool, start: float, end: float) -> dict[str, Any]:
    """Count the attempts that started in [start, end): total, by 10 s, by outcome."""
    row = await db.fetchrow(ATTEMPTS_SQL, start, end)
    buckets = {b: n for b, n in await db.fetch(BUCKETS_SQL, start, end, BUCKET_S)}
    return {
        **dict(row),
        "buckets": buckets,
        "kinds": [(kind, n) for kind, n in await db.fetch(OUTCOME_KINDS_SQL, start, end)],
    }


async def deliveries(db: asyncpg.Pool) -> dict[str, Any]:
    """Return the deliveries by status, attempts per delivery, and the breaker's state if any."""
    low, high = await db.fetchrow(PER_DELIVERY_SQL)
    health = None
    if await db.fetchval("SELECT to_regclass('dispatcher.webhook_health')") is not None:
        health = dict(await db.fetchrow(HEALTH_SQL))
    by_status = {status: n for status, n in await db.fetch(STATUS_SQL)}
    return {"by_status": by_status, "attempts_min": low, "attempts_max": high, "health": health}


async def sleep_until(t: float, daemon: Daemon, db: asyncpg.Pool, t0: float) -> None:
    """Wait until time.time() is t, saying every 10 s how many attempts were made."""
    next_note = t0 + BUCKET_S
    while (now := time.time()) < t:
        daemon.check_running()
        await asyncio.sleep(min(t, next_note) - now)
        if time.time() >= next_note:
            made = await db.fetchval("SELECT count(*) FROM dispatcher.attempts")
            pending = await db.fetchval(PENDING_SQL)
            report.progress(f"  {next_note - t0:4.0f} s: {made:,} attempts, {pending:,} pending")
            next_note += BUCKET_S


async def recover(
    args: argparse.Namespace, daemon: Daemon, db: asyncpg.Pool, dead: socket.socket, port: int
) -> dict[str, Any]:
    """Listen on the dead port; wait until nothing is pending or the cap; return what came."""
    dead.close()
    async with receiver_on(port) as arrivals:
        t_r = time.time()
        report.progress(f"recovery: listening on {HOST}:{port}")
        cap_s = args.recover_within * 60
        next_note = t_r + 30
        while (pending := await db.fetchval(PENDING_SQL)) and time.time() < t_r + cap_s:
            daemon.check_running()
            if time.time() >= next_note:
                report.progress(f"  {time.time() - t_r:4.0f} s: {len(arrivals.times):,} arrived")
                next_note += 30
            await asyncio.sleep(0.2)
        waited_s = time.time() - t_r
        await asyncio.sleep(1)  # let the last outcomes be written
    times = arrivals.times
    return {
        "started": t_r,
        "waited_s": waited_s,
        "capped": bool(pending),
        "arrived": len(times),
        "unique": len(set(arrivals.ids)),
        "first_s": times[0] - t_r if times else None,
        "last_s": times[-1] - t_r if times else None,
    }


async def benchmark(args: argparse.Namespace, admin_dsn: str, workdir: Path) -> dict[str, Any]:
    name = db_name(0)
    env = daemon_env(with_database(admin_dsn, name), args.set)
    settings = load_settings(env=env)
    result: dict[str, Any] = {"settings": settings, "postgresql": await server_info(admin_dsn)}
    async with fresh_database(admin_dsn, name) as db:
        with refused_port() as dead:
            port = dead.getsockname()[1]
            await check_refused(port)
            await db.execute(CREATE_WEBHOOKS_SQL, f"http://{HOST}:{port}", 1, 1)
            grace_s = settings.shutdown_grace_s + 10
            result["daemon_code"] = report.daemon_code()
            async with daemon_process(env, workdir / "daemon.log", grace_s) as daemon:
                await wait_ready(daemon, db)
                report.progress(f"publishing {args.events:,} events for {HOST}:{port} (refused)")
                await db.execute(INSERT_EVENTS_SQL, args.events, 1)
                t0 = float(await db.fetchval(PUBLISHED_AT_SQL))
                t_end = t0 + args.minutes * 60
                await sleep_until(t_end, daemon, db, t0)
                result["dead_deliveries"] = await deliveries(db)
                rec = await recover(args, daemon, db, dead, port)
                # Counted now: every attempt that started before t_end has been written.
                result["dead"] = await attempts_between(db, t0, t_end)
                rec["attempts"] = await attempts_between(db, t_end, time.time() + 1)
                rec["deliveries"] = await deliveries(db)
                result["recovery"] = {**rec, "after_publish_s": rec["started"] - t0}
            result["exit_code"] = daemon.exit_code
            result["log_lines"] = len(daemon.log_lines())
    return result


def _kinds(kinds: list[tuple[str, int]]) -> str:
    return ", ".join(f"{kind} {n:,}" for kind, n in kinds) or "none"


def _statuses(d: dict[str, Any]) -> str:
    return ", ".join(f"{status} {n:,}" for status, n in d["by_status"].items())


def _health(d: dict[str, Any]) -> str:
    h = d["health"]
    if h is None:
        return "no webhook_health table"
    open_for = h["open_for_s"]
    if open_for is None:
        state = "closed"
    else:
        state = f"open for {open_for:.0f} s more" if open_for > 0 else "open, a probe may go"
    return (
        f"consecutive failures {h['consecutive_failures']:,}, breaker failures"
        f" {h['breaker_failures']:,}, trips {h['breaker_trips']}, breaker {state}"
    )


def text(args: argparse.Namespace, result: dict[str, Any], elapsed_s: float) -> str:
    m, pg, s = report.machine(), result["postgresql"], result["settings"]
    where = "embedded, temp dir" if pg["embedded"] else "DISPATCHER_DATABASE_URL"
    dead, rec = result["dead"], result["recovery"]
    lines = [
        "webhook-dispatcher dead-endpoint benchmark",
        f"machine   {m['cpu']}, {m['nproc']} CPUs, {m['ram_gib']} GiB RAM, Linux {m['kernel']}",
        f"postgres  {pg['server_version']} ({where})",
        f"daemon    {result['daemon_code']}",
        "settings  " + " ".join(f"{k}={getattr(s, k)}" for k in SETTINGS_SHOWN if hasattr(s, k)),
        f"          allowed_networks={','.join(s.allowed_networks)}; everything else default"
        + (f" but {' '.join(args.set)}" if args.set else ""),
        f"workload  {args.events:,} events for one webhook at a refused {HOST} port, published"
        f" by one INSERT (t = 0); dead for {args.minutes:g} min, then an aiohttp server answers"
        " 200 on that port",
        "",
        f"minute  attempts   per {BUCKET_S} s",
    ]
    per_minute = 60 // BUCKET_S
    for minute in range(math.ceil(args.minutes)):
        counts = [dead["buckets"].get(minute * per_minute + i, 0) for i in range(per_minute)]
        cells = " ".join(f"{n:>6,}" for n in counts)
        lines.append(f"{minute + 1:>6}  {sum(counts):>8,}   {cells}")
    d = result["dead_deliveries"]
    if dead["total"]:
        timing = (
            f"; the first at {dead['first_s']:.1f} s, the last at {dead['last_s']:.1f} s;"
            f" at most {dead['peak_per_s']:,} in one second"
        )
    else:
        timing = ""
    lines += [
        f"total   {dead['total']:>8,}   in {args.minutes:g} min{timing}",
        f"        outcomes: {_kinds(dead['kinds'])}",
        f"        deliveries then: {_statuses(d)}; attempts per delivery"
        f" {d['attempts_min']}..{d['attempts_max']}",
        f"        health then: {_health(d)}",
        "",
        f"recovery (the receiver listened {rec['after_publish_s']:.1f} s after the publish):",
    ]
    rd = rec["deliveries"]
    succeeded = rd["by_status"].get("succeeded", 0)
    if rec["first_s"] is None:
        lines.append(f"  nothing arrived in {rec['waited_s']:.1f} s")
    else:
        lines.append(
            f"  first delivery arrived after {rec['first_s']:.1f} s, the last after"
            f" {rec['last_s']:.1f} s; {rec['arrived']:,} requests, {rec['unique']:,} distinct"
        )
    if rec["capped"]:
        lines.append(f"  NOT all delivered within --recover-within {args.recover_within:g} min")
    elif succeeded == args.events:
        lines.append(f"  all {args.events:,} delivered: recovery time {rec['last_s']:.1f} s")
    else:
        failed = rd["by_status"].get("failed", 0)
        lines.append(
            f"  nothing left pending after {rec['waited_s']:.1f} s: {succeeded:,} of"
            f" {args.events:,} delivered; {failed:,} had failed for good while it was dead"
        )
    attempts = rec["attempts"]
    lines += [
        f"  deliveries: {_statuses(rd)}; attempts during recovery {attempts['total']:,}"
        f" ({_kinds(attempts['kinds'])})",
        f"  health: {_health(rd)}",
        "",
        f"daemon exit code after SIGTERM {result['exit_code']};"
        f" {result['log_lines']:,} log lines at level warning",
        f"the benchmark took {elapsed_s / 60:.1f} min",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dead_endpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--events", type=int, default=10_000, help="events for the dead webhook (default 10000)")
    add("--minutes", type=float, default=3.0, help="how long it stays dead (default 3)")
    add(
        "--recover-within",
        type=float,
        default=12.0,
        metavar="MINUTES",
        help="the longest wait for everything to be delivered after it comes back (default 12)",
    )
    add("--set", action="append", default=[], metavar="KEY=VALUE", help="a daemon setting")
    args = parser.parse_args(argv)
    if args.events < 1 or args.minutes <= 0 or args.recover_within <= 0:
        parser.error("need --events >= 1, --minutes > 0 and --recover-within > 0")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)  # clean up on SIGTERM as on Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with contextlib.ExitStack() as stack:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
            dsn = os.environ.get(ENV_PREFIX + "DATABASE_URL") or stack.enter_context(
                embedded_server()
            )
            result = uvloop.run(benchmark(args, dsn, workdir))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except (asyncpg.PostgresError, OSError) as exc:
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything it started has been stopped", file=sys.stderr)
        return 130
    print(text(args, result, time.monotonic() - started))
    return 0 if result["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
