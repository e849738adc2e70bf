"""Run one round of a scenario: the bare-client ceiling, then `dispatcher run`, on a fresh database.

drain     the backlog is in the table before the daemon starts
burst     the daemon idles on the empty table for --idle-s, then the backlog arrives in one
          INSERT ... SELECT; the clock starts at that INSERT
fairness  webhook A gets the backlog; once A has received --probe-after of it, --probes single
          events go to webhook B (another event type, another path), each timed from commit
          to receipt
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from benchmarks import report
from benchmarks.pgcpu import CpuSample, PgCpu, process_cpu_s
from benchmarks.processes import (
    BenchError,
    Daemon,
    ReceiverClient,
    daemon_process,
    run_bare_client,
)
from benchmarks.report import Run, percentiles
from benchmarks.watch import (
    Sample,
    cpu_s,
    deadline_s,
    delay_figures,
    delays_ms,
    publish_singles,
    wait_for_count,
    watch_delivery,
)
from benchmarks.workload import (
    BACKLOG_TYPE,
    CREATE_WEBHOOKS_SQL,
    CREATED_SQL,
    DEAD_TUPLES_SQL,
    DELIVERIES_SQL,
    INSERT_EVENTS_SQL,
    OUTCOMES_SQL,
    PAYLOAD_SQL,
    PROBE_TYPE,
    db_name,
    fresh_database,
    holding_xmin,
    with_database,
)
from dispatcher.settings import ENV_PREFIX, Settings

MIN_CEILING_REQUESTS = 30_000
READY_TIMEOUT_S = 30.0
Pickup = dict[str, float]


@dataclass(frozen=True)
class Started:
    """Where a run's clock and PostgreSQL CPU count start."""

    t0: float  # time.monotonic(): the daemon's start, or the burst's INSERT
    pg_cpu: CpuSample
    producer_s: float  # CPU the backlog's INSERT used after pg_cpu was taken (burst)


