"""Run the README's benchmark matrix and print it as one markdown table.

    .venv/bin/python -m benchmarks.matrix                              # 100k events, 3 rounds
    .venv/bin/python -m benchmarks.matrix --events 20000 --repeat 1    # a quick look

Each row is one benchmarks.throughput scenario, run as --repeat interleaved rounds (ceiling,
daemon, ceiling, daemon, ...) in one process with one receiver; the table shows medians. The
rows and their throughput.py arguments (plus --events, --repeat, --pickup and any --set):

    drain, 20 endpoints   --scenario drain --webhooks 20   (then idle pickup: --pickup events)
    drain, 1 endpoint     --scenario drain --webhooks 1 --set per_endpoint_concurrency=M
    burst, 20 endpoints   --scenario burst --idle-s 10 --webhooks 20
    burst, 1 endpoint     --scenario burst --idle-s 10 --webhooks 1 \
                              --set per_endpoint_concurrency=M
    fairness, A + B       --scenario fairness

M is the daemon's max_in_flight (128 unless --set changes it), so one endpoint may use the whole
in-flight cap, as the ceiling does. A row whose round fails says so in its notes and the matrix
goes on. The 1M-delivery RSS drain is not in the matrix (about 5 minutes on its own):
.venv/bin/python -m benchmarks.throughput --rss-only --events 1000000.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from benchmarks import report
from benchmarks.processes import Setup
from benchmarks.throughput import benchmark, cli_main, daemon_env, parse_args
from dispatcher.settings import load_settings

ONE_ENDPOINT = "--webhooks 1 --set per_endpoint_concurrency={max_in_flight}"
# (scenario, endpoints as shown, throughput.py arguments)
ROWS = [
    ("drain", "20", "--scenario drain --webhooks 20"),
    ("drain", "1", "--scenario drain " + ONE_ENDPOINT),
    ("burst", "20", "--scenario burst --idle-s {idle_s:g} --webhooks 20"),
    ("burst", "1", "--scenario burst --idle-s {idle_s:g} " + ONE_ENDPOINT),
    ("fairness", "A 1 + B 1", "--scenario fairness"),
]
HEAD = (
    "| scenario | endpoints | deliveries/s | ceiling/s | ratio"
    " | PG CPU µs/delivery (daemon backends) | PG CPU µs/delivery (whole server) | notes |\n"
    "|---|---|---:|---:|---:|---:|---:|---|"
)


def row_argv(args: argparse.Namespace, row_args: str, first: bool) -> list[str]:
    """Return throughput.py's arguments for one row of the matrix."""
    common = ["--events", str(args.events), "--repeat", str(args.repeat)]
    common += ["--pickup", str(args.pickup if first else 0)]
    for item in args.set:
        common += ["--set", item]
    max_in_flight = load_settings(env=daemon_env(parse_args(common))).max_in_flight
    row = row_args.format(max_in_flight=max_in_flight, idle_s=args.idle_s)
    return common + row.split()


async def run_matrix(args: argparse.Namespace, setup: Setup) -> list[dict[str, Any]]:
    """Run every row; return each row's throughput result, with its argv."""
    results = []
    for index, (scenario, endpoints, row_args) in enumerate(ROWS):
        argv = row_argv(args, row_args, first=index == 0)
        report.progress(f"== {scenario}, {endpoints} endpoint(s): throughput {' '.join(argv)}")
        result = await benchmark(parse_args(argv), setup)
        results.append({**result, "argv": argv, "endpoints": endpoints})
    return results


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def notes(result: dict[str, Any]) -> str:
    """Say what a reader of the row needs to know: rounds, caps, anything odd."""
    w, runs = result["workload"], result["runs"]
    said = [f"{len(runs)}/{w['repeat']} rounds of {w['deliveries']:,} deliveries"]
    said.append(f"in-flight cap {w['in_flight_cap']}")
    if w["scenario"] == "burst":
        said.append(f"idle {w['idle_s']:g} s first")
    if w["scenario"] == "fairness":
        said.append("deliveries/s is A's")
        if any(r["probes_during_backlog"] is False for r in runs):
            said.append("some B probes came after A's drain: use more --events")
    odd = {
        "duplicates": sum(r["duplicates"] for r in runs),
        "not succeeded": sum(r["failed"] for r in runs),
        "daemon backends exited mid-run": sum(r["pg_backends_gone"] for r in runs),
        "sessions on other databases": max((r["other_clients"] for r in runs), default=0),
    }
    said += [f"{what}: {n}" for what, n in odd.items() if n]
    exited, server = result["medians"]["pg_exited_us"], result["medians"]["pg_server_us"]
    if exited and server and exited > 0.1 * server:
        said.append(f"whole server includes {exited:,.0f} µs of processes that exited mid-run")
    if not result["daemon_exit_codes_ok"]:
        said.append("exit codes " + "/".join(str(r["exit_code"]) for r in runs))
    if result["error"]:
        said.append("FAILED: " + result["error"].splitlines()[0][:200])
    return "; ".join(said).replace("|", "/")


