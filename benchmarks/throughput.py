"""Measure `dispatcher run` draining a backlog against a local receiver, next to a bare client.

    .venv/bin/python -m benchmarks.throughput --events 100000 --webhooks 20 --repeat 3
    .venv/bin/python -m benchmarks.throughput --rss-only --events 1000000

Each run gets a fresh database (on DISPATCHER_DATABASE_URL's server, else on a throwaway
embedded PostgreSQL). N webhooks point at benchmarks.receiver on 127.0.0.1; webhook i is
subscribed to K event types (--fanout, default 1), so each event type has K subscribers and the
backlog is exactly events x K deliveries, inserted by one INSERT ... SELECT over generate_series.
A run first measures the ceiling (benchmarks.bare_client: the same bodies, no database, and the
daemon's effective in-flight cap, min(max_in_flight, per_endpoint_concurrency x N), since every
webhook points at the one receiver), then starts `dispatcher run` and times it until the
receiver has every delivery and no row is pending; a drain that makes no progress for 20 s, or
whose RSS passes --rss-limit-mb, fails the run. The backlog is not ANALYZEd unless --analyze is
given, as after a producer's bulk insert. After the last run, idle pickup latency is measured by
publishing single events one at a time. The daemon sees only the DISPATCHER_* variables this
script sets (the database URL, log level warning, and --max-in-flight etc. or --set KEY=VALUE).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import psutil
import uvloop

from benchmarks import report
from benchmarks.processes import (
    BenchError,
    Daemon,
    ReceiverClient,
    daemon_process,
    embedded_server,
    receiver_process,
    run_bare_client,
)
from benchmarks.report import Run, percentiles
from benchmarks.workload import (
    CREATE_WEBHOOKS_SQL,
    CREATED_SQL,
    INSERT_EVENTS_SQL,
    OUTCOMES_SQL,
    PAYLOAD_SQL,
    PENDING_SQL,
    db_name,
    fresh_database,
    server_info,
    with_database,
)
from dispatcher.settings import ENV_PREFIX, Settings, load_settings

SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(Settings))
SAMPLE_EVERY_S = 0.2
STALL_S = 20.0
MIN_CEILING_REQUESTS = 30_000
PICKUP_TYPE = "bench.type_0"


@dataclass
class Sample:
    t: float  # seconds since the daemon process was started
    rss: int
    cpu_s: float
    received: int


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


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


@dataclass
class Bench:
    args: argparse.Namespace
    admin_dsn: str
    rx: ReceiverClient
    workdir: Path
    env: dict[str, str]  # the daemon's
    settings: Settings  # what the daemon will load from env

    @property
    def deliveries(self) -> int:
        return int(self.args.events * self.args.fanout)

    @property
    def in_flight_cap(self) -> int:
        """The daemon's effective cap: every webhook points at the one receiver."""
        s = self.settings
        return min(s.max_in_flight, s.per_endpoint_concurrency * self.args.webhooks)

    async def run_once(self, index: int, last: bool) -> tuple[Run, dict[str, float] | None]:
        """Measure the ceiling, then the daemon on a fresh backlog; after the last, pickup."""
        args, label = self.args, f"run {index + 1}/{self.args.repeat}"
        run, pickup = Run(self.deliveries), None
        async with fresh_database(self.admin_dsn, db_name(index)) as db:
            await db.execute(CREATE_WEBHOOKS_SQL, self.rx.base, args.webhooks, args.fanout)
            if not args.rss_only:
                requests = max(self.deliveries, MIN_CEILING_REQUESTS)
                report.progress(f"{label}: ceiling, {requests:,} requests")
                sql = f"SELECT ({PAYLOAD_SQL})::text FROM (SELECT 12345 AS g) AS s"
                await self.ceiling(run, requests, await db.fetchval(sql))
            start = time.monotonic()
            await db.execute(INSERT_EVENTS_SQL, args.events, args.webhooks)
            run.enqueue_s = time.monotonic() - start
            if args.analyze:
                await db.execute("ANALYZE dispatcher.deliveries, dispatcher.events")
            got = await db.fetchval("SELECT count(*) FROM dispatcher.deliveries")
            if got != self.deliveries:
                raise BenchError(f"fan-out created {got} deliveries, not {self.deliveries}")
            report.progress(f"{label}: daemon, {self.deliveries:,} deliveries")
            pickup = await self.daemon_phase(index, db, run, with_pickup=last)
        return run, pickup

    async def daemon_phase(
        self, index: int, db: asyncpg.Pool, run: Run, with_pickup: bool
    ) -> dict[str, float] | None:
        """Start the daemon, time the drain, maybe measure pickup, then stop it."""
        dsn = with_database(self.admin_dsn, db_name(index))
        env = {**self.env, ENV_PREFIX + "DATABASE_URL": dsn}
        grace_s = self.settings.shutdown_grace_s + 10
        pickup = None
        await self.rx.reset()
        try:
            async with (
                holding_xmin(dsn, self.args.hold_xmin_s),
                daemon_process(env, self.workdir / f"daemon-{index}.log", grace_s) as daemon,
            ):
                await self.drain(daemon, db, run)
                if self.args.hold_xmin_s:
                    run.dead_tuples = await db.fetchval(DEAD_TUPLES_SQL)
                if with_pickup and not self.args.rss_only and self.args.pickup:
                    report.progress(f"pickup: {self.args.pickup} single publishes")
                    pickup = await self.pickup(dsn)
        except BenchError as exc:
            killed = daemon.exit_code == -signal.SIGKILL
            how = f" (SIGKILL: SIGTERM did not stop it in {grace_s:.0f} s)" if killed else ""
            raise BenchError(
                f"{exc}\nthe daemon then exited with {daemon.exit_code}{how}"
            ) from None
        logged = daemon.log_lines()
        run.exit_code, run.log_lines = daemon.exit_code, len(logged)
        run.log_sample = [line[:300] for line in logged[:3]]
        return pickup

    async def ceiling(self, run: Run, requests: int, payload: str) -> None:
        """Run the bare client against the receiver; fill the ceiling fields of `run`."""
        await self.rx.reset()
        rx_cpu = cpu_s(self.rx.pid)
        argv = ["--url", self.rx.base + "/hooks/0", "--requests", str(requests)]
        argv += ["--concurrency", str(self.in_flight_cap), "--payload", payload]
        if not getattr(self.settings, "send_secret_header", True):
            argv.append("--no-secret-header")
        result = await run_bare_client(argv, deadline_s=60 + requests / 500)
        summary = await self.rx.summary()
        count = summary["count"]
        if result["failures"] or count != requests:
            raise BenchError(f"bare client: {result['failures']} failures, {count} received")
        run.ceiling_rps = count / (summary["last"] - summary["first"])
        run.ceiling_cpu_s_per_1k = result["cpu_s"] / count * 1000
        run.ceiling_body_bytes = summary["bytes"] / count
        run.ceiling_receiver_cpu_s_per_1k = (cpu_s(self.rx.pid) - rx_cpu) / count * 1000

    async def drain(self, daemon: Daemon, db: asyncpg.Pool, run: Run) -> None:
        """Sample the daemon until every delivery arrived and none is pending; fill `run`."""
        proc = psutil.Process(daemon.proc.pid)
        rx_cpu = cpu_s(self.rx.pid)
        deadline_s = 60 + run.deliveries / 500
        samples: list[Sample] = []
        for _ in range(int(deadline_s / SAMPLE_EVERY_S)):
            if daemon.proc.poll() is not None:
                raise daemon.failed(f"the daemon exited early with code {daemon.proc.returncode}")
            with proc.oneshot():
                rss, cpu = proc.memory_info().rss, proc.cpu_times()
            received = await self.rx.count()
            t = time.monotonic() - daemon.started
            samples.append(Sample(t, rss, cpu.user + cpu.system, received))
            if received >= run.deliveries and await db.fetchval(PENDING_SQL) == 0:
                break
            stalled = stall(samples)
            if stalled or rss > self.args.rss_limit_mb * 2**20:
                why = stalled or f"RSS passed --rss-limit-mb {self.args.rss_limit_mb}"
                raise daemon.failed(f"{why}; received {received}/{run.deliveries}")
            await asyncio.sleep(SAMPLE_EVERY_S)
        else:
            got = samples[-1].received
            raise daemon.failed(f"only {got}/{run.deliveries} arrived in {deadline_s:.0f} s")

        done = samples[-1]
        cpu_before_first = max((s.cpu_s for s in samples if s.received == 0), default=0.0)
        summary = await self.rx.summary()
        count = summary["count"]
        run.deliveries_per_s = count / (summary["last"] - summary["first"])
        run.ratio = run.deliveries_per_s / run.ceiling_rps if run.ceiling_rps else None
        run.wall_s = done.t
        run.first_receipt_s = next(s.t for s in samples if s.received > 0)
        run.peak_rss_mb = max(s.rss for s in samples) / 2**20
        run.end_rss_mb = done.rss / 2**20
        run.cpu_total_s = done.cpu_s
        run.cpu_s_per_1k = (done.cpu_s - cpu_before_first) / count * 1000
        run.receiver_cpu_s_per_1k = (cpu_s(self.rx.pid) - rx_cpu) / count * 1000
        run.body_bytes = summary["bytes"] / count
        run.duplicates = count - run.deliveries
        at_tenths = [
            next(s for s in samples if s.received >= run.deliveries * tenth / 10)
            for tenth in range(1, 11)
        ]
        run.rss_trace_mb = [s.rss / 2**20 for s in at_tenths]
        run.progress_trace_s = [s.t for s in at_tenths]
        run.retried, run.failed = await db.fetchrow(OUTCOMES_SQL)
        if not self.args.rss_only:
            created = {mid: float(at) for mid, at in await db.fetch(CREATED_SQL)}
            stats = await self.rx.stats()
            pairs = zip(stats["ids"], stats["times"], strict=True)
            run.latency_s = percentiles([t - created[i] for i, t in pairs if i in created])

    async def pickup(self, dsn: str) -> dict[str, float]:
        """Publish single events into the idle daemon; return commit-to-receipt ms."""
        events, expected = self.args.pickup, self.args.pickup * self.args.fanout
        await self.rx.reset()
        committed: dict[str, float] = {}
        conn = await asyncpg.connect(dsn)
        try:
            for i in range(events):
                message_id = await conn.fetchval(
                    "SELECT dispatcher.publish($1, $2::jsonb)::text", PICKUP_TYPE, f'{{"n": {i}}}'
                )
                committed[message_id] = time.time()
                await asyncio.sleep(self.args.pickup_interval_ms / 1000)
        finally:
            await conn.close()
        for _ in range(100):
            if await self.rx.count() >= expected:
                break
            await asyncio.sleep(0.1)
        stats = await self.rx.stats()
        pairs = zip(stats["ids"], stats["times"], strict=True)
        ms = [(t - committed[i]) * 1000 for i, t in pairs if i in committed]
        if len(ms) < expected:
            raise BenchError(f"pickup: only {len(ms)}/{expected} deliveries arrived in 10 s")
        p50, p99 = percentiles(ms, (50, 99))
        interval = self.args.pickup_interval_ms
        return {
            "events": events,
            "interval_ms": interval,
            "p50_ms": p50,
            "p99_ms": p99,
            "max_ms": max(ms),
        }


