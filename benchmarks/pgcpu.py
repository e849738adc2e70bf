"""Read PostgreSQL's CPU time from /proc: the daemon's backends, and the whole server.

This needs the server on this machine (the README's setup, and the embedded server): the pids
that pg_stat_activity reports are then this machine's pids. When they are not, every figure
is None and the report prints "-".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import asyncpg

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Fields of /proc/<pid>/stat, counted from the one after the ")" that ends the command name.
_PPID, _UTIME, _CUTIME = 1, 11, 13  # each time is followed by its system-time twin
# The daemon names its sessions webhook-dispatcher, webhook-dispatcher-listen, ... The
# second column counts sessions on other databases: someone else loading the server.
BACKENDS_SQL = """
SELECT coalesce(array_agg(pid) FILTER (WHERE application_name LIKE 'webhook-dispatcher%'
                                         AND datname = current_database()), '{}'),
       count(*) FILTER (WHERE backend_type = 'client backend'
                          AND datname <> current_database())
FROM pg_stat_activity"""


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _ticks(fields: list[str], first: int) -> int:
    return int(fields[first]) + int(fields[first + 1])


def process_cpu_s(pid: int) -> float | None:
    """Return the CPU seconds (user + system) that process `pid` has used; None if it is gone."""
    fields = _stat(pid)
    return None if fields is None else _ticks(fields, _UTIME) / CLOCK_TICKS


def server_cpu_s(postmaster: int) -> tuple[float, float] | None:
    """Return the CPU seconds of the postmaster and all its children, and of the exited ones.

    An exited child's time moves into the postmaster's cutime/cstime once it is reaped, so
    backends and autovacuum workers that come and go during a run are counted too.
    """
    fields = _stat(postmaster)
    if fields is None:
        return None
    reaped = _ticks(fields, _CUTIME)
    ticks = _ticks(fields, _UTIME) + reaped
    for name in os.listdir("/proc"):
        if name.isdigit() and (child := _stat(int(name))) and int(child[_PPID]) == postmaster:
            ticks += _ticks(child, _UTIME)
    return ticks / CLOCK_TICKS, reaped / CLOCK_TICKS


@dataclass(frozen=True)
class CpuSample:
    daemon_s: dict[int, float]  # CPU seconds by the pid of each of the daemon's backends
    server_s: tuple[float, float] | None  # all of the server's, and its exited processes'
    other_clients: int


@dataclass(frozen=True)
class CpuUse:
    """PostgreSQL CPU between two samples, per delivery."""

    daemon_us: float | None
    server_us: float | None
    exited_us: float | None  # of server_us: processes that exited in between, often others'
    backends_gone: int  # the daemon's backends that exited in between: their time is missing
    other_clients: int  # sessions on other databases in either sample


@dataclass(frozen=True)
class PgCpu:
    """Sample the CPU time of one database's daemon backends, and of the whole server."""

    pool: asyncpg.Pool
    postmaster: int | None  # None: the server is not on this machine

    @classmethod
    async def attach(cls, pool: asyncpg.Pool) -> PgCpu:
        backend = int(await pool.fetchval("SELECT pg_backend_pid()"))
        fields = _stat(backend)
        local = fields is not None and _comm(backend) == "postgres"
        return cls(pool, int(fields[_PPID]) if fields and local else None)

    async def daemon_sessions(self) -> int:
        pids, _ = await self.pool.fetchrow(BACKENDS_SQL)
        return len(pids)

    async def sample(self) -> CpuSample:
        pids, others = await self.pool.fetchrow(BACKENDS_SQL)
        if self.postmaster is None:
            return CpuSample({}, None, others)
        daemon = {pid: s for pid in pids if (s := process_cpu_s(pid)) is not None}
        return CpuSample(daemon, server_cpu_s(self.postmaster), others)

    def use(
        self, before: CpuSample, after: CpuSample, deliveries: int, producer_s: float
    ) -> CpuUse:
        """Return the CPU per delivery between the samples, less the producer's statement.

        A backend that appeared in between counts from zero; one that exited is missing.
        """
        others = max(before.other_clients, after.other_clients)
        if before.server_s is None or after.server_s is None:
            return CpuUse(None, None, None, 0, others)
        daemon_s = sum(s - before.daemon_s.get(pid, 0.0) for pid, s in after.daemon_s.items())
        server_s = after.server_s[0] - before.server_s[0] - producer_s
        exited_s = after.server_s[1] - before.server_s[1]
        return CpuUse(
            daemon_s / deliveries * 1e6,
            server_s / deliveries * 1e6,
            exited_s / deliveries * 1e6,
            len(before.daemon_s.keys() - after.daemon_s.keys()),
            others,
        )


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
