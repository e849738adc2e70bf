"""Measure deliveries/s and CPU per delivery with 1, 2 and 4 daemon instances on one database.

    DISPATCHER_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python -m benchmarks.instances                 # 1, 2, 4 instances x 3 rounds
    .venv/bin/python -m benchmarks.instances --events 20000 --repeat 1 --instances 1,2

Each round gets a fresh database (on DISPATCHER_DATABASE_URL's server, else on a throwaway
embedded PostgreSQL) with --webhooks webhooks at fan-out 1, all pointing at benchmarks.receiver
(fast: 200 at once, in its own process), as in benchmarks.throughput. K instances start at once,
with default settings except allowed_networks = 127.0.0.1/32 and log level info as JSON (each
logs how many rows it leased when it stops), plus --set KEY=VALUE. Once every instance has its
LISTEN session, they idle --idle-s; then one INSERT ... SELECT adds --events events (the burst
of `throughput --scenario burst`) and the clock starts. A round ends when the receiver has every
delivery and none is pending; one that makes no progress for 20 s, or cannot finish within
60 s + 2 ms a delivery, fails, and the rounds before it are still reported. Rounds are
interleaved (1, 2, 4, 1, 2, 4, ...) so a slow spell of the machine touches every count.

Per count, the medians of --repeat rounds:
- deliveries/s: receipts / (last receipt - first receipt), at the receiver;
- daemon CPU (utime + stime of each instance from /proc/<pid>/stat, from the INSERT until all
  is delivered) per 1,000 deliveries: all instances together over every delivery, and each
  instance over the rows it leased (instances in start order);
- PostgreSQL CPU per 1,000 deliveries (benchmarks.pgcpu; the server must be on this machine):
  the instances' backends, and the whole server less the INSERT's backend. Milliseconds per
  1,000 deliveries are microseconds per delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from benchmarks import report
from benchmarks.pgcpu import PgCpu, process_cpu_s
from benchmarks.processes import BenchError, Daemon, ReceiverClient, Setup, daemon_process
from benchmarks.throughput import SETTING_NAMES, cli_main
from benchmarks.watch import SAMPLE_EVERY_S, STALL_S, deadline_s
from benchmarks.workload import (
    CREATE_WEBHOOKS_SQL,
    DELIVERIES_SQL,
    INSERT_EVENTS_SQL,
    PENDING_SQL,
    db_name,
    fresh_database,
    server_info,
    with_database,
)
from dispatcher.settings import ENV_PREFIX, load_settings
from dispatcher.store import APPLICATION_NAME

READY_TIMEOUT_S = 30.0
LISTENERS_SQL = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = $1"""


@dataclass
class Round:
    """One burst drained by `instances` daemons."""

    instances: int
    deliveries: int
    deliveries_per_s: float = 0.0
    wall_s: float = 0.0  # the INSERT -> all delivered and none pending
    enqueue_s: float = 0.0
    cpu_s: list[float] = field(default_factory=list)  # each instance's, INSERT -> done
    leased: list[int | None] = field(default_factory=list)  # from each one's "stopped" line
    pg_daemon_us: float | None = None
    pg_server_us: float | None = None
    pg_exited_us: float | None = None
    pg_backends_gone: int = 0
    other_clients: int = 0
    duplicates: int = 0
    exit_codes: list[int | None] = field(default_factory=list)
    log_warnings: int = 0
    daemon_code: str = ""

    @property
    def cpu_ms_per_1k(self) -> float:
        return sum(self.cpu_s) / self.deliveries * 1e6

    @property
    def cpu_ms_per_1k_each(self) -> list[float | None]:
        """Each instance's CPU over the rows it leased; None if it leased none or did not say."""
        return [
            cpu / n * 1e6 if n else None for cpu, n in zip(self.cpu_s, self.leased, strict=True)
        ]

    @property
    def shares(self) -> list[float | None]:
        return [None if n is None else n / self.deliveries for n in self.leased]


def daemon_env(dsn: str, sets: list[str]) -> dict[str, str]:
    """Build the instances' environment: ours without DISPATCHER_*, plus what is asked."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    options = {"log_level": "info", "log_format": "json"}
    if "allowed_networks" in SETTING_NAMES:
        # The SSRF guard blocks loopback unless told otherwise; the receiver is on 127.0.0.1.
        options["allowed_networks"] = "127.0.0.1/32"
    for item in sets:
        key, _, value = item.partition("=")
        options[key.strip().lower()] = value
    env.update({ENV_PREFIX + k.upper(): v for k, v in options.items()})
    env[ENV_PREFIX + "DATABASE_URL"] = dsn
    return env


async def wait_listening(daemons: list[Daemon], db: asyncpg.Pool) -> None:
    """Wait until every instance has its LISTEN session: each will hear the burst's NOTIFY."""
    for _ in range(int(READY_TIMEOUT_S / 0.1)):
        for daemon in daemons:
            daemon.check_running()
        if await db.fetchval(LISTENERS_SQL, APPLICATION_NAME + "-listen") >= len(daemons):
            return
        await asyncio.sleep(0.1)
    raise daemons[0].failed(f"not every instance was listening after {READY_TIMEOUT_S:g} s")


