"""Run `dispatcher run` under a steady offered load for minutes; print each minute's figures.

    DISPATCHER_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python -m benchmarks.soak --minutes 15 --hold-snapshot-at 5 --hold-minutes 5
    # a quick look at the mechanics
    .venv/bin/python -m benchmarks.soak --minutes 2 --hold-snapshot-at 1 --hold-minutes 0.5

A fresh migrated database (on DISPATCHER_DATABASE_URL's server, else on a throwaway embedded
PostgreSQL) gets --fast, --slow and --failing webhooks, each with an event type of its own,
pointing at a receiver in this process (benchmarks.soak_load.MixedReceiver): fast endpoints
answer 200 at once, slow ones after --slow-ms, failing ones 500 to --fail-ratio of their
requests, so those deliveries are retried. One daemon runs with its defaults except
allowed_networks = 127.0.0.0/8, log level info as JSON (its log events are counted per minute),
and a short retention: retention_s=120, retention_partition_s=60, retention_interval_s=15. A
daemon that does not know a setting ignores it; one that rejects a value (retention_s below an
hour, before partitioned history) runs with its default instead, and the report says so.
--set KEY=VALUE changes any setting.

Once the daemon has a database session, a publisher process (benchmarks.soak_load) offers
--rate deliveries a second for --minutes, in small INSERT INTO dispatcher.events batches paced
by a monotonic clock; shares: fast 2, slow 1, failing 2 per endpoint. Every minute from its
start, the report takes: offered, succeeded and all attempts per second (at the receiver),
latency p50/p99 (the event's created_at to its arrival at the fast and slow endpoints; the JSON
has every kind, the failing ones' retry delays included), pending rows and the oldest
due age (now() - min(run_at) over pending rows with no lease and run_at <= now()), the size of
every dispatcher table with its partitions (pg_partition_tree) and of the hot table
(deliveries_active once history is partitioned, else deliveries) with its dead rows, the leaf
partitions, the history kept (now() - the oldest event), CPU and RSS of the daemon, PostgreSQL
CPU of the daemon's backends, and the daemon's log events.

--hold-snapshot-at M --hold-minutes H: M minutes in, another session runs BEGIN ISOLATION LEVEL
REPEATABLE READ and a SELECT on dispatcher.deliveries (a snapshot that stops vacuum, and a lock
on every partition), keeps it H minutes, then commits. A minute at least half inside that
window counts as held; the summary compares held minutes with the ones not touched by it.

Retention has acted once the oldest event is younger than the first one published (an event
goes only after its deliveries); the summary compares the sizes of deliveries, attempts and
events at that minute with the end. A run takes --minutes plus about 20 s. The per-minute rows
and the summary go to --json-out (default soak-<UTC time>.json in the current directory).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psutil
import uvloop

from benchmarks import report
from benchmarks.dead_endpoint import wait_ready
from benchmarks.pgcpu import CpuSample, PgCpu
from benchmarks.processes import BenchError, Daemon, daemon_process, embedded_server, spawn
from benchmarks.soak_load import KINDS, MixedReceiver, receiving
from benchmarks.workload import (
    DELIVERIES_SQL,
    PENDING_SQL,
    db_name,
    fresh_database,
    server_info,
    with_database,
)
from dispatcher.errors import ConfigError
from dispatcher.settings import ENV_PREFIX, Settings, load_settings

MINUTE_S = 60.0
# The short retention the soak asks for; the partitioned history (retention_partition_s, and
# retention_s down to 60) lands separately, so each is dropped if this daemon rejects it.
RETENTION = {"retention_s": "120", "retention_partition_s": "60", "retention_interval_s": "15"}
WEIGHTS = {"fast": 2, "slow": 1, "failing": 2}  # offered share per endpoint of each kind
HELD_TARGET = 0.7  # held minutes' deliveries/s against the rest
# Samples come every 60 s; one retention interval (15 s) of jitter and the partition's own
# fill (60 s of a 120-180 s window) move sizes by about this much between comparable minutes.
FLAT_TOLERANCE = 0.25
# The tables retention keeps in check (each with its partitions); the rest stay small anyway.
RETAINED = ("deliveries", "attempts", "events")
BEHIND_S = 0.25  # the publisher trails its clock by more than this: it fell behind
SETTINGS_SHOWN = (*report.SETTINGS_SHOWN, "retry_schedule", "breaker_threshold", *RETENTION)
START_TIMEOUT_S = 30.0

CREATE_WEBHOOKS_SQL = """
INSERT INTO dispatcher.webhooks (service_name, url, event_types)
SELECT 'soak-' || kind || '-' || i, $1 || '/' || kind || '/' || i,
       ARRAY['soak.' || kind || '_' || i]
