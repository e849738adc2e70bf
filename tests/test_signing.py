"""Unit tests for Standard Webhooks signing and verify(), checked against the spec's test vector."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from multidict import CIMultiDict
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from dispatcher.delivery.signing import VerificationError, secret_key, sign, verify

# The test vector from the Standard Webhooks specification and its reference libraries.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MESSAGE_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

OTHER_SECRET = "whsec_AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="


def vector_headers(signature: str = SIGNATURE, timestamp: str = str(TIMESTAMP)) -> dict[str, str]:
    return {
        "webhook-id": MESSAGE_ID,
        "webhook-timestamp": timestamp,
        "webhook-signature": signature,
    }


def test_secret_key_decodes_after_prefix() -> None:
    assert secret_key("whsec_aGVsbG8=") == b"hello"
    assert secret_key("aGVsbG8=") == b"hello"


def test_secret_key_accepts_missing_padding() -> None:
    assert secret_key("whsec_aGVsbG8") == b"hello"


def test_sign_matches_standard_webhooks_vector() -> None:
    assert sign(secret_key(SECRET), MESSAGE_ID, TIMESTAMP, BODY) == SIGNATURE


def test_verify_accepts_vector() -> None:
    verify(SECRET, vector_headers(), BODY, now=TIMESTAMP)


def test_verify_accepts_case_insensitive_headers() -> None:
    headers = CIMultiDict(
        {
            "Webhook-Id": MESSAGE_ID,
            "Webhook-Timestamp": str(TIMESTAMP),
            "Webhook-Signature": SIGNATURE,
        }
    )

    verify(SECRET, headers, BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    "signature",
    [
        f"v1,Zm9vYmFyYmF6 {SIGNATURE}",
        f"{SIGNATURE} v1,Zm9vYmFyYmF6",
        f"v2,Zm9vYmFyYmF6 {SIGNATURE} v1a,Zm9v",
    ],
)
def test_verify_accepts_multi_signature_header_with_one_match(signature: str) -> None:
    verify(SECRET, vector_headers(signature), BODY, now=TIMESTAMP)


@pytest.mark.parametrize("secrets", [[SECRET], [OTHER_SECRET, SECRET], [SECRET, OTHER_SECRET]])
def test_verify_accepts_list_of_secrets(secrets: list[str]) -> None:
    verify(secrets, vector_headers(), BODY, now=TIMESTAMP)


@pytest.mark.parametrize("offset", [-300, 300])
def test_verify_accepts_timestamp_at_tolerance_edge(offset: int) -> None:
    verify(SECRET, vector_headers(), BODY, now=TIMESTAMP + offset)


def test_verify_uses_custom_tolerance() -> None:
    verify(SECRET, vector_headers(), BODY, tolerance=1000, now=TIMESTAMP + 999)
    with pytest.raises(VerificationError, match="outside the tolerance"):
        verify(SECRET, vector_headers(), BODY, tolerance=10, now=TIMESTAMP + 11)


def test_verify_rejects_tampered_body() -> None:
    with pytest.raises(VerificationError, match=r"^no signature matches$"):
        verify(SECRET, vector_headers(), b'{"test": 2432232315}', now=TIMESTAMP)


def test_verify_rejects_wrong_secret() -> None:
    with pytest.raises(VerificationError, match=r"^no signature matches$"):
        verify(OTHER_SECRET, vector_headers(), BODY, now=TIMESTAMP)


def test_verify_rejects_empty_secret_list() -> None:
    with pytest.raises(VerificationError, match=r"^no signature matches$"):
        verify([], vector_headers(), BODY, now=TIMESTAMP)


def test_verify_rejects_changed_message_id() -> None:
    headers = vector_headers() | {"webhook-id": "msg_other"}

    with pytest.raises(VerificationError, match=r"^no signature matches$"):
        verify(SECRET, headers, BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    "now",
    [
        pytest.param(TIMESTAMP + 301, id="301s-old"),
        pytest.param(TIMESTAMP - 301, id="301s-ahead"),
    ],
)
def test_verify_rejects_timestamp_outside_tolerance(now: int) -> None:
    with pytest.raises(VerificationError, match=r"^webhook-timestamp is outside the tolerance$"):
        verify(SECRET, vector_headers(), BODY, now=now)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_rejects_missing_header(missing: str) -> None:
    headers = vector_headers()
    del headers[missing]

    with pytest.raises(VerificationError, match=rf"^missing header {missing}$"):
        verify(SECRET, headers, BODY, now=TIMESTAMP)


@pytest.mark.parametrize("timestamp", ["soon", "", "1614265330.0", "1614265330x"])
def test_verify_rejects_non_integer_timestamp(timestamp: str) -> None:
    with pytest.raises(VerificationError, match=r"^webhook-timestamp is not an integer$"):
        verify(SECRET, vector_headers(timestamp=timestamp), BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    "signature",
    [
        "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        "v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        "v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= v2,Zm9v",
        "",
    ],
)
def test_verify_rejects_without_a_v1_signature(signature: str) -> None:
    with pytest.raises(VerificationError, match=r"^no signature matches$"):
        verify(SECRET, vector_headers(signature), BODY, now=TIMESTAMP)


def test_standardwebhooks_verifies_our_signature() -> None:
    body = b'{"messageId":"m-1","type":"user.created","data":{"id":7}}'
    timestamp = int(time.time())
    headers = {
        "webhook-id": "m-1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret_key(SECRET), "m-1", timestamp, body),
    }

    parsed = Webhook(SECRET).verify(body, headers)

    assert parsed == {"messageId": "m-1", "type": "user.created", "data": {"id": 7}}


def test_standardwebhooks_rejects_our_signature_over_other_body() -> None:
    timestamp = int(time.time())
    headers = {
        "webhook-id": "m-1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret_key(SECRET), "m-1", timestamp, b'{"a":1}'),
    }

    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(b'{"a":2}', headers)


def test_we_verify_standardwebhooks_signature() -> None:
    timestamp = int(time.time())
    body = '{"a":1}'
    signature = Webhook(SECRET).sign("m-2", datetime.fromtimestamp(timestamp, UTC), body)
    headers = {
        "webhook-id": "m-2",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }

    verify(SECRET, headers, body.encode())
