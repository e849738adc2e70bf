"""An API client for tests that checks every response it gets against the OpenAPI document."""

from __future__ import annotations

import json as stdjson
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from dispatcher.web.openapi import document
from tests.conftest import WebApp

PROBLEM_JSON = "application/problem+json"
SPEC = OpenAPI.from_dict(
    document(), config=Config(extra_media_type_deserializers={PROBLEM_JSON: stdjson.loads})
)
NOT_SENT = object()


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any
    raw: bytes

    @property
    def detail(self) -> str:
        return str(self.body["detail"])


@dataclass
class Api:
    """`WebApp.call`, plus raw bodies, plus a conformance check of every response."""

    web_app: WebApp
    checked: list[tuple[str, str, int]] = field(default_factory=list)

    async def call(
        self,
        method: str,
        path: str,
        json: Any = NOT_SENT,
        token: str | None = "default",
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {self.web_app.token if token == 'default' else token}"
        if json is not NOT_SENT:
            data = orjson.dumps(json)
            sent.setdefault("Content-Type", "application/json")
        url = self.web_app.url + path
        async with self.web_app.http.request(method, url, data=data, headers=sent) as resp:
            raw = await resp.read()
            reply = Reply(resp.status, resp.headers, None, raw)
            if resp.content_type in ("application/json", PROBLEM_JSON) and raw:
                # Not orjson: a payload may hold a number no double can (1e400 is stored).
                reply.body = stdjson.loads(raw)
            else:
                reply.body = raw.decode()
        self.conforms(method, path, reply, resp.content_type if raw else None)
        return reply

    def conforms(self, method: str, path: str, reply: Reply, content_type: str | None) -> None:
        """Fail unless the response is what the document says this operation answers."""
        assert reply.status != 500, reply.body
        parts = urlsplit(path)
        if reply.status >= 400:
            assert content_type == PROBLEM_JSON, (reply.status, reply.body)
            assert reply.body["status"] == reply.status, reply.body
        request = MockRequest(self.web_app.url, method.lower(), parts.path)
        response = MockResponse(
            reply.raw, status_code=reply.status, content_type=content_type, headers=reply.headers
        )
        SPEC.validate_response(request, response)
        self.checked.append((method, parts.path, reply.status))

    async def ok(self, method: str, path: str, json: Any = NOT_SENT, status: int = 200) -> Any:
        reply = await self.call(method, path, json)
        assert reply.status == status, (reply.status, reply.body)
        return reply.body

    async def problem(
        self, method: str, path: str, json: Any = NOT_SENT, status: int = 422, **kw: Any
    ) -> Reply:
        reply = await self.call(method, path, json, **kw)
        assert reply.status == status, (reply.status, reply.body)
        return reply
