"""One HTTP attempt -> an Outcome value. Never raises for an HTTP or network failure."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver

from dispatcher import __version__
from dispatcher.delivery.netguard import (
    BlockedAddress,
    GuardedResolver,
    guarded_socket_factory,
    is_blocked,
)
from dispatcher.delivery.retry import RETRY_AFTER_STATUSES
from dispatcher.delivery.signing import secret_key, sign
from dispatcher.settings import Settings

USER_AGENT = f"webhook-dispatcher/{__version__}"


# Not frozen: a frozen dataclass builds five times slower, and one is built per attempt.
@dataclass(slots=True)
class Outcome:
    """What one attempt did; `retryable` says whether another attempt could help."""

    ok: bool
    retryable: bool
    started_at: datetime
    duration_ms: int
    response_status: int | None = None
    response_body: str | None = None
    response_truncated: bool = False
    error_kind: str | None = None
    error_message: str | None = None
    response_headers: tuple[tuple[str, str], ...] | None = None
    # Seconds a 429 or 503 asked the sender to wait (its Retry-After header), if it said.
    retry_after_s: float | None = None


def safe_text(raw: bytes | str, limit: int | None = None) -> str:
    """Make text storable in PostgreSQL: invalid UTF-8 replaced, NUL bytes replaced."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if limit is not None:
        text = text[:limit]
    return text.replace("\x00", "\ufffd")


def build_body(message_id: str, event_type: str, created_at: datetime, payload_json: str) -> bytes:
    """Serialize the wire body; the stored payload is embedded as-is, not re-parsed."""
    return orjson.dumps(
        {
            "messageId": message_id,
            "type": event_type,
            "timestamp": created_at,
            "data": orjson.Fragment(payload_json),
        },
        option=orjson.OPT_UTC_Z,
    )


class Signer:
    """Build the signed headers of an attempt; decoded keys are cached per secret."""

    def __init__(self, settings: Settings) -> None:
        self._secret_header = settings.secret_header if settings.send_secret_header else None
        self._keys: dict[str, bytes] = {}

    def _key(self, secret: str) -> bytes:
        key = self._keys.get(secret)
        if key is None:
            key = self._keys[secret] = secret_key(secret)
        return key

    def headers(
        self,
        message_id: str,
        secret: str,
        body: bytes,
        timestamp: int,
        previous_secret: str | None = None,
    ) -> dict[str, str]:
        """Sign with the secret, and also with the previous one while a rotation's grace lasts."""
        signature = sign(self._key(secret), message_id, timestamp, body)
        if previous_secret:
            signature += " " + sign(self._key(previous_secret), message_id, timestamp, body)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
        }
        if self._secret_header:
            headers[self._secret_header] = secret
        return headers


def create_session(
    settings: Settings, resolver: AbstractResolver | None = None
) -> aiohttp.ClientSession:
    """Create the one ClientSession the process shares for every attempt.

    Unless an egress proxy does the filtering, the SSRF guard sits in two places: the resolver
    refuses names with any blocked answer, and the socket factory refuses a blocked peer at
    connect time, which also covers IP-literal URLs and whatever a resolver returns later.
    """
    guarded = settings.egress_proxy is None
    allowed = settings.allowed
    connector = aiohttp.TCPConnector(
        limit=settings.max_in_flight,
        limit_per_host=0,
        ttl_dns_cache=300,
        keepalive_timeout=60,
        resolver=GuardedResolver(allowed, resolver) if guarded else resolver,
        socket_factory=guarded_socket_factory(allowed) if guarded else None,
        local_addr=(settings.bind_address, 0) if settings.bind_address else None,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        # Proxy variables in the environment must not redirect webhook traffic.
        trust_env=False,
        skip_auto_headers=("Accept",),
        # Bodies are decompressed by _read_capped, never past the read cap (gzip bombs).
        auto_decompress=False,
    )


