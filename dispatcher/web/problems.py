"""RFC 9457 problem details: every API error is one `application/problem+json` body."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error a handler raises to answer with a problem document."""

    def __init__(self, status: int, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extensions = extensions


def problem_response(
    status: int, detail: str, instance: str | None = None, **extensions: Any
) -> web.Response:
    """Build a problem response; `type` stays "about:blank", so `title` is the status phrase."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(extensions)
    return web.Response(status=status, body=orjson.dumps(body), content_type=PROBLEM_JSON)
