"""Time the daemon's systemd watchdog pings: READY to the first ping, and the gaps between pings.

    DISPATCHER_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python -m benchmarks.watchdog --watchdog-sec 1 --seconds 30

`dispatcher run` starts on a fresh database on DISPATCHER_DATABASE_URL's server (else on a
throwaway embedded PostgreSQL), with $NOTIFY_SOCKET naming a datagram socket of this process and
$WATCHDOG_USEC set from --watchdog-sec, as systemd would set them. It pings every half of that;
systemd kills the service when a gap reaches WatchdogSec. Every datagram is timestamped on
arrival for --seconds after READY=1, then the daemon is stopped with SIGTERM.

The tests (tests/test_notify.py) assert the order of what arrives; the figures live here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.processes import BenchError, daemon_process, embedded_server
from benchmarks.workload import db_name, fresh_database, with_database
from dispatcher.settings import ENV_PREFIX

READY_TIMEOUT_S = 60.0


async def record(sock: socket.socket, until: float, arrivals: list[tuple[float, str]]) -> None:
    """Append (arrival time, datagram) for everything that arrives before `until`."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(until - time.monotonic()):
            while True:
                data = await loop.sock_recv(sock, 4096)
                arrivals.append((time.monotonic(), data.decode()))


async def benchmark(args: argparse.Namespace, admin_dsn: str, workdir: Path) -> dict[str, Any]:
    name = db_name(0)
    path = str(workdir / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.setblocking(False)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)},
            ENV_PREFIX + "DATABASE_URL": with_database(admin_dsn, name),
            ENV_PREFIX + "LOG_LEVEL": "warning",
            "NOTIFY_SOCKET": path,
            "WATCHDOG_USEC": str(round(args.watchdog_sec * 1_000_000)),
        }
        arrivals: list[tuple[float, str]] = []
        async with (
            fresh_database(admin_dsn, name),
            daemon_process(env, workdir / "daemon.log", 30) as daemon,
        ):
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not any("READY=1" in text for _, text in arrivals):
                daemon.check_running()
                if time.monotonic() > deadline:
                    raise daemon.failed("no READY=1")
                await record(sock, time.monotonic() + 0.2, arrivals)
            await record(sock, time.monotonic() + args.seconds, arrivals)
    ready = next(at for at, text in arrivals if "READY=1" in text)
    pings = [at for at, text in arrivals if text == "WATCHDOG=1" and at >= ready]
    if len(pings) < 2:
        raise BenchError(f"{len(pings)} pings in {args.seconds} s")
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    return {"first_s": pings[0] - ready, "gaps": gaps, "exit_code": daemon.exit_code}


def text(args: argparse.Namespace, result: dict[str, Any]) -> str:
    gaps = sorted(result["gaps"])
    interval = args.watchdog_sec / 2
    p99 = gaps[min(len(gaps) - 1, round(0.99 * (len(gaps) - 1)))]
    return "\n".join(
        [
            f"WatchdogSec {args.watchdog_sec:g} s: a ping is due every {interval:g} s",
            f"READY=1 to the first ping: {result['first_s']:.3f} s",
            f"{len(gaps) + 1} pings in {args.seconds:g} s; gaps: min {gaps[0]:.3f} s,"
            f" median {statistics.median(gaps):.3f} s, p99 {p99:.3f} s, max {gaps[-1]:.3f} s"
            f" ({gaps[-1] / args.watchdog_sec:.0%} of WatchdogSec)",
            f"daemon exit code: {result['exit_code']}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.watchdog",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--watchdog-sec", type=float, default=1.0, help="default 1")
    parser.add_argument("--seconds", type=float, default=30.0, help="default 30")
    args = parser.parse_args(argv)
    if args.watchdog_sec <= 0 or args.seconds <= 0:
        parser.error("need --watchdog-sec > 0 and --seconds > 0")
    try:
        with contextlib.ExitStack() as stack:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
            dsn = os.environ.get(ENV_PREFIX + "DATABASE_URL") or stack.enter_context(
                embedded_server()
            )
            result = asyncio.run(benchmark(args, dsn, workdir))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(text(args, result))
    return 0 if result["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