class Sender:
    """POST bodies and turn whatever happens into an Outcome."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(
            total=settings.request_timeout_s, sock_connect=settings.connect_timeout_s
        )
        # For callers that enforce the total deadline themselves (the daemon's timeout sweep):
        # no timer per request, only the connect limit, which costs nothing on a reused
        # connection.
        self._connect_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout_s
        )
        self._read_max = settings.response_read_max_bytes
        self._store_max = settings.response_store_max_bytes
        self._proxy = settings.egress_proxy
        self._allowed = settings.allowed

    async def send(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        capture_headers: bool = False,
        timed: bool = True,
        read_ok_body: bool = True,
    ) -> Outcome:
        """Make one attempt.

        `capture_headers` keeps the response headers (for `webhooks test`). With `timed` off,
        the caller enforces request_timeout_s by cancelling. With `read_ok_body` off, a 2xx body
        is not read: nothing stores it, and the connection is reused when the body had arrived
        whole (a small body comes with the headers); otherwise it is closed.
        """
        started_at = datetime.now(UTC)
        start = time.monotonic()

        def elapsed_ms() -> int:
            return int((time.monotonic() - start) * 1000)

        try:
            if self._proxy:
                self._refuse_blocked_literal(url)
            async with self._session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout if timed else self._connect_timeout,
                proxy=self._proxy,
            ) as resp:
                status = resp.status
                read = read_ok_body or not 200 <= status < 300
                raw, truncated = await self._read_capped(resp) if read else (b"", False)
                location = resp.headers.get("Location")
                retry_after = (
                    parse_retry_after(resp.headers.get("Retry-After"))
                    if status in RETRY_AFTER_STATUSES
                    else None
                )
                response_headers = (
                    tuple((safe_text(k), safe_text(v)) for k, v in resp.headers.items())
                    if capture_headers
                    else None
                )
        except Exception as exc:  # every failure becomes a recorded Outcome
            return failed(exc, started_at, elapsed_ms())

        ok = 200 <= status < 300
        message = None
        if not ok:
            message = f"HTTP {status}"
            if 300 <= status < 400:
                message += f" (redirects are not followed; Location: {location})"
        return Outcome(
            ok=ok,
            retryable=not ok,
            started_at=started_at,
            duration_ms=elapsed_ms(),
            response_status=status,
            response_body=safe_text(raw[: self._store_max]) if read else None,
            response_truncated=truncated or len(raw) > self._store_max,
            error_kind=None if ok else "status",
            error_message=None if message is None else safe_text(message, 1000),
            response_headers=response_headers,
            retry_after_s=retry_after,
        )

    def _refuse_blocked_literal(self, url: str) -> None:
        """Behind a proxy only IP-literal hosts can be judged here; the proxy judges names."""
        host = urlsplit(url).hostname or ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return
        if is_blocked(address, self._allowed):
            raise BlockedAddress(host)

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        """Read (and decompress) at most the read cap of the body; report whether more was left.

        Both the bytes read off the wire and the bytes decompressed are capped, so neither an
        endless body nor a gzip bomb can make an attempt hold more than the cap in memory.
        """
        encoding = resp.headers.get("Content-Encoding", "").strip().lower()
        decoder = None
        if encoding in ("gzip", "x-gzip"):
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            decoder = zlib.decompressobj()
        chunks: list[bytes] = []
        size = raw_size = 0
        more = False
        while size < self._read_max and raw_size < self._read_max:
            chunk = await resp.content.read(self._read_max - raw_size)
            if not chunk:
                break
            raw_size += len(chunk)
            if decoder is not None:
                try:
                    chunk, decoder, left = _inflate(decoder, chunk, self._read_max - size)
                except zlib.error:
                    decoder = None  # not what the header claimed: keep the raw bytes
                else:
                    more = more or left
            chunks.append(chunk)
            size += len(chunk)
        if not more:
            more = not resp.content.at_eof()
        if more:
            # The rest is unread; close rather than return a dirty connection to the pool.
            resp.close()
        return b"".join(chunks)[: self._read_max], more


def _inflate(decoder: Any, data: bytes, limit: int) -> tuple[bytes, Any, bool]:
    """Decompress at most `limit` bytes of `data`, across gzip members (RFC 1952 allows several).

    Return the output, the decoder to use for the next chunk, and whether input was left over
    because the limit was reached.
    """
    out = decoder.decompress(data, limit)
    while decoder.eof and decoder.unused_data and len(out) < limit:
        rest = decoder.unused_data
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += decoder.decompress(rest, limit - len(out))
    left = bool(decoder.unconsumed_tail) or (decoder.eof and bool(decoder.unused_data))
    return out, decoder, left


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Read a Retry-After header as seconds from now: delta-seconds or an HTTP-date.

    Anything else (empty, negative, a malformed date) is None: the header is advice, and a
    hostile or broken endpoint must not make the sender fail or wait for ever (the caller
    clamps what is returned).
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(min(int(text), 10**9))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; parsedate leaves "-0000" naive
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def failed(exc: BaseException, started_at: datetime, duration_ms: int) -> Outcome:
    """Describe an attempt that ended with `exc` instead of a response."""
    kind, retryable = classify_error(exc)
    return Outcome(
        ok=False,
        retryable=retryable,
        started_at=started_at,
        duration_ms=duration_ms,
        error_kind=kind,
        error_message=safe_text(describe_error(exc), 1000),
    )


def classify_error(exc: BaseException) -> tuple[str, bool]:
    """Map an exception from an attempt to (error kind, retryable)."""
    if isinstance(exc, BlockedAddress) or isinstance(
        getattr(exc, "os_error", None), BlockedAddress
    ):
        return "blocked_address", False
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout", True
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return "invalid_url", False
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns", True
    if isinstance(
        exc,
        aiohttp.ClientConnectorCertificateError
        | aiohttp.ClientSSLError
        | aiohttp.ServerFingerprintMismatch,
    ):
        return "tls", True
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect", True
    if isinstance(exc, ssl.SSLError):
        return "tls", True
    if isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError):
        return "connection_reset", True
    if isinstance(exc, aiohttp.ClientOSError):
        return "connection_reset" if exc.errno in (104, 32) else "connect", True
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return "bad_response", True
    if isinstance(exc, aiohttp.ClientError):
        return "network", True
    return "internal", True


def describe_error(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
