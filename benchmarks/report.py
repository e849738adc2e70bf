"""What a benchmark run measured, and how it is printed: plain-text tables or JSON data."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil

import dispatcher

SETTINGS_SHOWN = (
    "max_in_flight",
    "per_endpoint_concurrency",
    "lease_batch_size",
    "flush_interval_s",
    "flush_max_outcomes",
    "pool_max_size",
    "poll_interval_s",
    "request_timeout_s",
)


@dataclass
class Run:
    """One ceiling + daemon measurement pair."""

    deliveries: int
    enqueue_s: float = 0.0
    ceiling_rps: float | None = None
    ceiling_cpu_s_per_1k: float | None = None
    ceiling_body_bytes: float | None = None
    ceiling_receiver_cpu_s_per_1k: float | None = None
    deliveries_per_s: float = 0.0
    ratio: float | None = None
    wall_s: float = 0.0
    first_receipt_s: float = 0.0
    latency_s: list[float] = field(default_factory=list)  # p50, p95, p99
    peak_rss_mb: float = 0.0
    end_rss_mb: float = 0.0
    cpu_s_per_1k: float = 0.0
    cpu_total_s: float = 0.0
    receiver_cpu_s_per_1k: float = 0.0
    body_bytes: float = 0.0
    duplicates: int = 0
    dead_tuples: int | None = None  # with --hold-xmin-s: deliveries' dead rows at the end
    pg_daemon_us: float | None = None  # PostgreSQL CPU per delivery: the daemon's backends
    pg_server_us: float | None = None  # ... and every process of the server
    pg_exited_us: float | None = None  # of pg_server_us: processes that exited mid-run
    pg_backends_gone: int = 0  # the daemon's backends that exited mid-run (their CPU is missing)
    other_clients: int = 0  # sessions on other databases, the most at the start or the end
    probe_ms: list[float] = field(default_factory=list)  # fairness: B's p50, p99, max
    probes_during_backlog: bool | None = None  # fairness: B's last commit before A's last receipt
    retried: int = 0
    failed: int = 0
    log_lines: int = 0
    log_sample: list[str] = field(default_factory=list)  # the first few, cut to 300 characters
    exit_code: int | None = None
    daemon_code: str = ""  # the daemon's commit and changed files when it was started
    rss_trace_mb: list[float] = field(default_factory=list)  # at 10%, 20%, ... delivered
    progress_trace_s: list[float] = field(default_factory=list)  # when 10%, 20%, ... arrived


def percentiles(values: list[float], ps: tuple[float, ...] = (50, 95, 99)) -> list[float]:
    """Return nearest-rank percentiles."""
    ordered = sorted(values)
    n = len(ordered)
    return [ordered[max(0, min(n - 1, round(p / 100 * n) - 1))] for p in ps] if n else []


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    """CPU model, usable CPUs, RAM and the versions that shape the figures."""
    cpu = platform.processor() or "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        **{p: version(p) for p in ("webhook-dispatcher", "aiohttp", "asyncpg", "uvloop")},
    }


def daemon_code() -> str:
    """Name the daemon code measured: the commit, and the files changed since (git diff)."""
    root = Path(dispatcher.__file__).resolve().parent.parent

    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *argv], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return f"{root} (not a git checkout)"
    changed = git("status", "--porcelain", "--", "dispatcher").splitlines()
    return f"commit {commit}" + (
        f" + {len(changed)} changed file(s) under dispatcher/" if changed else ", unchanged"
    )


def medians(runs: list[Run]) -> dict[str, float | None]:
    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    probes = [r.probe_ms for r in runs if r.probe_ms]
    return {
        "deliveries_per_s": median([r.deliveries_per_s for r in runs]),
        "ceiling_rps": median([r.ceiling_rps for r in runs]),
        "ratio": median([r.ratio for r in runs]),
        "pg_daemon_us": median([r.pg_daemon_us for r in runs]),
        "pg_server_us": median([r.pg_server_us for r in runs]),
        "pg_exited_us": median([r.pg_exited_us for r in runs]),
        "probe_p50_ms": median([p[0] for p in probes]),
        "probe_p99_ms": median([p[1] for p in probes]),
        "probe_max_ms": max((p[2] for p in probes), default=None),
    }


def run_line(run: Run) -> str:
    ceiling = f"ceiling {run.ceiling_rps:,.0f} req/s, " if run.ceiling_rps else ""
    return (
        f"  {ceiling}daemon {run.deliveries_per_s:,.0f} deliveries/s, "
        f"peak RSS {run.peak_rss_mb:.0f} MB, exit {run.exit_code}"
    )


def _cells(r: dict[str, Any]) -> dict[str, Any]:
    """Return a run's values by row key, with the derived ones computed."""
    latency = [v * 1000 for v in r["latency_s"]] or [None] * 3
    probe = r["probe_ms"] or [None] * 3
    return {
        **r,
        "probe_p50": probe[0],
        "probe_p99": probe[1],
        "probe_max": probe[2],
        "p50": latency[0],
        "p95": latency[1],
        "p99": latency[2],
        "bytes": " / ".join(
            "-" if v is None else f"{v:.0f}" for v in (r["body_bytes"], r["ceiling_body_bytes"])
        ),
        "outcomes": f"{r['duplicates']} / {r['retried']} / {r['failed']}",
    }