async def enqueue(db: asyncpg.Pool, events: int, webhooks: int) -> tuple[float, float]:
    """Insert the burst with one INSERT ... SELECT; return its seconds and its backend's CPU s."""
    async with db.acquire() as conn:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        before = process_cpu_s(backend) or 0.0
        start = time.monotonic()
        await conn.execute(INSERT_EVENTS_SQL, events, webhooks)
        took = time.monotonic() - start
        producer_s = (process_cpu_s(backend) or before) - before
        got = await conn.fetchval(DELIVERIES_SQL)
    if got != events:
        raise BenchError(f"fan-out created {got} deliveries, not {events}")
    return took, producer_s


async def wait_delivered(
    daemons: list[Daemon], rx: ReceiverClient, db: asyncpg.Pool, expected: int
) -> float:
    """Wait until `expected` receipts arrived and nothing is pending; return the seconds taken."""
    started = time.monotonic()
    limit_s = deadline_s(expected)
    last_count, last_change = -1, started
    while True:
        for daemon in daemons:
            daemon.check_running()
        count = await rx.count()
        now = time.monotonic()
        if count >= expected and await db.fetchval(PENDING_SQL) == 0:
            return now - started
        if count != last_count:
            last_count, last_change = count, now
        elif now - last_change > STALL_S:
            raise daemons[0].failed(f"nothing arrived for {STALL_S:g} s; {count:,}/{expected:,}")
        if now - started > limit_s:
            raise daemons[0].failed(f"only {count:,}/{expected:,} arrived in {limit_s:.0f} s")
        await asyncio.sleep(SAMPLE_EVERY_S)


def stopped_report(log: Path) -> tuple[int | None, int]:
    """Return the rows an instance said it leased when it stopped, and its lines above info."""
    leased, warnings = None, 0
    for line in log.read_bytes().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # the start-up banner
        if entry.get("event") == "stopped":
            leased = int(entry["leased"])
        if entry.get("level") not in ("debug", "info"):
            warnings += 1
    return leased, warnings


async def run_round(
    args: argparse.Namespace, setup: Setup, rx: ReceiverClient, index: int, count: int
) -> Round:
    """Drain one burst with `count` instances on a fresh database."""
    name = db_name(index)
    env = daemon_env(with_database(setup.admin_dsn, name), args.set)
    grace_s = load_settings(env=env).shutdown_grace_s + 10
    rnd = Round(count, args.events, daemon_code=report.daemon_code())
    async with fresh_database(setup.admin_dsn, name) as db:
        await db.execute(CREATE_WEBHOOKS_SQL, rx.base, args.webhooks, 1)
        pg = await PgCpu.attach(db)
        await rx.reset()
        async with contextlib.AsyncExitStack() as stack:
            daemons = [
                await stack.enter_async_context(
                    daemon_process(env, setup.workdir / f"daemon-{index}-{i}.log", grace_s)
                )
                for i in range(count)
            ]
            await wait_listening(daemons, db)
            await asyncio.sleep(args.idle_s)
            cpu_before = [process_cpu_s(d.proc.pid) or 0.0 for d in daemons]
            pg_before = await pg.sample()
            rnd.enqueue_s, producer_s = await enqueue(db, args.events, args.webhooks)
            rnd.wall_s = await wait_delivered(daemons, rx, db, args.events)
            cpu_after = [process_cpu_s(d.proc.pid) or 0.0 for d in daemons]
            use = pg.use(pg_before, await pg.sample(), args.events, producer_s)
    rnd.cpu_s = [after - before for before, after in zip(cpu_before, cpu_after, strict=True)]
    rnd.pg_daemon_us, rnd.pg_server_us, rnd.pg_exited_us = (
        use.daemon_us,
        use.server_us,
        use.exited_us,
    )
    rnd.pg_backends_gone, rnd.other_clients = use.backends_gone, use.other_clients
    rnd.exit_codes = [d.exit_code for d in daemons]
    stopped = [stopped_report(d.log) for d in daemons]
    rnd.leased = [leased for leased, _ in stopped]
    rnd.log_warnings = sum(warnings for _, warnings in stopped)
    summary = await rx.summary()
    rnd.deliveries_per_s = summary["count"] / (summary["last"] - summary["first"])
    rnd.duplicates = summary["count"] - args.events
    return rnd


