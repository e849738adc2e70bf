"""Unit tests for one HTTP attempt: transport errors injected with aioresponses, answers from a
real local receiver, and the pure helpers."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta, timezone
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aioresponses import aioresponses
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from dispatcher.delivery.sender import (
    Outcome,
    Sender,
    Signer,
    build_body,
    classify_error,
    create_session,
    safe_text,
)
from dispatcher.settings import Settings, load_settings
from tests.conftest import Handler, Receiver

URL_ = "https://hooks.example/receive"
BODY = b'{"messageId":"m-1","type":"t","timestamp":"2024-01-02T03:04:05Z","data":{}}'
HEADERS = {"content-type": "application/json", "webhook-id": "m-1"}
# What a connector error is built from: aiohttp's ConnectionKey is not public, and the errors
# read only these three fields of it (their public host, port and ssl properties).
KEY: Any = SimpleNamespace(host="hooks.example", port=443, ssl=True)
REQUEST_INFO = aiohttp.RequestInfo(
    url=URL(URL_), method="POST", headers=CIMultiDictProxy(CIMultiDict()), real_url=URL(URL_)
)


def make_settings(**overrides: object) -> Settings:
    base: dict[str, object] = {
        "request_timeout_s": 5.0,
        "connect_timeout_s": 2.0,
        # The real receivers are on loopback, which the SSRF guard refuses by default.
        "allowed_networks": ("127.0.0.0/8",),
    }
    base.update(overrides)
    return load_settings(env={}, overrides=base)


async def send_once(mock: aioresponses, settings: Settings | None = None) -> Outcome:
    """POST BODY to URL_ through a real session whose transport `mock` replaces."""
    settings = settings or make_settings()
    async with create_session(settings) as session:
        outcome = await Sender(settings, session).send(URL_, HEADERS, BODY)
    assert mock.requests, "the attempt never reached the mocked transport"
    return outcome


def assert_timing(outcome: Outcome, before: datetime) -> None:
    assert outcome.started_at.tzinfo is UTC
    assert before <= outcome.started_at <= datetime.now(UTC)
    assert outcome.duration_ms >= 0


@pytest.mark.parametrize(
    ("exc", "kind", "message"),
    [
        # asyncio.TimeoutError is the builtin TimeoutError since Python 3.11.
        pytest.param(TimeoutError(), "timeout", "TimeoutError", id="timeout"),
        pytest.param(
            aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
            "timeout",
            "ServerTimeoutError: Timeout on reading data from socket",
            id="server-timeout",
        ),
        pytest.param(
            aiohttp.ClientConnectorDNSError(KEY, OSError(-2, "Name or service not known")),
            "dns",
            "ClientConnectorDNSError: Cannot connect to host hooks.example:443 ssl:default"
            " [Name or service not known]",
            id="dns",
        ),
        pytest.param(
            aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "Connection refused")),
            "connect",
            "ClientConnectorError: Cannot connect to host hooks.example:443 ssl:default"
            " [Connection refused]",
            id="refused",
        ),
        pytest.param(
            aiohttp.ClientConnectionError("connection lost"),
            "network",
            "ClientConnectionError: connection lost",
            id="connection-error",
        ),
        pytest.param(
            aiohttp.ServerDisconnectedError(),
            "connection_reset",
            "ServerDisconnectedError: Server disconnected",
            id="server-disconnected",
        ),
        pytest.param(
            aiohttp.ClientPayloadError("Response payload is not completed"),
            "bad_response",
            "ClientPayloadError: Response payload is not completed",
            id="payload",
        ),
        pytest.param(
            RuntimeError("boom\x00"), "internal", "RuntimeError: boom\ufffd", id="internal"
        ),
    ],
)
async def test_send_turns_exception_into_outcome(
    exc: BaseException, kind: str, message: str
) -> None:
    before = datetime.now(UTC)
    with aioresponses() as m:
        m.post(URL_, exception=exc)
        outcome = await send_once(m)

    assert outcome.ok is False
    assert outcome.retryable is True
    assert outcome.error_kind == kind
    assert outcome.error_message == message
    assert outcome.response_status is None
    assert outcome.response_body is None
    assert outcome.response_truncated is False
    assert_timing(outcome, before)


async def test_send_invalid_url_is_not_retryable() -> None:
    with aioresponses() as m:
        m.post(URL_, exception=aiohttp.InvalidURL("not a url"))
        outcome = await send_once(m)

    assert outcome.ok is False
    assert outcome.retryable is False
    assert outcome.error_kind == "invalid_url"
    assert outcome.error_message == "InvalidURL: not a url"


async def test_send_error_message_is_capped_at_1000_chars() -> None:
    with aioresponses() as m:
        m.post(URL_, exception=aiohttp.ClientConnectionError("x" * 5000))
        outcome = await send_once(m)

    assert outcome.error_message == "ClientConnectionError: " + "x" * 977


# --- answers from a real local receiver -----------------------------------------------------


def answering(status: int, body: bytes = b"", **headers: str) -> Handler:
    """A receiver handler that answers every request with `status`, `body` and `headers`."""

    async def handler(request: web.Request, rec: Receiver) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return handler


async def send_to(receiver: Receiver, settings: Settings | None = None) -> Outcome:
    """POST BODY to `receiver` at /receive through a session as the daemon builds it."""
    settings = settings or make_settings()
    async with create_session(settings) as session:
        return await Sender(settings, session).send(receiver.url + "/receive", HEADERS, BODY)


async def test_send_500_is_retryable_status_failure(receiver: Receiver) -> None:
    receiver.handler = answering(500, b"database on fire")
    before = datetime.now(UTC)

    outcome = await send_to(receiver)

    assert outcome.ok is False
    assert outcome.retryable is True
    assert outcome.error_kind == "status"
    assert outcome.error_message == "HTTP 500"
    assert outcome.response_status == 500
    assert outcome.response_body == "database on fire"
    assert outcome.response_truncated is False
    assert_timing(outcome, before)


async def test_send_posts_the_body_and_headers_once(receiver: Receiver) -> None:
    methods: list[str] = []

    async def record_method(request: web.Request, rec: Receiver) -> web.StreamResponse:
        methods.append(request.method)
        return web.Response(status=204)

    receiver.handler = record_method

    await send_to(receiver)

    [request] = receiver.requests
    assert (methods, request.path, request.body) == (["POST"], "/receive", BODY)
    sent = {name.lower(): value for name, value in request.headers.items()}
    assert {name: sent.get(name) for name in HEADERS} == HEADERS


async def test_send_302_is_a_failure_and_not_followed(receiver: Receiver) -> None:
    target = receiver.url + "/new-home"

    async def redirect_once(request: web.Request, rec: Receiver) -> web.StreamResponse:
        if request.path == "/receive":
            return web.Response(status=302, text="moved", headers={"Location": target})
        return web.Response(text="followed")

    receiver.handler = redirect_once

    outcome = await send_to(receiver)

    assert outcome.ok is False
    assert outcome.retryable is True
    assert outcome.error_kind == "status"
    assert outcome.response_status == 302
    assert outcome.response_body == "moved"
    assert outcome.error_message == (f"HTTP 302 (redirects are not followed; Location: {target})")
    assert [r.path for r in receiver.requests] == ["/receive"]


async def test_send_redirect_without_location(receiver: Receiver) -> None:
    receiver.handler = answering(307)

    outcome = await send_to(receiver)

    assert outcome.error_kind == "status"
    assert outcome.error_message == "HTTP 307 (redirects are not followed; Location: None)"


async def test_send_204_is_ok(receiver: Receiver) -> None:
    receiver.handler = answering(204)
    before = datetime.now(UTC)

    outcome = await send_to(receiver)

    assert outcome.ok is True
    assert outcome.retryable is False
    assert outcome.error_kind is None
    assert outcome.error_message is None
    assert outcome.response_status == 204
    assert outcome.response_body == ""
    assert outcome.response_truncated is False
    assert_timing(outcome, before)


async def test_send_makes_response_body_storable(receiver: Receiver) -> None:
    receiver.handler = answering(200, b"ok\x00\xff!")

    outcome = await send_to(receiver)

    assert outcome.ok is True
    assert outcome.response_body == "ok\ufffd\ufffd!"


async def test_send_caps_stored_body(receiver: Receiver) -> None:
    receiver.handler = answering(500, b"0123456789")

    outcome = await send_to(
        receiver, make_settings(response_read_max_bytes=16, response_store_max_bytes=8)
    )

    assert outcome.response_body == "01234567"
    assert outcome.response_truncated is True


async def test_send_caps_read_body(receiver: Receiver) -> None:
    receiver.handler = answering(200, b"x" * 100)

    outcome = await send_to(
        receiver, make_settings(response_read_max_bytes=16, response_store_max_bytes=16)
    )

    assert outcome.ok is True
    assert outcome.response_body == "x" * 16
    assert outcome.response_truncated is True


async def test_send_body_exactly_at_caps_is_not_truncated(receiver: Receiver) -> None:
    receiver.handler = answering(200, b"01234567")

    outcome = await send_to(
        receiver, make_settings(response_read_max_bytes=16, response_store_max_bytes=8)
    )

    assert outcome.response_body == "01234567"
    assert outcome.response_truncated is False


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(TimeoutError(), ("timeout", True), id="timeout"),
        pytest.param(aiohttp.ServerTimeoutError(), ("timeout", True), id="server-timeout"),
        pytest.param(aiohttp.ConnectionTimeoutError(), ("timeout", True), id="connect-timeout"),
        pytest.param(aiohttp.SocketTimeoutError(), ("timeout", True), id="socket-timeout"),
        pytest.param(aiohttp.InvalidURL("x"), ("invalid_url", False), id="invalid-url"),
        pytest.param(
            aiohttp.InvalidUrlClientError("example.com/hook"),
            ("invalid_url", False),
            id="invalid-url-client",
        ),
        pytest.param(
            aiohttp.NonHttpUrlClientError("ftp://hooks.example/x"),
            ("invalid_url", False),
            id="non-http-url",
        ),
        pytest.param(
            aiohttp.ServerFingerprintMismatch(b"a" * 32, b"b" * 32, "hooks.example", 443),
            ("tls", True),
            id="pinned-fingerprint-mismatch",
        ),
        pytest.param(
            aiohttp.ClientConnectorDNSError(KEY, OSError(-2, "Name or service not known")),
            ("dns", True),
            id="dns",
        ),
        pytest.param(
            aiohttp.ClientConnectorCertificateError(
                KEY, ssl.SSLCertVerificationError(1, "certificate verify failed")
            ),
            ("tls", True),
            id="certificate",
        ),
        pytest.param(
            aiohttp.ClientConnectorSSLError(KEY, ssl.SSLError(1, "wrong version number")),
            ("tls", True),
            id="connector-ssl",
        ),
        pytest.param(ssl.SSLError(1, "bad record mac"), ("tls", True), id="ssl"),
        pytest.param(
            aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "Connection refused")),
            ("connect", True),
            id="refused",
        ),
        pytest.param(aiohttp.ServerDisconnectedError(), ("connection_reset", True), id="disc"),
        pytest.param(ConnectionResetError(104, "reset"), ("connection_reset", True), id="reset"),
        pytest.param(
            aiohttp.ClientConnectionResetError("closing transport"),
            ("connection_reset", True),
            id="client-reset",
        ),
        pytest.param(
            aiohttp.ClientOSError(104, "Connection reset by peer"),
            ("connection_reset", True),
            id="oserror-104",
        ),
        pytest.param(
            aiohttp.ClientOSError(32, "Broken pipe"), ("connection_reset", True), id="oserror-32"
        ),
        pytest.param(
            aiohttp.ClientOSError(113, "No route to host"), ("connect", True), id="oserror-113"
        ),
        pytest.param(
            aiohttp.ClientResponseError(REQUEST_INFO, (), status=400, message="Bad Request"),
            ("bad_response", True),
            id="response-error",
        ),
        pytest.param(aiohttp.ClientPayloadError("cut"), ("bad_response", True), id="payload"),
        pytest.param(aiohttp.ClientConnectionError("x"), ("network", True), id="connection"),
        pytest.param(aiohttp.ClientError("x"), ("network", True), id="client-error"),
        pytest.param(RuntimeError("x"), ("internal", True), id="runtime"),
        pytest.param(OSError(5, "I/O error"), ("internal", True), id="oserror"),
    ],
)
def test_classify_error(exc: BaseException, expected: tuple[str, bool]) -> None:
    assert classify_error(exc) == expected


@pytest.mark.parametrize(
    ("raw", "limit", "expected"),
    [
        (b"plain", None, "plain"),
        ("plain", None, "plain"),
        (b"", None, ""),
        (b"a\x00b", None, "a\ufffdb"),
        ("a\x00b\x00", None, "a\ufffdb\ufffd"),
        (b"a\xffb", None, "a\ufffdb"),
        (b"\xc3(", None, "\ufffd("),
        ("caf\u00e9".encode(), None, "caf\u00e9"),
        (b"abcdef", 3, "abc"),
        ("abcdef", 0, ""),
        (b"ab", 10, "ab"),
        ("\u00e9\u00e9\u00e9".encode(), 2, "\u00e9\u00e9"),
        (b"\x00\x00\x00", 2, "\ufffd\ufffd"),
        (b"ab\x00\xffcd", 4, "ab\ufffd\ufffd"),
    ],
)
def test_safe_text(raw: bytes | str, limit: int | None, expected: str) -> None:
    assert safe_text(raw, limit) == expected


def test_build_body_exact_bytes() -> None:
    created_at = datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)

    body = build_body("0b1c2d3e", "user.created", created_at, '{"id": 7, "tags": ["a"]}')

    assert body == (
        b'{"messageId":"0b1c2d3e","type":"user.created",'
        b'"timestamp":"2024-01-02T03:04:05.123456Z","data":{"id": 7, "tags": ["a"]}}'
    )


def test_build_body_whole_seconds_timestamp() -> None:
    created_at = datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC)

    body = build_body("m", "t", created_at, "null")

    assert body == b'{"messageId":"m","type":"t","timestamp":"2024-12-31T23:59:59Z","data":null}'


def test_build_body_utc_offset_zone_ends_with_z() -> None:
    created_at = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(0)))

    body = build_body("m", "t", created_at, "{}")

    assert body == b'{"messageId":"m","type":"t","timestamp":"2024-01-02T03:04:05Z","data":{}}'


def test_build_body_escapes_strings() -> None:
    created_at = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)

    body = build_body('m"1', "a\\b", created_at, "{}")

    assert body == (
        b'{"messageId":"m\\"1","type":"a\\\\b","timestamp":"2024-01-02T03:04:05Z","data":{}}'
    )


# The Standard Webhooks test vector; the signature is the spec's expected value.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MESSAGE_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signer_headers_exact() -> None:
    headers = Signer(load_settings(env={})).headers(MESSAGE_ID, SECRET, VECTOR_BODY, TIMESTAMP)

    assert headers == {
        "content-type": "application/json",
        "user-agent": f"webhook-dispatcher/{version('webhook-dispatcher')}",
        "webhook-id": MESSAGE_ID,
        "webhook-timestamp": "1614265330",
        "webhook-signature": SIGNATURE,
        "webhook-secret": SECRET,
    }


def test_signer_uses_configured_secret_header() -> None:
    headers = Signer(load_settings(env={}, overrides={"secret_header": "x-hook-secret"})).headers(
        MESSAGE_ID, SECRET, VECTOR_BODY, TIMESTAMP
    )

    assert list(headers) == [
        "content-type",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-hook-secret",
    ]
    assert headers["x-hook-secret"] == SECRET


def test_signer_keeps_secrets_apart() -> None:
    signer = Signer(load_settings(env={}))
    other = "whsec_AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="

    first = signer.headers(MESSAGE_ID, SECRET, VECTOR_BODY, TIMESTAMP)
    second = signer.headers(MESSAGE_ID, other, VECTOR_BODY, TIMESTAMP)
    again = signer.headers(MESSAGE_ID, SECRET, VECTOR_BODY, TIMESTAMP)

    assert first["webhook-signature"] == SIGNATURE
    assert second["webhook-signature"] != SIGNATURE
    assert second["webhook-secret"] == other
    assert again == first
