"""A local webhook receiver for `dispatcher listen`: judge each request, answer, report it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from dispatcher.delivery.signing import SECRET_PREFIX, VerificationError, secret_key, verify
from dispatcher.errors import DispatcherError
from dispatcher.manage.testevent import SECRET_SHOWN_AS
from dispatcher.ops.signals import stop_on_signals

# Statuses whose responses must not carry a body.
BODYLESS = frozenset({204, 205, 304})


class PortUnavailable(DispatcherError):
    """The listening address cannot be bound."""


@dataclass(frozen=True)
class Rules:
    """How the receiver answers: what it accepts, what it verifies with, what it replies."""

    status: int = 200
    path: str = "/"
    secrets: tuple[str, ...] = ()
    secret_header: str = "webhook-secret"

    def accepts_path(self, path: str) -> bool:
        """Accept the --path itself and everything below it; "/" accepts every path."""
        return self.path == "/" or path == self.path or path.startswith(self.path + "/")


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw and answered it; the secret header is already masked."""

    received_at: datetime
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    body_is_json: bool
    verified: bool | None
    error: str | None
    answered_status: int
    # False when the method or path was refused before any signature check.
    accepted: bool = True

    def as_json(self) -> dict[str, Any]:
        return {
            "received_at": self.received_at,
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
            "verified": self.verified,
            "error": self.error,
            "answered_status": self.answered_status,
        }


def check_secret(secret: str) -> str:
    """Return `secret` if it is a usable Standard Webhooks secret; raise ValueError if not."""
    try:
        if not secret.startswith(SECRET_PREFIX) or not secret_key(secret):
            raise ValueError
    except ValueError:
        raise ValueError("expected whsec_ followed by base64") from None
    return secret


def mask_headers(headers: Mapping[str, str], secret_header: str) -> dict[str, str]:
    """Lowercase the names and hide the raw secret, whatever header a sender put it in."""
    masked: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        is_secret = lowered == secret_header.lower() or value.strip().startswith(SECRET_PREFIX)
        masked[lowered] = SECRET_SHOWN_AS if is_secret else value
    return masked


def parse_body(body: bytes) -> tuple[Any, bool]:
    """Return the body as parsed JSON and True, or as text and False."""
    try:
        return orjson.loads(body), True
    except orjson.JSONDecodeError:
        return body.decode(errors="replace"), False


def judge(
    rules: Rules,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    received_at: datetime | None = None,
    now: float | None = None,
) -> Received:
    """Decide how to answer one request; `headers` must be case-insensitive."""
    verified: bool | None = None
    error: str | None = None
    accepted = False
    if method != "POST":
        status, error = 405, f"method {method} not allowed: only POST is accepted"
    elif not rules.accepts_path(path):
        status, error = 404, f"path {path} is outside --path {rules.path}"
    else:
        accepted, status = True, rules.status
        if rules.secrets:
            try:
                verify(list(rules.secrets), headers, body, now=now)
                verified = True
            except VerificationError as exc:
                verified, error, status = False, str(exc), 400
    parsed, is_json = parse_body(body)
    return Received(
        received_at=received_at or datetime.now(UTC),
        method=method,
        path=path,
        headers=mask_headers(headers, rules.secret_header),
        body=parsed,
        body_is_json=is_json,
        verified=verified,
        error=error,
        answered_status=status,
        accepted=accepted,
    )


def answer(received: Received) -> web.Response:
    """Reply with the chosen status and a small JSON body saying what was decided."""
    headers = {} if received.method == "POST" else {"Allow": "POST"}
    if received.answered_status in BODYLESS:
        return web.Response(status=received.answered_status, headers=headers)
    reply: dict[str, Any] = {"received": received.accepted, "verified": received.verified}
    if received.error:
        reply["error"] = received.error
    return web.json_response(
        reply, status=received.answered_status, headers=headers, dumps=_dumps_text
    )


def _dumps_text(value: Any) -> str:
    return orjson.dumps(value).decode()


async def listen(
    host: str,
    port: int,
    rules: Rules,
    on_ready: Callable[[int], None],
    on_received: Callable[[Received], None],
) -> None:
    """Answer requests until SIGTERM or SIGINT; call `on_ready` with the bound port first."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        received = judge(rules, request.method, request.path, request.headers, body)
        on_received(received)
        return answer(received)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    stop = asyncio.Event()
    with stop_on_signals(stop):
        await runner.setup()
        try:
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise PortUnavailable(
                    f"cannot listen on {host} port {port}: {reason.lower()}"
                    " (choose another with --port, or --port 0 for any free one)"
                ) from None
            on_ready(runner.addresses[0][1])
            await stop.wait()
        finally:
            await runner.cleanup()
