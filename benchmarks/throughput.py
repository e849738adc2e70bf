"""Measure `dispatcher run` delivering to a local receiver, next to a bare client.

    # drain: a 100k backlog present before the daemon starts, over 20 endpoints
    .venv/bin/python -m benchmarks.throughput --events 100000 --webhooks 20 --repeat 3
    # drain, one endpoint; its per-endpoint cap lifted to max_in_flight (128 by default)
    .venv/bin/python -m benchmarks.throughput --webhooks 1 --set per_endpoint_concurrency=128
    # burst: the daemon idles 10 s on an empty table, then one INSERT adds 100k events
    .venv/bin/python -m benchmarks.throughput --scenario burst --webhooks 20 --idle-s 10
    .venv/bin/python -m benchmarks.throughput --scenario burst --webhooks 1 \\
        --set per_endpoint_concurrency=128
    # fairness: webhook A drains 100k; 20 single events go to webhook B meanwhile
    .venv/bin/python -m benchmarks.throughput --scenario fairness --probes 20 --probe-after 0.05
    # peak RSS over a 1M drain (one run, no ceiling, no pickup)
    .venv/bin/python -m benchmarks.throughput --rss-only --events 1000000
    # every scenario above but the RSS one, as the README's markdown table
    .venv/bin/python -m benchmarks.matrix

Each run gets a fresh database (on DISPATCHER_DATABASE_URL's server, else on a throwaway
embedded PostgreSQL). N webhooks point at benchmarks.receiver on 127.0.0.1, webhook i at path
/hooks/i; webhook i is subscribed to K event types (--fanout, default 1), so each event type
has K subscribers and the backlog is exactly events x K deliveries, inserted by one INSERT ...
SELECT over generate_series. A fairness run has two webhooks: A (/hooks/0) takes the backlog's
one type, B (/hooks/1) the probes' type.

Each of --repeat rounds first measures the ceiling (benchmarks.bare_client: the same bodies, no
database, and the daemon's effective in-flight cap on the backlog, min(max_in_flight,
per_endpoint_concurrency x webhooks sharing the backlog), since every webhook points at the one
receiver), then starts `dispatcher run` and times it until the receiver has every delivery and
no row is pending. A run that makes no progress for 20 s, whose pace cannot finish within
60 s + 2 ms a delivery, or whose RSS passes --rss-limit-mb, fails; the rounds before it are
still reported. Beside deliveries/s it reports the PostgreSQL CPU per delivery (from /proc; the
server must be on this machine): the daemon's backends, and the whole server. The backlog is
not ANALYZEd unless --analyze is given, as after a producer's bulk insert. After the last
round, idle pickup latency is measured by publishing single events one at a time. The daemon
sees only the DISPATCHER_* variables this script sets (the database URL, log level warning, and
--max-in-flight etc. or --set KEY=VALUE).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import Any, TypeVar

import aiohttp
import asyncpg
import orjson
import uvloop

from benchmarks import report
from benchmarks.processes import BenchError, ReceiverClient, Setup, bench_setup
from benchmarks.report import Run
from benchmarks.rounds import Bench, Pickup
from benchmarks.workload import server_info
from dispatcher.settings import ENV_PREFIX, Settings, load_settings

SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(Settings))
SCENARIOS = ("drain", "burst", "fairness")
Result = TypeVar("Result")


async def benchmark(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    """Run every round of one scenario; return the result as plain data.

    A round that fails ends the scenario: its error is in "error", the rounds before it stay.
    """
    env = daemon_env(args)
    settings = load_settings(env=env)
    load_before = os.getloadavg()
    runs: list[Run] = []
    pickup: Pickup | None = None
    error = None
    async with aiohttp.ClientSession() as session:
        rx = ReceiverClient(session, setup.rx_url, setup.rx_pid)
        bench = Bench(args, setup.admin_dsn, rx, setup.workdir, env, settings)
        server = await server_info(setup.admin_dsn)
        for index in range(args.repeat):
            try:
                run, pickup = await bench.run_once(index, last=index == args.repeat - 1)
            except BenchError as exc:
                error = f"{args.scenario} run {index + 1}/{args.repeat}: {exc}"
                report.progress(error)
                break
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
            "scenario": args.scenario,
            "events": args.events,
            "webhooks": args.webhooks,
            "fanout": args.fanout,
            "deliveries": bench.deliveries,
            "in_flight_cap": bench.in_flight_cap,
            "repeat": args.repeat,
            "rss_only": args.rss_only,
            "analyze_after_insert": args.analyze,
            "idle_s": args.idle_s,
            "probes": args.probes,
            "probe_after": args.probe_after,
            "probe_interval_ms": args.probe_interval_ms,
        },
        "settings": {k: getattr(settings, k) for k in report.SETTINGS_SHOWN},
        "runs": [asdict(run) for run in runs],
        "medians": report.medians(runs),
        "pickup": pickup,
        "error": error,
        "daemon_exit_codes_ok": all(run.exit_code == 0 for run in runs),
    }


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
    add("--scenario", choices=SCENARIOS, default="drain", help="(default drain)")
    add("--events", type=int, default=100_000, help="events in the backlog (default 100000)")
    add("--webhooks", type=int, help="N webhooks and N event types (default 20; fairness: 2)")
    add("--fanout", type=int, default=1, help="K webhooks subscribed per type, K <= N (default 1)")
    add("--repeat", type=int, help="ceiling + daemon rounds (default 3; 1 with --rss-only)")
    add("--rss-only", action="store_true", help="one drain for peak RSS; no ceiling or pickup")
    add("--pickup", type=int, default=200, help="single publishes for pickup latency (0: skip)")
    add("--pickup-interval-ms", type=float, default=20.0)
    add("--idle-s", type=float, default=10.0, help="burst: idle time before the INSERT")
    add("--probes", type=int, default=20, help="fairness: single events to B (default 20)")
    add("--probe-after", type=float, default=0.05, help="fairness: A's share received first")
    add("--probe-interval-ms", type=float, default=100.0, help="fairness: between probes")
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
    fairness = args.scenario == "fairness"
    if args.repeat is None:
        args.repeat = 1 if args.rss_only else 3
    if args.webhooks is None:
        args.webhooks = 2 if fairness else 20
    if not (1 <= args.fanout <= args.webhooks) or args.events < 1 or args.repeat < 1:
        parser.error("need --events >= 1, --repeat >= 1 and 1 <= --fanout <= --webhooks")
    if fairness and (args.webhooks, args.fanout, args.rss_only) != (2, 1, False):
        parser.error("--scenario fairness runs 2 webhooks at fan-out 1, without --rss-only")
    if fairness and (args.probes < 1 or not 0 <= args.probe_after < 1):
        parser.error("--scenario fairness needs --probes >= 1 and 0 <= --probe-after < 1")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cli_main(
    work: Callable[[Setup], Coroutine[Any, Any, Result]], show: Callable[[Result], int]
) -> int:
    """Set up, run `work`, and return `show`'s exit code for its result; 1 or 130 on failure."""
    signal.signal(signal.SIGTERM, _interrupt)  # clean up on SIGTERM as on Ctrl-C
    # A shell starting us in the background may have set SIGINT to be ignored; Ctrl-C must work.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with bench_setup(os.environ.get(ENV_PREFIX + "DATABASE_URL")) as setup:
            result = uvloop.run(work(setup))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except (asyncpg.PostgresError, OSError) as exc:
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything it started has been stopped", file=sys.stderr)
        return 130
    return show(result)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def show(result: dict[str, Any]) -> int:
        if args.json:
            print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        else:
            print(report.text(result))
        if result["error"]:
            print(f"benchmark failed: {result['error']}", file=sys.stderr)
            return 1
        return 0 if result["daemon_exit_codes_ok"] else 1

    return cli_main(lambda setup: benchmark(args, setup), show)


if __name__ == "__main__":
    sys.exit(main())