async def benchmark(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    """Run every round, interleaving the instance counts; return the result as plain data."""
    load_before = os.getloadavg()
    settings = load_settings(env=daemon_env("postgresql://unused", args.set))
    rounds: list[Round] = []
    error = None
    async with aiohttp.ClientSession() as session:
        rx = ReceiverClient(session, setup.rx_url, setup.rx_pid)
        server = await server_info(setup.admin_dsn)
        index = 0
        for repeat in range(args.repeat):
            for count in args.instances:
                label = f"round {repeat + 1}/{args.repeat}, {count} instance(s)"
                report.progress(f"{label}: {args.events:,} deliveries")
                try:
                    rnd = await run_round(args, setup, rx, index, count)
                except BenchError as exc:
                    error = f"{label}: {exc}"
                    report.progress(error)
                    break
                finally:
                    index += 1
                rounds.append(rnd)
                report.progress(
                    f"  {rnd.deliveries_per_s:,.0f} deliveries/s, daemon CPU"
                    f" {rnd.cpu_ms_per_1k:,.0f} ms / 1,000, exit {rnd.exit_codes}"
                )
            if error:
                break
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
            "instances": args.instances,
            "repeat": args.repeat,
            "idle_s": args.idle_s,
        },
        "settings": {k: getattr(settings, k) for k in report.SETTINGS_SHOWN},
        "rounds": [
            {
                **asdict(r),
                "cpu_ms_per_1k": r.cpu_ms_per_1k,
                "cpu_ms_per_1k_each": r.cpu_ms_per_1k_each,
                "shares": r.shares,
            }
            for r in rounds
        ],
        "medians": {
            str(k): medians([r for r in rounds if r.instances == k]) for k in args.instances
        },
        "error": error,
        "exit_codes_ok": all(code == 0 for r in rounds for code in r.exit_codes),
    }


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def medians(rounds: list[Round]) -> dict[str, Any]:
    """Return one count's medians over its rounds; per-instance lists by start order."""
    if not rounds:
        return {}
    each = list(zip(*(r.cpu_ms_per_1k_each for r in rounds), strict=True))
    shares = list(zip(*(r.shares for r in rounds), strict=True))
    pg_total = [
        None if r.pg_server_us is None else r.pg_server_us + r.cpu_ms_per_1k for r in rounds
    ]
    return {
        "rounds": len(rounds),
        "deliveries_per_s": _median([r.deliveries_per_s for r in rounds]),
        "all_deliveries_per_s": [r.deliveries_per_s for r in rounds],
        "cpu_ms_per_1k": _median([r.cpu_ms_per_1k for r in rounds]),
        "cpu_ms_per_1k_each": [_median(list(values)) for values in each],
        "shares": [_median(list(values)) for values in shares],
        "pg_daemon_ms_per_1k": _median([r.pg_daemon_us for r in rounds]),
        "pg_server_ms_per_1k": _median([r.pg_server_us for r in rounds]),
        "pg_exited_ms_per_1k": _median([r.pg_exited_us for r in rounds]),
        "daemons_and_server_ms_per_1k": _median(pg_total),
        "wall_s": _median([r.wall_s for r in rounds]),
        "duplicates": sum(r.duplicates for r in rounds),
        "pg_backends_gone": sum(r.pg_backends_gone for r in rounds),
        "other_clients": max(r.other_clients for r in rounds),
        "log_warnings": sum(r.log_warnings for r in rounds),
        "exit_codes": [code for r in rounds for code in r.exit_codes],
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _each(values: list[float | None], spec: str) -> str:
    return " / ".join(_fmt(v, spec) for v in values) or "-"


# (label, how a count's medians are shown)
ROWS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("deliveries/s (median)", lambda m: _fmt(m["deliveries_per_s"], ",.0f")),
    ("  each round", lambda m: _each(m["all_deliveries_per_s"], ",.0f")),
    ("daemon CPU ms / 1,000: all instances", lambda m: _fmt(m["cpu_ms_per_1k"], ",.0f")),
    ("  each, over the rows it leased", lambda m: _each(m["cpu_ms_per_1k_each"], ",.0f")),
    ("share of the rows each leased", lambda m: _each(m["shares"], ".0%")),
    ("PostgreSQL CPU ms / 1,000: backends", lambda m: _fmt(m["pg_daemon_ms_per_1k"], ",.0f")),
    ("PostgreSQL CPU ms / 1,000: server", lambda m: _fmt(m["pg_server_ms_per_1k"], ",.0f")),
    ("  of which: exited processes", lambda m: _fmt(m["pg_exited_ms_per_1k"], ",.0f")),
    ("daemons + server CPU ms / 1,000", lambda m: _fmt(m["daemons_and_server_ms_per_1k"], ",.0f")),
    ("INSERT -> all delivered s", lambda m: _fmt(m["wall_s"], ".1f")),
    ("duplicates (all rounds)", lambda m: f"{m['duplicates']:,}"),
    ("daemon log lines above info", lambda m: f"{m['log_warnings']:,}"),
    ("backends that exited mid-run", lambda m: f"{m['pg_backends_gone']}"),
    ("other databases' sessions (most)", lambda m: f"{m['other_clients']}"),
    ("exit codes after SIGTERM", lambda m: ",".join(str(c) for c in set(m["exit_codes"]))),
]