FROM unnest($2::text[], $3::int[]) AS w(kind, i)"""
# Each dispatcher table with all its partitions; a plain table has no tree, so it is its own.
TABLES_SQL = """
SELECT c.relname AS name,
       count(*) FILTER (WHERE t.level > 0 AND t.isleaf) AS partitions,
       sum(coalesce(pg_total_relation_size(t.relid), 0))::bigint AS total_bytes,
       sum(coalesce(pg_indexes_size(t.relid), 0))::bigint AS index_bytes
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL (
    SELECT relid, isleaf, level FROM pg_partition_tree(c.oid)
    UNION ALL
    SELECT c.oid, true, 0 WHERE c.relkind = 'r'
) AS t
WHERE n.nspname = 'dispatcher' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
GROUP BY c.relname
ORDER BY c.relname"""
RELATIONS_SQL = """
SELECT c.relname AS name, coalesce(parent.relname, '') AS parent,
       c.relkind = 'p' AS partitioned,
       coalesce(pg_total_relation_size(c.oid), 0) AS total_bytes,
       coalesce(pg_indexes_size(c.oid), 0) AS index_bytes,
       coalesce(s.n_live_tup, 0) AS live, coalesce(s.n_dead_tup, 0) AS dead,
       coalesce(s.autovacuum_count, 0) AS autovacuums
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
LEFT JOIN pg_class parent ON parent.oid = i.inhparent
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE n.nspname = 'dispatcher' AND c.relkind IN ('r', 'p')
ORDER BY c.relname"""
DUE_AGE_SQL = """
SELECT coalesce(extract(epoch FROM now() - min(run_at)), 0)::float8 FROM dispatcher.deliveries
WHERE status = 'pending' AND lease_token IS NULL AND run_at <= now()"""
# What the database as a whole does per minute: WAL written, transactions committed, sessions.
# The WAL position is server-wide (other databases' writes count too); this run is alone here.
PRIMARY_SQL = """
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8 AS lsn,
       (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()) AS commits,
       (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()) AS sessions"""
EVENTS_SQL = """
SELECT extract(epoch FROM min(created_at))::float8, extract(epoch FROM now())::float8
FROM dispatcher.events"""


def daemon_env(dsn: str, sets: list[str]) -> tuple[dict[str, str], list[str]]:
    """Build the daemon's environment; return it and notes on retention settings left out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env[ENV_PREFIX + "DATABASE_URL"] = dsn
    options = {"log_level": "info", "log_format": "json", "allowed_networks": "127.0.0.0/8"}
    options.update(RETENTION)
    asked = dict(item.partition("=")[::2] for item in sets)
    asked = {k.strip().lower(): v for k, v in asked.items()}
    options.update(asked)
    known = {f.name for f in dataclasses.fields(Settings)}
    notes = [
        f"this daemon has no setting {key}: passed anyway, it has no effect"
        for key in RETENTION
        if key not in known and key not in asked
    ]
    while True:
        trial = {**env, **{ENV_PREFIX + k.upper(): v for k, v in options.items()}}
        try:
            load_settings(env=trial)
        except ConfigError as exc:
            ours = [k for k in RETENTION if k in options and k not in asked]
            bad = next((k for k in ours if str(exc).startswith(f"invalid value for {k}:")), None)
            if bad is None:
                raise BenchError(f"the daemon would refuse its settings: {exc}") from None
            notes.append(f"this daemon refuses {bad}={options.pop(bad)} ({exc}): left at default")
            continue
        return trial, notes


def endpoints(args: argparse.Namespace) -> list[tuple[str, int]]:
    counts = {"fast": args.fast, "slow": args.slow, "failing": args.failing}
    return [(kind, i) for kind in KINDS for i in range(counts[kind])]


def offered_per_endpoint(args: argparse.Namespace) -> dict[str, float]:
    shares = sum(WEIGHTS[kind] for kind, _ in endpoints(args))
    return {kind: args.rate * WEIGHTS[kind] / shares for kind in KINDS}


def overlap(start: float, end: float, window: tuple[float, float] | None) -> float:
    """Return the share of [start, end) inside `window`."""
    if window is None or end <= start:
        return 0.0
    inside = min(end, window[1]) - max(start, window[0])
    return max(0.0, inside) / (end - start)


