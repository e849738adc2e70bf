"""The HTTP API under /api/v1."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Add the API's routes to `app`."""