def text(result: dict[str, Any], elapsed_s: float) -> str:
    m, pg, w, s = result["machine"], result["postgresql"], result["workload"], result["settings"]
    where = "embedded, temp dir" if pg["embedded"] else "DISPATCHER_DATABASE_URL"
    codes = {f"round {i + 1}": r["daemon_code"] for i, r in enumerate(result["rounds"])}
    lines = [
        "webhook-dispatcher instances benchmark",
        f"machine   {m['cpu']}, {m['nproc']} CPUs, {m['ram_gib']} GiB RAM, Linux {m['kernel']};"
        f" load average 1/5/15 min before {_load(m['loadavg_before'])},"
        f" after {_load(m['loadavg_after'])}",
        f"postgres  {pg['server_version']} ({where}), shared_buffers={pg['shared_buffers']}"
        f" fsync={pg['fsync']} synchronous_commit={pg['synchronous_commit']}"
        f" autovacuum={pg.get('autovacuum', '?')}",
        "daemon    " + report.daemon_codes(codes),
        f"workload  a burst of {w['events']:,} events over {w['webhooks']} webhooks (fan-out 1)"
        f" after the instances idled {w['idle_s']:g} s; one receiver process on 127.0.0.1;"
        f" {w['repeat']} interleaved round(s) per count",
        "settings  " + " ".join(f"{k}={v}" for k, v in s.items()) + " (each instance)",
        "",
    ]
    counts = [k for k in w["instances"] if result["medians"][str(k)]]
    width = max([16] + [len(fmt(result["medians"][str(k)])) + 2 for k in counts for _, fmt in ROWS])
    heads = [f"{k} instance{'s' if k > 1 else ''}" for k in counts]
    lines.append(" " * 38 + "".join(f"{h:>{width}}" for h in heads))
    for label, fmt in ROWS:
        cells = [fmt(result["medians"][str(k)]) for k in counts]
        lines.append(f"{label:<38}" + "".join(f"{c:>{width}}" for c in cells))
    if result["error"]:
        lines.append(f"\nFAILED: {result['error']}")
    lines += [
        "",
        "deliveries/s = receipts / (last receipt - first receipt), at the receiver. CPU from"
        " /proc, from the INSERT until all is delivered (polled every 0.2 s); ms per 1,000"
        " deliveries = µs per delivery. Each instance's figures are in start order, medians by"
        " position; its rows leased are what it logged when it stopped.",
        f"The benchmark took {elapsed_s / 60:.1f} min.",
    ]
    return "\n".join(lines)


def _load(averages: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in averages)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.instances",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--instances", default="1,2,4", help="instance counts, comma-separated (default 1,2,4)")
    add("--events", type=int, default=100_000, help="events in the burst (default 100000)")
    add("--webhooks", type=int, default=20, help="webhooks, one event type each (default 20)")
    add("--repeat", type=int, default=3, help="rounds per count (default 3)")
    add("--idle-s", type=float, default=2.0, help="idle time before the INSERT (default 2)")
    add("--set", action="append", default=[], metavar="KEY=VALUE", help="a daemon setting")
    add("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    try:
        args.instances = [int(part) for part in args.instances.split(",") if part.strip()]
    except ValueError:
        parser.error("--instances takes counts like 1,2,4")
    if not args.instances or min(args.instances) < 1:
        parser.error("--instances takes counts of at least 1")
    if args.events < 1 or args.webhooks < 1 or args.repeat < 1 or args.idle_s < 0:
        parser.error("need --events, --webhooks and --repeat >= 1 and --idle-s >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()

    def show(result: dict[str, Any]) -> int:
        if args.json:
            print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        else:
            print(text(result, time.monotonic() - started))
        if result["error"]:
            print(f"benchmark failed: {result['error']}", file=sys.stderr)
            return 1
        return 0 if result["exit_codes_ok"] else 1

    return cli_main(lambda setup: benchmark(args, setup), show)


if __name__ == "__main__":
    sys.exit(main())