@dataclasses.dataclass
class Sampler:
    """Take one row of the soak's figures at the end of each minute."""

    db: asyncpg.Pool
    pg: PgCpu
    daemon: Daemon
    rx: MixedReceiver
    status_file: Path
    t0: float  # the publisher's start, epoch seconds
    last_t: float = 0.0
    last_cpu_s: float = 0.0
    last_pg: CpuSample | None = None
    published: int = 0
    status_read: int = 0
    log_read: int = 0
    first_event_at: float | None = None
    last_lsn: float | None = None
    last_commits: int = 0

    async def start(self) -> None:
        self.last_t = self.t0
        self.last_cpu_s = _cpu_s(self.daemon.proc.pid)
        self.last_pg = await self.pg.sample()
        async with self.db.acquire() as conn:
            primary = await conn.fetchrow(PRIMARY_SQL)
        self.last_lsn, self.last_commits = primary["lsn"], primary["commits"]

    async def sample(self, minute: int) -> dict[str, Any]:
        now = time.time()
        span = now - self.last_t
        window = self.rx.take_window()
        cpu = psutil.Process(self.daemon.proc.pid)
        cpu_s, rss = _cpu_s(cpu.pid), cpu.memory_info().rss
        pg = await self.pg.sample()
        pg_daemon_s, pg_server_s = _pg_seconds(self.last_pg, pg)
        async with self.db.acquire() as conn:
            tables = {r["name"]: dict(r) for r in await conn.fetch(TABLES_SQL)}
            relations = [dict(r) for r in await conn.fetch(RELATIONS_SQL)]
            pending = await conn.fetchval(PENDING_SQL)
            due_age_s = await conn.fetchval(DUE_AGE_SQL)
            oldest_event_at, db_now = await conn.fetchrow(EVENTS_SQL)
            primary = await conn.fetchrow(PRIMARY_SQL)
            wal_bytes = 0.0 if self.last_lsn is None else primary["lsn"] - self.last_lsn
        if self.first_event_at is None:
            self.first_event_at = oldest_event_at
        by_name = {r["name"]: r for r in relations}
        hot = by_name.get("deliveries_active") or by_name["deliveries"]
        published, lag_s = self.publisher_status()
        row = {
            "minute": minute,
            "t_s": now - self.t0,
            "span_s": span,
            "offered_per_s": (published - self.published) / span,
            "publisher_lag_s": lag_s,
            "ok_per_s": window["all"]["ok"] / span,
            "attempts_per_s": window["all"]["requests"] / span,
            "latency": window,
            "pending": pending,
            "oldest_due_s": due_age_s,
            "history_s": None if oldest_event_at is None else db_now - oldest_event_at,
            "history_trimmed": oldest_event_at is not None
            and self.first_event_at is not None
            and oldest_event_at > self.first_event_at,
            "hot": hot,
            "tables": tables,
            "relations": relations,
            "partitions": sum(1 for r in relations if r["parent"] and not r["partitioned"]),
            "daemon_cpu_pct": (cpu_s - self.last_cpu_s) / span * 100,
            "daemon_rss_mb": rss / 2**20,
            "pg_daemon_cpu_pct": None if pg_daemon_s is None else pg_daemon_s / span * 100,
            "pg_server_cpu_pct": None if pg_server_s is None else pg_server_s / span * 100,
            "log_events": self.log_events(),
            "wal_mb_per_s": wal_bytes / span / 2**20,
            "commits_per_s": (primary["commits"] - self.last_commits) / span
            if self.last_lsn is not None
            else None,
            "sessions": primary["sessions"],
        }
        self.last_lsn, self.last_commits = primary["lsn"], primary["commits"]
        self.last_t, self.last_cpu_s, self.last_pg, self.published = now, cpu_s, pg, published
        return row

    def publisher_status(self) -> tuple[int, float]:
        """Return the events published so far and the most the publisher lagged since last time."""
        lines = _status_lines(self.status_file)
        fresh = lines[self.status_read :]
        self.status_read = len(lines)
        counts = [s["published"] for s in fresh if "published" in s]
        lag = max((s["lag_s"] for s in fresh if "lag_s" in s), default=0.0)
        return (counts[-1] if counts else self.published), lag

    def log_events(self) -> dict[str, int]:
        """Count the daemon's log events since the last call, by name (and level if not info)."""
        with self.daemon.log.open("rb") as log:
            log.seek(self.log_read)
            text = log.read()
        complete = text[: text.rfind(b"\n") + 1]
        self.log_read += len(complete)
        counts: dict[str, int] = {}
        for line in complete.splitlines():
            try:
                entry = orjson.loads(line)
                name = str(entry.get("event", "?"))
                if entry.get("level", "info") != "info":
                    name += f" ({entry.get('level')})"
            except orjson.JSONDecodeError:
                name = "(text)"
            counts[name] = counts.get(name, 0) + 1
        return counts


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _pg_seconds(before: CpuSample | None, after: CpuSample) -> tuple[float | None, float | None]:
    """Return the CPU seconds of the daemon's backends and of the whole server in between."""
    if before is None or before.server_s is None or after.server_s is None:
        return None, None
    daemon = sum(s - before.daemon_s.get(pid, 0.0) for pid, s in after.daemon_s.items())
    return daemon, after.server_s[0] - before.server_s[0]


