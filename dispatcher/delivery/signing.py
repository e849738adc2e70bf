"""Standard Webhooks signatures: sign requests, and verify() them on the receiving side."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"


class VerificationError(Exception):
    """The request does not carry a valid, fresh Standard Webhooks signature."""


def secret_key(secret: str) -> bytes:
    """Return the HMAC key: the base64-decoded part of the secret after `whsec_`."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """Return the `v1,<base64>` signature of `{id}.{timestamp}.{body}`."""
    # hmac.digest is the one-shot C path: no HMAC object per signature.
    mac = hmac.digest(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac).decode()


def verify(
    secret: str | list[str],
    headers: Mapping[str, str],
    body: bytes,
    tolerance: float = 300.0,
    now: float | None = None,
) -> None:
    """Check a received webhook; raise VerificationError unless one signature matches.

    `secret` may be a list, so a receiver can accept both keys while a secret is rotated.
    `headers` must be case-insensitive (aiohttp's `request.headers` is) or use lowercase names.
    """
    try:
        message_id = headers["webhook-id"]
        timestamp_text = headers["webhook-timestamp"]
        signatures = headers["webhook-signature"]
    except KeyError as exc:
        raise VerificationError(f"missing header {exc.args[0]}") from None
    try:
        timestamp = int(timestamp_text)
    except ValueError:
        raise VerificationError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise VerificationError("webhook-timestamp is outside the tolerance")

    secrets = [secret] if isinstance(secret, str) else secret
    expected = [sign(secret_key(s), message_id, timestamp, body) for s in secrets]
    for candidate in signatures.split(" "):
        if not candidate.startswith("v1,"):
            continue
        for good in expected:
            if hmac.compare_digest(candidate.encode(), good.encode()):
                return
    raise VerificationError("no signature matches")
