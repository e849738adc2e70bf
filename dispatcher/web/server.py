"""Lifecycle of `dispatcher web`: open the pool, serve the app, stop on a signal."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiohttp import web

from dispatcher.daemon import connect_pool
from dispatcher.errors import ConfigError
from dispatcher.ops import migrate
from dispatcher.ops.signals import stop_on_signals
from dispatcher.settings import Settings
from dispatcher.web.app import create_app

log = structlog.get_logger("dispatcher.web")


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def serve_web(
    settings: Settings,
    dsn: str,
    listen: str,
    stop: asyncio.Event | None = None,
    started: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> None:
    """Serve the console and the API on `listen` until SIGTERM/SIGINT or `stop`."""
    stop = stop or asyncio.Event()
    with stop_on_signals(stop) if handle_signals else contextlib.nullcontext():
        pool = await connect_pool(settings, dsn, stop)
        if pool is None:
            return
        try:
            async with pool.acquire() as conn:
                if settings.apply_migrations:
                    await migrate.apply_migrations(conn)
                else:
                    await migrate.check_migrations(conn)
            runner = web.AppRunner(create_app(settings, pool), access_log=None)
            await runner.setup()
            try:
                host, port = split_listen(listen)
                try:
                    await web.TCPSite(runner, host, port).start()
                except OSError as exc:
                    raise ConfigError(
                        f"cannot serve the console on {listen} ({exc.strerror or exc});"
                        " set web_listen (or --listen) to a free local HOST:PORT"
                    ) from None
                log.info("web_listening", address=listen)
                if started is not None:
                    started.set()
                await stop.wait()
                log.info("web_stopping")
            finally:
                await runner.cleanup()
        finally:
            await pool.close()


async def serve_with_console(settings: Settings, dsn: str) -> None:
    """Run the delivery daemon and the console in one process: `dispatcher run --web`.

    One stop event ends both; the daemon's signal handlers set it. If either fails, the other
    is stopped and the failure is raised once both have shut down.
    """
    from dispatcher.daemon import serve

    stop = asyncio.Event()
    console = asyncio.create_task(
        serve_web(settings, dsn, settings.web_listen, stop=stop, handle_signals=False),
        name="console",
    )
    daemon = asyncio.create_task(serve(settings, dsn, stop=stop), name="daemon")
    await asyncio.wait([console, daemon], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    await asyncio.wait([console, daemon])
    for task in (console, daemon):
        exc = task.exception()
        if exc is not None:
            raise exc
