"""The HTTP API under /api/v1: JSON in and out, every change through `dispatcher.manage`.

The routes live by subject in api_webhooks, api_events and api_deliveries; the OpenAPI 3.1
document that describes them (web/openapi.py) is served at /api/openapi.json.
"""

from __future__ import annotations

from aiohttp import web

from dispatcher.web import api_deliveries, api_events, api_webhooks, openapi
from dispatcher.web.api_json import respond

OPENAPI_PATH = "/api/openapi.json"


async def openapi_document(request: web.Request) -> web.Response:
    return respond(openapi.document())


def setup(app: web.Application) -> None:
    """Add the API's routes to `app`."""
    app.router.add_routes(api_webhooks.routes)
    app.router.add_routes(api_events.routes)
    app.router.add_routes(api_deliveries.routes)
    app.router.add_get(OPENAPI_PATH, openapi_document)