SCENARIOS = {
    "drain": "the backlog is in the table before the daemon starts",
    "burst": "the daemon idles {idle_s:g} s on the empty table, then one INSERT adds the backlog",
    "fairness": "webhook A drains the backlog; after {probe_after:.0%} of it, {probes} single"
    " events {probe_interval_ms:g} ms apart go to webhook B (another type and path)",
}

# (label, key in _cells(), format, whether a median is printed)
ROWS = [
    ("ceiling: bare aiohttp req/s", "ceiling_rps", "{:,.0f}", True),
    ("daemon: deliveries/s", "deliveries_per_s", "{:,.0f}", True),
    ("ratio daemon / ceiling", "ratio", "{:.2f}", True),
    ("PostgreSQL CPU us / delivery: daemon's", "pg_daemon_us", "{:,.1f}", True),
    ("PostgreSQL CPU us / delivery: server", "pg_server_us", "{:,.1f}", True),
    ("  of which: exited processes", "pg_exited_us", "{:,.1f}", True),
    ("fairness: B commit -> receipt p50 ms", "probe_p50", "{:,.1f}", True),
    ("fairness: B commit -> receipt p99 ms", "probe_p99", "{:,.1f}", True),
    ("fairness: B commit -> receipt max ms", "probe_max", "{:,.1f}", True),
    ("fairness: B's probes all during A's drain", "probes_during_backlog", "{}", False),
    ("enqueue (1 INSERT + fan-out) s", "enqueue_s", "{:.2f}", False),
    ("start -> first receipt s", "first_receipt_s", "{:.2f}", False),
    ("start -> all done s", "wall_s", "{:.2f}", False),
    ("latency from created_at p50 ms", "p50", "{:,.0f}", False),
    ("latency from created_at p95 ms", "p95", "{:,.0f}", False),
    ("latency from created_at p99 ms", "p99", "{:,.0f}", False),
    ("daemon peak RSS MB", "peak_rss_mb", "{:.1f}", False),
    ("daemon RSS at the end MB", "end_rss_mb", "{:.1f}", False),
    ("daemon CPU s / 1000 deliveries", "cpu_s_per_1k", "{:.3f}", False),
    ("daemon CPU s total (with startup)", "cpu_total_s", "{:.2f}", False),
    ("ceiling CPU s / 1000 requests", "ceiling_cpu_s_per_1k", "{:.3f}", False),
    ("receiver CPU s / 1000: daemon run", "receiver_cpu_s_per_1k", "{:.3f}", False),
    ("receiver CPU s / 1000: ceiling run", "ceiling_receiver_cpu_s_per_1k", "{:.3f}", False),
    ("body bytes: daemon / ceiling", "bytes", "{}", False),
    ("duplicates / retried / not succeeded", "outcomes", "{}", False),
    ("dead delivery rows at the end (held xmin)", "dead_tuples", "{:,}", False),
    ("daemon backends that exited mid-run", "pg_backends_gone", "{}", False),
    ("other databases' sessions (most seen)", "other_clients", "{}", False),
    ("daemon log lines (level warning)", "log_lines", "{}", False),
    ("daemon exit code after SIGTERM", "exit_code", "{}", False),
]


def _load(averages: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in averages)


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def daemon_codes(code_by_run: dict[str, str]) -> str:
    """Name the daemon code measured; if it changed between runs, say which run ran which."""
    codes = list(dict.fromkeys(code_by_run.values()))
    if len(codes) <= 1:
        return codes[0] if codes else "-"
    return "CHANGED between runs: " + "; ".join(
        ", ".join(run for run, code in code_by_run.items() if code == c) + f": {c}" for c in codes
    )