async def hold_snapshot(dsn: str, t0: float, at_s: float, hold_s: float) -> dict[str, Any]:
    """At t0 + at_s, open a REPEATABLE READ transaction, read deliveries, keep it hold_s."""
    await asyncio.sleep(max(0.0, t0 + at_s - time.time()))
    conn = await asyncpg.connect(dsn)
    try:
        tx = conn.transaction(isolation="repeatable_read")
        await tx.start()
        opened = time.time()
        rows = await conn.fetchval(DELIVERIES_SQL)
        report.progress(
            f"  snapshot held from {opened - t0:.0f} s ({rows:,} deliveries read in"
            f" {time.time() - opened:.2f} s), for {hold_s:g} s"
        )
        await asyncio.sleep(max(0.0, opened + hold_s - time.time()))
        await tx.commit()
        closed = time.time()
        report.progress(f"  snapshot released at {closed - t0:.0f} s")
    finally:
        await conn.close()
    return {"opened_s": opened - t0, "closed_s": closed - t0, "rows_read": rows}


def _status_lines(status: Path) -> list[dict[str, Any]]:
    """Return the publisher's complete status lines so far."""
    text = status.read_bytes() if status.exists() else b""
    return [orjson.loads(line) for line in text[: text.rfind(b"\n") + 1].splitlines()]


def _failed(proc: subprocess.Popen[bytes], stderr: Path, what: str) -> BenchError:
    tail = "\n".join(stderr.read_text(errors="replace").splitlines()[-20:])
    return BenchError(f"{what} exited with code {proc.returncode}:\n{tail}")


async def publisher_started(proc: subprocess.Popen[bytes], status: Path, stderr: Path) -> float:
    """Wait for the publisher's first status line; return its start time (epoch seconds)."""
    for _ in range(int(START_TIMEOUT_S / 0.05)):
        if first := _status_lines(status)[:1]:
            return float(first[0]["started"])
        if proc.poll() is not None:
            raise _failed(proc, stderr, "the publisher")
        await asyncio.sleep(0.05)
    raise BenchError(f"the publisher did not start in {START_TIMEOUT_S:g} s")


async def soak(args: argparse.Namespace, admin_dsn: str, workdir: Path) -> dict[str, Any]:
    """Run the soak on a fresh database; return every minute's row and the run's facts."""
    name = db_name(0)
    dsn = with_database(admin_dsn, name)
    env, notes = daemon_env(dsn, args.set)
    settings = load_settings(env=env)
    total_s = args.minutes * MINUTE_S
    hold = None
    if args.hold_snapshot_at is not None:
        start = args.hold_snapshot_at * MINUTE_S
        hold = (start, start + args.hold_minutes * MINUTE_S)
    result: dict[str, Any] = {
        "machine": {**report.machine(), "loadavg_before": os.getloadavg()},
        "postgresql": await server_info(admin_dsn),
        "settings": {k: getattr(settings, k, None) for k in SETTINGS_SHOWN},
        "notes": notes,
        "workload": workload(args),
        "daemon_code": report.daemon_code(),
        "minutes": [],
        "hold": None,
        "error": None,
    }
    status, pub_err = workdir / "publisher.jsonl", workdir / "publisher.err"
    types = [f"soak.{kind}_{i}" for kind, i in endpoints(args) for _ in range(WEIGHTS[kind])]
    async with (
        receiving(args.slow_ms / 1000, args.fail_ratio) as (rx_url, rx),
        fresh_database(admin_dsn, name) as db,
    ):
        kinds, numbers = zip(*endpoints(args), strict=True)
        await db.execute(CREATE_WEBHOOKS_SQL, rx_url, list(kinds), list(numbers))
        grace_s = settings.shutdown_grace_s + 10
        async with daemon_process(env, workdir / "daemon.log", grace_s) as daemon:
            await wait_ready(daemon, db)
            with pub_err.open("wb") as err:
                argv = ["--dsn", dsn, "--rate", str(args.rate), "--seconds", str(total_s)]
                argv += ["--types", ",".join(types), "--status-file", str(status)]
                argv += ["--tick-ms", str(args.tick_ms)]
                pub = spawn([sys.executable, "-m", "benchmarks.soak_load", *argv], stderr=err)
            holder: asyncio.Task[dict[str, Any]] | None = None
            try:
                t0 = await publisher_started(pub, status, pub_err)
                if hold is not None:
                    holder = asyncio.create_task(hold_snapshot(dsn, t0, hold[0], hold[1] - hold[0]))
                sampler = Sampler(db, await PgCpu.attach(db), daemon, rx, status, t0)
                await sampler.start()
                report.progress(HEAD)
                for minute in range(1, math.ceil(args.minutes) + 1):
                    end = min(minute * MINUTE_S, total_s)
                    while (left := t0 + end - time.time()) > 0:
                        daemon.check_running()
                        if pub.poll() not in (None, 0):
                            raise _failed(pub, pub_err, "the publisher")
                        await asyncio.sleep(min(1.0, left))
                    row = await sampler.sample(minute)
                    # By the nominal minute, so a sample a few ms late does not change its class.
                    row["held"] = overlap((minute - 1) * MINUTE_S, end, hold)
                    result["minutes"].append(row)
                    report.progress(row_line(row))
                result["publisher"] = await publisher_end(pub, status, pub_err)
                if holder is not None:
                    result["hold"] = await hold_result(holder)
            except BenchError as exc:
                result["error"] = str(exc)
                report.progress(f"soak stopped: {exc}")
            finally:
                if holder is not None:
                    holder.cancel()
                    with contextlib.suppress(asyncio.CancelledError, asyncpg.PostgresError):
                        await holder
                await asyncio.to_thread(_stop, pub)
        result["exit_code"] = daemon.exit_code
        result["log_warnings"] = above_info(daemon)
    result["machine"]["loadavg_after"] = os.getloadavg()
    result["summary"] = summarize(result["minutes"], args)
    return result


