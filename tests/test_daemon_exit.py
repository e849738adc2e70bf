"""A dead internal task stops `dispatcher run` loudly: an error log line naming the task and
the cause, an orderly shutdown, exit code 1 and one line on stderr; no traceback.

The tasks die for real, in a real process: the daemon runs as a role of its own that owns its
database (as a production install would), and a privilege it needs is revoked while it runs. The
database then answers a statement with an error that is not transient (permission denied), which
no task may retry forever.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest

from tests.conftest import (
    Receiver,
    _drop,
    add_webhook,
    daemon_process,
    eventually,
    publish,
    with_database,
)
from tests.test_lifecycle import holding, read_log_until

pytestmark = pytest.mark.slow


@dataclass
class OwnDatabase:
    role: str
    dsn: str  # as the role: what the daemon uses
    admin: asyncpg.Pool  # as the server's superuser: what the test uses


@pytest.fixture
async def own_database(server_dsn: str) -> AsyncIterator[OwnDatabase]:
    """An empty database owned by a fresh login role; the daemon migrates it when it starts."""
    suffix = uuid.uuid4().hex[:10]
    role, name = f"dispatcher_role_{suffix}", f"dispatcher_own_{suffix}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        await admin.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
    finally:
        await admin.close()
    parts = urlsplit(with_database(server_dsn, name))
    as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))
    pool = await asyncpg.create_pool(with_database(server_dsn, name), min_size=1, max_size=2)
    assert pool is not None
    try:
        yield OwnDatabase(role, as_role, pool)
    finally:
        await pool.close()
        await _drop(server_dsn, name)
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await admin.close()


async def output_until_exit(proc: asyncio.subprocess.Process) -> tuple[int, list[str]]:
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        out = await proc.stdout.read()
        code = await proc.wait()
    return code, out.decode().splitlines()


async def delivered(db: asyncpg.Pool, count: int) -> bool:
    n = await db.fetchval("SELECT count(*) FROM dispatcher.deliveries WHERE status = 'succeeded'")
    return bool(n == count)


def log_entries(lines: list[str]) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in lines if line.startswith("{")]


@dataclass(frozen=True)
class Death:
    revoke: str  # the privilege taken away while the daemon runs
    task: str  # the task that dies of it
    cause: str  # the error it dies of
    holding: bool = False  # an attempt is in flight (and past the grace period) meanwhile
    logged: tuple[str, ...] = ()  # error lines of the shutdown, after task_died


DEATHS = {
    # A side task: retention deletes old events every retention_interval_s.
    "retention": Death(
        "DELETE ON dispatcher.events",
        "retention",
        "InsufficientPrivilegeError: permission denied for table events",
    ),
    # The lease loop: it updates the rows it leases every poll interval.
    "leaser": Death(
        "UPDATE ON dispatcher.deliveries_active",
        "leaser",
        "InsufficientPrivilegeError: permission denied for table deliveries_active",
    ),
    # The same, with an attempt in flight: the shutdown cannot hand its lease back either.
    "leaser-in-flight": Death(
        "UPDATE ON dispatcher.deliveries_active",
        "leaser",
        "InsufficientPrivilegeError: permission denied for table deliveries_active",
        holding=True,
        logged=("lease_release_failed",),
    ),
    # The outcome writer: it appends an attempt record for each outcome; the final flush at
    # shutdown fails the same way.
    "outcome-writer": Death(
        "INSERT ON dispatcher.attempts",
        "outcome-writer",
        "InsufficientPrivilegeError: permission denied for table attempts",
        logged=("outcome_flush_failed",),
    ),
}


@pytest.mark.parametrize("death", DEATHS.values(), ids=DEATHS.keys())
async def test_a_task_that_dies_stops_the_daemon_with_exit_1_and_one_line(
    own_database: OwnDatabase, receiver: Receiver, death: Death
) -> None:
    db = own_database.admin
    release = asyncio.Event()
    async with daemon_process(
        own_database.dsn,
        DISPATCHER_RETRY_SCHEDULE="[]",
        DISPATCHER_RETENTION_INTERVAL_S="1",
        DISPATCHER_SHUTDOWN_GRACE_S="0.5",
    ) as proc:
        await read_log_until(proc, "daemon_started")
        # The daemon works as the role: it migrated its database and delivers.
        await add_webhook(db, receiver.url, ["t.x"])
        await publish(db, "t.x")
        await eventually(lambda: delivered(db, 1))
        if death.holding:
            receiver.handler = holding(release)  # type: ignore[assignment]
            await publish(db, "t.x")
            await receiver.wait_for(2)

        await db.execute(f'REVOKE {death.revoke} FROM "{own_database.role}"')
        await publish(db, "t.x")  # an outcome to write, for the outcome writer
        code, lines = await output_until_exit(proc)
    release.set()

    assert code == 1, lines
    entries = log_entries(lines)
    died = [e for e in entries if e["event"] == "task_died"]
    assert [(e["level"], e["task"], e["error"]) for e in died] == [
        ("error", death.task, death.cause)
    ]
    # The shutdown ran to its end, in order, whatever else failed on the way.
    events = [e["event"] for e in entries]
    assert events.index("task_died") < events.index("stopping") < events.index("stopped")
    errors = [e["event"] for e in entries if e["level"] == "error"]
    assert errors == ["task_died", *death.logged]
    # stderr ends with one line naming the task and the cause; nothing like a traceback.
    text = [line for line in lines if not line.startswith("{")]
    assert text[-1] == f"internal task {death.task} died ({death.cause}); see the log above"
    assert not any("Traceback" in line or line.startswith("  File ") for line in lines), lines