def text(result: dict[str, Any]) -> str:
    runs = result["runs"]
    m, pg, w, s = result["machine"], result["postgresql"], result["workload"], result["settings"]
    where = "embedded, temp dir" if pg["embedded"] else "DISPATCHER_DATABASE_URL"
    lines = [
        "webhook-dispatcher throughput benchmark",
        f"machine   {m['cpu']}, {m['nproc']} CPUs, {m['ram_gib']} GiB RAM, Linux {m['kernel']};"
        f" load average 1/5/15 min before {_load(m['loadavg_before'])},"
        f" after {_load(m['loadavg_after'])}",
        f"software  Python {m['python']}, webhook-dispatcher {m['webhook-dispatcher']}, "
        f"aiohttp {m['aiohttp']}, asyncpg {m['asyncpg']}, uvloop {m['uvloop']}",
        f"postgres  {pg['server_version']} ({where}),"
        f" shared_buffers={pg['shared_buffers']} fsync={pg['fsync']}"
        f" synchronous_commit={pg['synchronous_commit']} (the daemon's own sessions: off)",
        "daemon    " + daemon_codes({f"run {i + 1}": r["daemon_code"] for i, r in enumerate(runs)}),
        f"scenario  {w['scenario']}: {SCENARIOS[w['scenario']].format(**w)}",
        f"workload  {w['events']:,} events x fan-out {w['fanout']} = {w['deliveries']:,} deliveries"
        f" over {w['webhooks']} webhooks, one receiver process on 127.0.0.1 (aiohttp, uvloop);"
        f" {'ANALYZE' if w['analyze_after_insert'] else 'no ANALYZE'} after the bulk insert",
        "settings  " + " ".join(f"{k}={v}" for k, v in s.items()),
        f"          in-flight cap on the backlog (the ceiling's concurrency): {w['in_flight_cap']}",
        "",
    ]
    heads = [f"run {i + 1}" for i in range(len(runs))] + (["median"] if len(runs) > 1 else [])
    width = 42
    lines.append(" " * width + "".join(f"{h:>14}" for h in heads))
    cells_by_run = [_cells(r) for r in runs]
    for label, key, fmt, with_median in ROWS:
        values = [cells[key] for cells in cells_by_run]
        if all(v is None for v in values):
            continue
        cells = [_cell(v, fmt) for v in values]
        if len(runs) > 1:
            present = [v for v in values if v is not None]
            cells.append(_cell(statistics.median(present), fmt) if with_median and present else "")
        lines.append(f"{label:<{width}}" + "".join(f"{c:>14}" for c in cells))
    for i, r in enumerate(runs):
        for line in r["log_sample"]:
            lines.append(f"run {i + 1} daemon log: {line}")
    lines.append("\nseconds from the start until 10%, 20%, ..., 100% had arrived:")
    for i, r in enumerate(runs):
        lines.append(f"  run {i + 1}: " + " ".join(f"{v:.1f}" for v in r["progress_trace_s"]))
    if w["rss_only"] and runs:
        trace = " ".join(f"{v:.0f}" for v in runs[-1]["rss_trace_mb"])
        lines.append(f"daemon RSS MB at 10%, 20%, ..., 100% delivered: {trace}")
    p = result["pickup"]
    if p:
        lines.append(
            f"\nidle pickup latency, commit -> receipt ({p['events']} single publishes,"
            f" {p['interval_ms']:.0f} ms apart): p50 {p['p50_ms']:.1f} ms,"
            f" p99 {p['p99_ms']:.1f} ms, max {p['max_ms']:.1f} ms"
        )
    if result["error"]:
        lines.append(f"\nFAILED: {result['error']}")
    lines += [
        "",
        "deliveries/s and req/s = receipts / (last receipt - first receipt), at the receiver.",
        "start: the daemon's start (drain, fairness) or the INSERT (burst). Latency: all events"
        " share created_at (one INSERT), so it is time spent in the backlog.",
        "PostgreSQL CPU: utime + stime from /proc, from the start until all is delivered; the"
        " daemon's backends (application_name webhook-dispatcher*), and the whole server"
        " (postmaster and children, exited ones too) less the INSERT's own backend. Processes"
        " that exited mid-run are often someone else's sessions: their share is shown.",
        "CPU / 1000 deliveries counts from the last sample before the first receipt; done is"
        " detected by polling every 0.2 s.",
    ]
    return "\n".join(lines)