def above_info(daemon: Daemon) -> list[str]:
    """Return the daemon's JSON log lines above level info.

    Its text lines (the start-up banner; a traceback would be one too) are counted per minute
    as "(text)"; the exit code tells a crash.
    """
    found = []
    for line in daemon.log_lines():
        with contextlib.suppress(orjson.JSONDecodeError):
            if orjson.loads(line).get("level") not in ("debug", "info"):
                found.append(line)
    return found


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)


async def publisher_end(
    proc: subprocess.Popen[bytes], status: Path, stderr: Path
) -> dict[str, Any]:
    """Wait briefly for the publisher to finish; return its totals and how far it lagged."""
    for _ in range(100):
        if proc.poll() is not None:
            break
        await asyncio.sleep(0.1)
    lines = _status_lines(status)
    done = next((s for s in lines if s.get("done")), None)
    lags = [s["lag_s"] for s in lines if "lag_s" in s]
    if proc.returncode not in (None, 0):
        raise _failed(proc, stderr, "the publisher")
    return {
        "finished": done is not None,
        "published": done["published"] if done else max(s.get("published", 0) for s in lines),
        "elapsed_s": done["elapsed_s"] if done else None,
        "max_lag_s": max(lags, default=0.0),
        "seconds_behind": sum(1 for lag in lags if lag > BEHIND_S),
    }


async def hold_result(holder: asyncio.Task[dict[str, Any]]) -> dict[str, Any] | None:
    """Return the held snapshot's times, or None if the run ended before it was released."""
    if not holder.done():
        report.progress("  the run ended before the snapshot was released: it is cut short")
        return None
    if (exc := holder.exception()) is not None:
        raise BenchError(f"the held snapshot failed: {type(exc).__name__}: {exc}")
    return holder.result()


def workload(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "minutes": args.minutes,
        "rate": args.rate,
        "tick_ms": args.tick_ms,
        "endpoints": {"fast": args.fast, "slow": args.slow, "failing": args.failing},
        "offered_per_endpoint": offered_per_endpoint(args),
        "weights": WEIGHTS,
        "slow_ms": args.slow_ms,
        "fail_ratio": args.fail_ratio,
        "hold_snapshot_at": args.hold_snapshot_at,
        "hold_minutes": args.hold_minutes,
    }