@dataclass
class Bench:
    args: argparse.Namespace
    admin_dsn: str
    rx: ReceiverClient
    workdir: Path
    env: dict[str, str]  # the daemon's
    settings: Settings  # what the daemon will load from env

    @property
    def fairness(self) -> bool:
        return bool(self.args.scenario == "fairness")

    @property
    def backlog(self) -> int:
        return int(self.args.events * self.args.fanout)

    @property
    def deliveries(self) -> int:
        return self.backlog + (self.args.probes if self.fairness else 0)

    @property
    def backlog_types(self) -> int:
        """How many event types (and so webhooks, at fan-out 1) the backlog is spread over."""
        return 1 if self.fairness else int(self.args.webhooks)

    @property
    def in_flight_cap(self) -> int:
        """The daemon's effective cap on the backlog: every webhook points at the one receiver."""
        s = self.settings
        return min(s.max_in_flight, s.per_endpoint_concurrency * self.backlog_types)

    async def run_once(self, index: int, last: bool) -> tuple[Run, Pickup | None]:
        """Measure the ceiling, then the daemon on a fresh database; after the last, pickup."""
        args = self.args
        label = f"{args.scenario} run {index + 1}/{args.repeat}"
        run = Run(self.deliveries)
        async with fresh_database(self.admin_dsn, db_name(index)) as db:
            await db.execute(CREATE_WEBHOOKS_SQL, self.rx.base, args.webhooks, args.fanout)
            if not args.rss_only:
                requests = max(self.backlog, MIN_CEILING_REQUESTS)
                report.progress(f"{label}: ceiling, {requests:,} requests")
                sql = f"SELECT ({PAYLOAD_SQL})::text FROM (SELECT 12345 AS g) AS s"
                await self.ceiling(run, requests, await db.fetchval(sql))
            if args.scenario != "burst":
                await self.enqueue(db, run)
            report.progress(f"{label}: daemon, {self.deliveries:,} deliveries")
            pickup = await self.daemon_phase(index, db, run, with_pickup=last)
        return run, pickup

    async def enqueue(self, db: asyncpg.Pool, run: Run) -> float:
        """Insert the backlog with one INSERT ... SELECT; return the CPU s its backend used."""
        async with db.acquire() as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            before = process_cpu_s(backend) or 0.0
            start = time.monotonic()
            await conn.execute(INSERT_EVENTS_SQL, self.args.events, self.backlog_types)
            run.enqueue_s = time.monotonic() - start
            if self.args.analyze:
                await conn.execute("ANALYZE dispatcher.deliveries, dispatcher.events")
            got = await conn.fetchval(DELIVERIES_SQL)
            producer_s = (process_cpu_s(backend) or before) - before
        if got != self.backlog:
            raise BenchError(f"fan-out created {got} deliveries, not {self.backlog}")
        return producer_s

    async def daemon_phase(
        self, index: int, db: asyncpg.Pool, run: Run, with_pickup: bool
    ) -> Pickup | None:
        """Start the daemon, time the delivery, maybe measure pickup, then stop it."""
        dsn = with_database(self.admin_dsn, db_name(index))
        env = {**self.env, ENV_PREFIX + "DATABASE_URL": dsn}
        grace_s = self.settings.shutdown_grace_s + 10
        pg = await PgCpu.attach(db)
        pickup = None
        await self.rx.reset()
        before = await pg.sample()
        run.daemon_code = report.daemon_code()
        daemon: Daemon | None = None
        try:
            async with (
                holding_xmin(dsn, self.args.hold_xmin_s),
                daemon_process(env, self.workdir / f"daemon-{index}.log", grace_s) as daemon,
            ):
                t0, producer_s = daemon.started, 0.0
                if self.args.scenario == "burst":
                    await self.idle(daemon, pg)
                    before, t0 = await pg.sample(), time.monotonic()
                    producer_s = await self.enqueue(db, run)
                started = Started(t0, before, producer_s)
                samples, committed = await self.deliver(daemon, db, pg, dsn, run, started)
                await self.record(run, samples, db, committed)
                if self.args.hold_xmin_s:
                    run.dead_tuples = await db.fetchval(DEAD_TUPLES_SQL)
                if with_pickup and not self.args.rss_only and self.args.pickup:
                    report.progress(f"pickup: {self.args.pickup} single publishes")
                    pickup = await self.pickup(dsn)
        except BenchError as exc:
            if daemon is None or daemon.exit_code is None:
                raise
            killed = daemon.exit_code == -signal.SIGKILL
            how = f" (SIGKILL: SIGTERM did not stop it in {grace_s:.0f} s)" if killed else ""
            raise BenchError(
                f"{exc}\nthe daemon then exited with {daemon.exit_code}{how}"
            ) from None
        assert daemon is not None
        logged = daemon.log_lines()
        run.exit_code, run.log_lines = daemon.exit_code, len(logged)
        run.log_sample = [line[:300] for line in logged[:3]]
        return pickup

    async def idle(self, daemon: Daemon, pg: PgCpu) -> None:
        """Wait until the daemon has a database session, then let it idle for --idle-s."""
        for _ in range(int(READY_TIMEOUT_S / 0.1)):
            daemon.check_running()
            if await pg.daemon_sessions():
                break
            await asyncio.sleep(0.1)
        else:
            raise daemon.failed(f"the daemon opened no database session in {READY_TIMEOUT_S} s")
        report.progress(f"  the daemon idles {self.args.idle_s:g} s on the empty table")
        await asyncio.sleep(self.args.idle_s)
        daemon.check_running()

    async def deliver(
        self, daemon: Daemon, db: asyncpg.Pool, pg: PgCpu, dsn: str, run: Run, started: Started
    ) -> tuple[list[Sample], dict[str, float]]:
        """Watch until all is delivered, probing B meanwhile in a fairness run; fill the CPU use.

        Return the samples and the probes' commit times by message id.
        """
        rx_cpu = cpu_s(self.rx.pid)
        probes = asyncio.create_task(self.probe(dsn)) if self.fairness else None
        try:
            samples = await watch_delivery(
                daemon, self.rx, db, self.deliveries, started.t0, self.args.rss_limit_mb
            )
            use = pg.use(started.pg_cpu, await pg.sample(), run.deliveries, started.producer_s)
            received = samples[-1].received
            run.receiver_cpu_s_per_1k = (cpu_s(self.rx.pid) - rx_cpu) / received * 1000
            committed = await probes if probes else {}
        finally:
            if probes:
                probes.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probes
        run.pg_daemon_us, run.pg_server_us = use.daemon_us, use.server_us
        run.pg_exited_us = use.exited_us
        run.pg_backends_gone, run.other_clients = use.backends_gone, use.other_clients
        return samples, committed

    async def probe(self, dsn: str) -> dict[str, float]:
        """Once A has received --probe-after of its backlog, publish --probes events to B."""
        threshold = math.ceil(self.backlog * self.args.probe_after)
        if not await wait_for_count(self.rx, threshold, deadline_s(self.deliveries)):
            raise BenchError(f"fairness: A never reached {threshold:,} receipts")
        interval = self.args.probe_interval_ms
        return await publish_singles(dsn, PROBE_TYPE, self.args.probes, interval)

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

    async def record(
        self, run: Run, samples: list[Sample], db: asyncpg.Pool, committed: dict[str, float]
    ) -> None:
        """Fill `run` from the samples, the receiver's records and the deliveries table."""
        done = samples[-1]
        cpu_before_first = max((s.cpu_s for s in samples if s.received == 0), default=0.0)
        summary = await self.rx.summary()
        count = summary["count"]
        run.deliveries_per_s = count / (summary["last"] - summary["first"])
        run.wall_s = done.t
        run.first_receipt_s = next(s.t for s in samples if s.received > 0)
        run.peak_rss_mb = max(s.rss for s in samples) / 2**20
        run.end_rss_mb = done.rss / 2**20
        run.cpu_total_s = done.cpu_s
        run.cpu_s_per_1k = (done.cpu_s - cpu_before_first) / count * 1000
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
            pairs = list(zip(stats["ids"], stats["times"], strict=True))
            run.latency_s = percentiles([t - created[i] for i, t in pairs if i in created])
            if committed:
                self.record_fairness(run, pairs, delays_ms(stats, committed), committed)
        run.ratio = run.deliveries_per_s / run.ceiling_rps if run.ceiling_rps else None

    def record_fairness(
        self,
        run: Run,
        pairs: list[tuple[str, float]],
        probe_ms: list[float],
        committed: dict[str, float],
    ) -> None:
        """Rate A on its own receipts; time B's probes."""
        a_times = [t for i, t in pairs if i not in committed]
        run.deliveries_per_s = len(a_times) / (a_times[-1] - a_times[0])
        figures = delay_figures(probe_ms, len(committed), "fairness probes")
        run.probe_ms = [figures["p50_ms"], figures["p99_ms"], figures["max_ms"]]
        run.probes_during_backlog = max(committed.values()) < a_times[-1]

    async def pickup(self, dsn: str) -> Pickup:
        """Publish single events into the idle daemon; return commit-to-receipt ms."""
        events, expected = self.args.pickup, self.args.pickup * self.args.fanout
        interval = self.args.pickup_interval_ms
        await self.rx.reset()
        committed = await publish_singles(dsn, BACKLOG_TYPE, events, interval)
        await wait_for_count(self.rx, expected, timeout_s=10.0)
        ms = delays_ms(await self.rx.stats(), committed)
        return {"events": events, "interval_ms": interval, **delay_figures(ms, expected, "pickup")}
