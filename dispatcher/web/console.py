"""The console: server-rendered pages for people."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Add the console's routes to `app`."""