def summarize(minutes: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Worst and best minute, held minutes against the rest, sizes after retention vs the end."""
    if not minutes:
        return {}
    worst = min(minutes, key=lambda m: m["ok_per_s"])
    best = max(minutes, key=lambda m: m["ok_per_s"])
    held = [m for m in minutes if m["held"] >= 0.5]
    rest = [m for m in minutes if m["held"] == 0]
    summary: dict[str, Any] = {
        "worst_minute": worst["minute"],
        "worst_ok_per_s": worst["ok_per_s"],
        "best_minute": best["minute"],
        "best_ok_per_s": best["ok_per_s"],
        "worst_over_best": worst["ok_per_s"] / best["ok_per_s"] if best["ok_per_s"] else None,
        "held_minutes": [m["minute"] for m in held],
        "held_ratio": None,
    }
    if held and rest:
        held_rate = statistics.mean(m["ok_per_s"] for m in held)
        rest_rate = statistics.mean(m["ok_per_s"] for m in rest)
        summary.update(
            held_ok_per_s=held_rate,
            rest_ok_per_s=rest_rate,
            held_ratio=held_rate / rest_rate if rest_rate else None,
            held_p99_ms=_mean_p99(held),
            rest_p99_ms=_mean_p99(rest),
        )
    first = next((m for m in minutes if m["history_trimmed"]), None)
    summary["first_trimmed_minute"] = first["minute"] if first else None
    if first is not None and first is not minutes[-1]:
        last = minutes[-1]
        sizes = {
            name: (first["tables"].get(name, {}).get("total_bytes"), size["total_bytes"])
            for name, size in last["tables"].items()
            if name in RETAINED
        }
        sizes[f"hot table ({last['hot']['name']})"] = (
            first["hot"]["total_bytes"],
            last["hot"]["total_bytes"],
        )
        summary["sizes"] = sizes
        summary["flat"] = all(
            b is not None and e <= b * (1 + FLAT_TOLERANCE) for b, e in sizes.values()
        )
    return summary


def _mean_p99(minutes: list[dict[str, Any]]) -> float | None:
    values = [m["latency"]["first_try"]["p99_ms"] for m in minutes]
    present = [v for v in values if v is not None]
    return statistics.mean(present) if present else None


HEAD = (
    f"{'min':>4} {'held':>4} {'offer/s':>8} {'ok/s':>7} {'tries/s':>7} {'p50 ms':>7}"
    f" {'p99 ms':>7} {'pending':>8} {'due age s':>9} {'hot MB':>7} {'hot dead':>8}"
    f" {'deliv MB':>8} {'attmp MB':>8} {'event MB':>8} {'parts':>5} {'history s':>9}"
    f" {'CPU %':>5} {'PG %':>5} {'RSS MB':>6} {'WAL MB/s':>8} {'xact/s':>6}  log events"
)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def row_line(m: dict[str, Any]) -> str:
    """Format one minute's row under HEAD."""
    lat, tables = m["latency"]["first_try"], m["tables"]
    events = ", ".join(f"{name} {n}" for name, n in sorted(m["log_events"].items()))
    return (
        f"{m['minute']:>4} {m['held']:>4.0%} {m['offered_per_s']:>8,.0f} {m['ok_per_s']:>7,.0f}"
        f" {m['attempts_per_s']:>7,.0f} {_num(lat['p50_ms'], ',.0f'):>7}"
        f" {_num(lat['p99_ms'], ',.0f'):>7} {m['pending']:>8,} {m['oldest_due_s']:>9.1f}"
        f" {_mb(m['hot']['total_bytes']):>7} {m['hot']['dead']:>8,}"
        f" {_mb(tables.get('deliveries', {}).get('total_bytes')):>8}"
        f" {_mb(tables.get('attempts', {}).get('total_bytes')):>8}"
        f" {_mb(tables.get('events', {}).get('total_bytes')):>8} {m['partitions']:>5}"
        f" {_num(m['history_s'], '.0f'):>9} {m['daemon_cpu_pct']:>5.0f}"
        f" {_num(m['pg_daemon_cpu_pct'], '.0f'):>5} {m['daemon_rss_mb']:>6.0f}"
        f" {m['wal_mb_per_s']:>8.2f} {_num(m['commits_per_s'], ',.0f'):>6}  {events}"
    )


def text(result: dict[str, Any], json_path: Path, elapsed_s: float) -> str:
    m, pg, w, s = result["machine"], result["postgresql"], result["workload"], result["settings"]
    where = "embedded, temp dir" if pg["embedded"] else "DISPATCHER_DATABASE_URL"
    per = w["offered_per_endpoint"]
    ep = w["endpoints"]
    lines = [
        "webhook-dispatcher soak benchmark",
        f"machine   {m['cpu']}, {m['nproc']} CPUs, {m['ram_gib']} GiB RAM, Linux {m['kernel']};"
        f" load average 1/5/15 min before {_load(m['loadavg_before'])},"
        f" after {_load(m['loadavg_after'])}",
        f"postgres  {pg['server_version']} ({where}), shared_buffers={pg['shared_buffers']}"
        f" fsync={pg['fsync']} synchronous_commit={pg['synchronous_commit']}"
        f" autovacuum={pg.get('autovacuum', '?')}",
        f"daemon    {result['daemon_code']}; one instance",
        "settings  " + " ".join(f"{k}={'-' if v is None else v}" for k, v in s.items()),
        *(f"NOTE      {note}" for note in result["notes"]),
        f"workload  {w['rate']:,.0f} deliveries/s offered for {w['minutes']:g} min, one INSERT"
        f" every {w['tick_ms']:g} ms: {ep['fast']} fast endpoints x {per['fast']:,.0f}/s,"
        f" {ep['slow']} slow ({w['slow_ms']:g} ms) x {per['slow']:,.0f}/s, {ep['failing']}"
        f" failing ({w['fail_ratio']:.0%} answered 500) x {per['failing']:,.0f}/s",
    ]
    if w["hold_snapshot_at"] is not None:
        lines.append(
            f"          a REPEATABLE READ snapshot held from minute {w['hold_snapshot_at']:g}"
            f" for {w['hold_minutes']:g} min"
        )
    lines += ["", HEAD, *(row_line(row) for row in result["minutes"]), ""]
    lines += summary_lines(result)
    lines += relation_lines(result)
    if result["error"]:
        lines.append(f"\nFAILED: {result['error']}")
    lines += [
        "",
        "offer/s: events published (= deliveries, fan-out 1); ok/s: 200s at the receiver;"
        " tries/s: every request it got. p50/p99: the event's created_at to its arrival, at the"
        " fast and slow endpoints (the JSON has each kind, and the failing ones' retry delays).",
        "due age: now() - min(run_at) of pending rows with no lease and run_at <= now(); hot:"
        " the table the lease reads; parts: leaf partitions; history: now() - the oldest event;"
        " CPU %: the daemon; PG %: its backends.",
        f"The per-minute rows are in {json_path}; the soak took {elapsed_s / 60:.1f} min.",
    ]
    return "\n".join(lines)


def _load(averages: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in averages)


def summary_lines(result: dict[str, Any]) -> list[str]:
    s, minutes = result["summary"], result["minutes"]
    if not s:
        return ["no minute was measured"]
    lines = [
        f"deliveries/s (200s): worst minute {s['worst_minute']} {s['worst_ok_per_s']:,.0f},"
        f" best minute {s['best_minute']} {s['best_ok_per_s']:,.0f}:"
        f" worst/best {_num(s['worst_over_best'], '.2f')}"
    ]
    if s["held_ratio"] is not None:
        met = "met" if s["held_ratio"] >= HELD_TARGET else "**missed**"
        lines.append(
            f"held snapshot (minutes {', '.join(map(str, s['held_minutes']))}):"
            f" {s['held_ok_per_s']:,.0f}/s against {s['rest_ok_per_s']:,.0f}/s in the minutes"
            f" it did not touch: ratio {s['held_ratio']:.2f} (target >= {HELD_TARGET}: {met});"
            f" p99 {_num(s['held_p99_ms'], ',.0f')} ms against {_num(s['rest_p99_ms'], ',.0f')} ms"
        )
    elif result["workload"]["hold_snapshot_at"] is not None:
        lines.append("held snapshot: no minute half inside it and one untouched, no ratio")
    hold = result["hold"]
    if hold:
        lines.append(
            f"  the snapshot was open from {hold['opened_s']:.0f} s to {hold['closed_s']:.0f} s"
            " after the publisher started"
        )
    first = s["first_trimmed_minute"]
    if first is None:
        keep = result["settings"].get("retention_s")
        lines.append(
            f"retention: nothing was removed during the run (retention_s={keep}), so sizes"
            " only grow: there is no after-retention size to compare"
        )
    elif "sizes" not in s:
        lines.append(f"retention first removed history by minute {first}, the last one")
    else:
        verdict = "flat" if s["flat"] else "NOT flat"
        lines.append(
            f"sizes after the first retention cycle (minute {first}) -> the end (minute"
            f" {minutes[-1]['minute']}), {verdict} (within {FLAT_TOLERANCE:.0%}):"
        )
        for name, (before, end) in s["sizes"].items():
            growth = f"{end / before - 1:+.0%}" if before else "new"
            lines.append(f"  {name:<28} {_mb(before):>8} -> {_mb(end):>8} MB  {growth}")
    pub = result.get("publisher")
    if pub:
        pace = (
            f"FELL BEHIND: lagged more than {BEHIND_S} s in {pub['seconds_behind']} seconds"
            if pub["seconds_behind"]
            else "kept pace"
        )
        took = f" in {pub['elapsed_s']:.1f} s" if pub["elapsed_s"] else " (did not finish)"
        lines.append(
            f"publisher: {pub['published']:,} events{took}; {pace}"
            f" (largest lag {pub['max_lag_s']:.2f} s beyond one tick)"
        )
    warnings = result.get("log_warnings", [])
    by_event: dict[str, int] = {}
    for line in warnings:
        name = str(orjson.loads(line).get("event"))
        by_event[name] = by_event.get(name, 0) + 1
    said = ", ".join(f"{name} {n:,}" for name, n in by_event.items())
    lines.append(
        f"daemon exit code after SIGTERM {result.get('exit_code')};"
        f" {len(warnings):,} log lines above info{': ' + said if said else ''}"
        + (
            " (attempt_failed at warning: a delivery that failed for good)"
            if "attempt_failed" in by_event
            else ""
        )
    )
    return lines


def relation_lines(result: dict[str, Any]) -> list[str]:
    """Every dispatcher relation's size at the first trimmed minute (if any) and the end."""
    minutes = result["minutes"]
    if not minutes:
        return []
    first_no = result["summary"].get("first_trimmed_minute")
    shown = [m for m in minutes if m["minute"] == first_no and m is not minutes[-1]]
    shown.append(minutes[-1])
    width = 32
    lines = [
        "",
        f"{'relation (parent)':<52}"
        + "".join(f"{'minute ' + str(m['minute']):>{width}}" for m in shown),
        f"{'':<52}" + f"{'total MB / index MB / dead rows':>{width}}" * len(shown),
    ]
    by_minute = [{r["name"]: r for r in m["relations"]} for m in shown]
    parents = {name: r["parent"] for rows in by_minute for name, r in rows.items()}
    for name, parent in parents.items():
        cells = [_relation_cell(rows.get(name)) for rows in by_minute]
        label = f"{name} ({parent})" if parent else name
        lines.append(f"{label:<52}" + "".join(f"{cell:>{width}}" for cell in cells))
    return lines


def _relation_cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    return f"{_mb(r['total_bytes'])} / {_mb(r['index_bytes'])} / {r['dead']:,}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--minutes", type=float, default=15.0, help="how long to publish (default 15)")
    add("--rate", type=float, default=1000.0, help="deliveries offered per second (default 1000)")
    add("--tick-ms", type=float, default=50.0, help="one INSERT per tick (default 50)")
    add("--fast", type=int, default=8, help="fast endpoints (default 8)")
    add("--slow", type=int, default=2, help="slow endpoints (default 2)")
    add("--failing", type=int, default=2, help="failing endpoints (default 2)")
    add("--slow-ms", type=float, default=200.0, help="a slow endpoint's delay (default 200)")
    add("--fail-ratio", type=float, default=0.5, help="failing endpoints' 500s (default 0.5)")
    add("--hold-snapshot-at", type=float, metavar="M", help="open the snapshot M minutes in")
    add("--hold-minutes", type=float, default=5.0, help="and keep it this long (default 5)")
    add("--set", action="append", default=[], metavar="KEY=VALUE", help="a daemon setting")
    add("--json-out", type=Path, help="where the JSON goes (default soak-<UTC time>.json)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.tick_ms <= 0 or args.slow_ms < 0:
        parser.error("need --minutes, --rate and --tick-ms > 0 and --slow-ms >= 0")
    if min(args.fast, args.slow, args.failing) < 0 or args.fast + args.slow + args.failing < 1:
        parser.error("need at least one endpoint, and no negative count")
    if not 0 <= args.fail_ratio <= 1:
        parser.error("--fail-ratio is a share between 0 and 1")
    at = args.hold_snapshot_at
    if at is not None and not (0 <= at < args.minutes and args.hold_minutes > 0):
        parser.error("need 0 <= --hold-snapshot-at < --minutes and --hold-minutes > 0")
    if args.json_out is None:
        args.json_out = Path(f"soak-{datetime.now(UTC):%Y%m%dT%H%MZ}.json")
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
            result = uvloop.run(soak(args, dsn, workdir))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except (asyncpg.PostgresError, OSError) as exc:
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything it started has been stopped", file=sys.stderr)
        return 130
    args.json_out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2, default=str))
    print(text(result, args.json_out, time.monotonic() - started))
    return 0 if result["exit_code"] == 0 and not result["error"] else 1


if __name__ == "__main__":
    sys.exit(main())