def table(results: list[dict[str, Any]], elapsed_s: float) -> str:
    """Return the matrix as markdown: the context, the table, fairness and pickup lines."""
    first = results[0]
    code_by_run = {
        f"{r['workload']['scenario']} {r['endpoints']} run {i + 1}": run["daemon_code"]
        for r in results
        for i, run in enumerate(r["runs"])
    }
    m, pg, s = first["machine"], first["postgresql"], first["settings"]
    lines = [
        f"{m['cpu']}, {m['nproc']} CPUs, {m['ram_gib']} GiB RAM, Linux {m['kernel']};"
        f" PostgreSQL {pg['server_version']} (fsync={pg['fsync']})",
        "daemon: " + report.daemon_codes(code_by_run),
        "settings: " + " ".join(f"{k}={v}" for k, v in s.items()),
        "",
        HEAD,
    ]
    for r in results:
        med = r["medians"]
        cells = [
            r["workload"]["scenario"],
            r["endpoints"],
            _fmt(med["deliveries_per_s"], ",.0f"),
            _fmt(med["ceiling_rps"], ",.0f"),
            _fmt(med["ratio"], ".2f"),
            _fmt(med["pg_daemon_us"], ",.0f"),
            _fmt(med["pg_server_us"], ",.0f"),
            notes(r),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for r in results:
        w, med = r["workload"], r["medians"]
        if w["scenario"] == "fairness" and med["probe_p50_ms"] is not None:
            lines.append(
                f"fairness: B's commit -> receipt while A drains ({w['probes']} events"
                f" {w['probe_interval_ms']:g} ms apart, from {w['probe_after']:.0%} of A on;"
                f" p50/p99 median of rounds, max of all): p50 {med['probe_p50_ms']:,.1f} ms,"
                f" p99 {med['probe_p99_ms']:,.1f} ms, max {med['probe_max_ms']:,.1f} ms"
            )
        if r["pickup"]:
            p = r["pickup"]
            lines.append(
                f"idle pickup, commit -> receipt ({p['events']} events {p['interval_ms']:g} ms"
                f" apart, after the last {w['scenario']} round): p50 {p['p50_ms']:.1f} ms,"
                f" p99 {p['p99_ms']:.1f} ms, max {p['max_ms']:.1f} ms"
            )
    lines += ["", "Each row alone:"]
    for r in results:
        lines.append(f"- `.venv/bin/python -m benchmarks.throughput {' '.join(r['argv'])}`")
    lines.append(f"\nThe matrix took {elapsed_s / 60:.1f} min.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.matrix",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--events", type=int, default=100_000, help="events per round (default 100000)")
    add("--repeat", type=int, default=3, help="rounds per row (default 3)")
    add("--idle-s", type=float, default=10.0, help="burst: idle time before the INSERT")
    add("--pickup", type=int, default=200, help="single publishes for idle pickup (0: skip)")
    add("--set", action="append", default=[], metavar="KEY=VALUE", help="a daemon setting")
    add("--json", action="store_true", help="print every row's result as JSON too")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def show(results: list[dict[str, Any]]) -> int:
        if args.json:
            print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
        print(table(results, time.monotonic() - started))
        return 1 if any(r["error"] or not r["daemon_exit_codes_ok"] for r in results) else 0

    return cli_main(lambda setup: run_matrix(args, setup), show)


if __name__ == "__main__":
    sys.exit(main())