async def benchmark(
    args: argparse.Namespace, admin_dsn: str, rx_url: str, rx_pid: int, workdir: Path
) -> dict[str, Any]:
    """Run every measurement; return the result as plain data."""
    env = daemon_env(args)
    settings = load_settings(env=env)
    load_before = os.getloadavg()
    runs: list[Run] = []
    pickup = None
    async with aiohttp.ClientSession() as session:
        bench = Bench(
            args, admin_dsn, ReceiverClient(session, rx_url, rx_pid), workdir, env, settings
        )
        server = await server_info(admin_dsn)
        for index in range(args.repeat):
            run, pickup = await bench.run_once(index, last=index == args.repeat - 1)
            runs.append(run)
            report.progress(report.run_line(run))
    return {
        "machine": {
            **report.machine(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "postgresql": server,
        "workload": {
            "events": args.events,
            "webhooks": args.webhooks,
            "fanout": args.fanout,
            "deliveries": bench.deliveries,
            "repeat": args.repeat,
            "rss_only": args.rss_only,
            "analyze_after_insert": args.analyze,
        },
        "settings": {k: getattr(settings, k) for k in report.SETTINGS_SHOWN},
        "runs": [asdict(run) for run in runs],
        "medians": report.medians(runs),
        "pickup": pickup,
        "daemon_exit_codes_ok": all(run.exit_code == 0 for run in runs),
    }


DEAD_TUPLES_SQL = (
    "SELECT n_dead_tup FROM pg_stat_user_tables"
    " WHERE schemaname = 'dispatcher' AND relname = 'deliveries'"
)


@contextlib.asynccontextmanager
async def holding_xmin(dsn: str, seconds: float) -> AsyncIterator[None]:
    """Hold a REPEATABLE READ snapshot open for `seconds` (or until the block ends).

    While it is held, VACUUM cannot remove the dead row versions every lease and outcome
    leaves behind: the queue-bloat case a lease query has to survive.
    """
    if not seconds:
        yield
        return
    conn = await asyncpg.connect(dsn)
    tx = conn.transaction(isolation="repeatable_read")
    await tx.start()
    await conn.fetchval("SELECT count(*) FROM dispatcher.deliveries")  # takes the snapshot

    async def release_later() -> None:
        await asyncio.sleep(seconds)
        await tx.rollback()

    releaser = asyncio.create_task(release_later())
    try:
        yield
    finally:
        releaser.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await releaser
        await conn.close()


def daemon_env(args: argparse.Namespace) -> dict[str, str]:
    """Build the daemon's environment: ours without DISPATCHER_*, plus what the options ask."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env[ENV_PREFIX + "LOG_LEVEL"] = "warning"
    if "allowed_networks" in SETTING_NAMES:
        # The SSRF guard blocks loopback unless told otherwise; the receiver is on 127.0.0.1.
        env[ENV_PREFIX + "ALLOWED_NETWORKS"] = "127.0.0.1/32"
    options: dict[str, object] = {
        "max_in_flight": args.max_in_flight,
        "per_endpoint_concurrency": args.per_endpoint_concurrency,
        "lease_batch_size": args.lease_batch_size,
        "flush_interval_s": args.flush_interval_s,
    }
    for item in args.set:
        key, _, value = item.partition("=")
        options[key.strip().lower()] = value
    env.update({ENV_PREFIX + k.upper(): str(v) for k, v in options.items() if v is not None})
    return env


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--events", type=int, default=100_000, help="events in the backlog (default 100000)")
    add("--webhooks", type=int, default=20, help="N webhooks and N event types (default 20)")
    add("--fanout", type=int, default=1, help="K webhooks subscribed per type, K <= N (default 1)")
    add("--repeat", type=int, help="ceiling + daemon runs (default 3; 1 with --rss-only)")
    add("--rss-only", action="store_true", help="one drain for peak RSS; no ceiling or pickup")
    add("--pickup", type=int, default=200, help="single publishes for pickup latency (0: skip)")
    add("--pickup-interval-ms", type=float, default=20.0)
    add("--max-in-flight", type=int, help="the daemon's global in-flight cap")
    add("--per-endpoint-concurrency", type=int)
    add("--lease-batch-size", type=int)
    add("--flush-interval-s", type=float)
    add("--set", action="append", default=[], metavar="KEY=VALUE", help="another setting")
    add("--analyze", action="store_true", help="ANALYZE after the bulk insert (default: don't)")
    add(
        "--hold-xmin-s",
        type=float,
        default=0.0,
        help="hold a snapshot open in another session for this long during each drain",
    )
    add("--rss-limit-mb", type=int, default=4096, help="stop if the daemon's RSS passes this")
    add("--json", action="store_true", help="print one JSON object instead of the tables")
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.rss_only else 3
    if not (1 <= args.fanout <= args.webhooks) or args.events < 1 or args.repeat < 1:
        parser.error("need --events >= 1, --repeat >= 1 and 1 <= --fanout <= --webhooks")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # clean up on SIGTERM as on Ctrl-C
    # A shell starting us in the background may have set SIGINT to be ignored; Ctrl-C must work.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with contextlib.ExitStack() as stack:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
            admin_dsn = os.environ.get(ENV_PREFIX + "DATABASE_URL") or stack.enter_context(
                embedded_server()
            )
            rx_url, rx_pid = stack.enter_context(receiver_process(workdir))
            result = uvloop.run(benchmark(args, admin_dsn, rx_url, rx_pid, workdir))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except (asyncpg.PostgresError, OSError) as exc:
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything it started has been stopped", file=sys.stderr)
        return 130
    print(
        orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
        if args.json
        else report.text(result)
    )
    return 0 if result["daemon_exit_codes_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
