"""Secrets: rotation with a grace period, signature-only mode, interop with the reference
`standardwebhooks` verifier, and the secret never leaking into logs, attempts or --json output."""

from __future__ import annotations

import asyncio
import base64
import inspect
import math
import os
import secrets as random_secrets
import signal
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from dispatcher.delivery.signing import VerificationError, verify
from tests.conftest import Cli, Received, Receiver, add_webhook, deliver_all, fast_settings, publish


def lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def signatures(request: Received) -> list[str]:
    return lowered(request.headers)["webhook-signature"].split(" ")


def reference_signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """Sign with the reference `standardwebhooks` library, not with our own sign()."""
    return Webhook(secret).sign(message_id, datetime.fromtimestamp(timestamp, UTC), body)


def expected_signature(secret: str, request: Received) -> str:
    """Sign the captured request again with `secret`, over the bytes that arrived."""
    headers = lowered(request.headers)
    return reference_signature(
        secret, headers["webhook-id"], int(headers["webhook-timestamp"]), request.body
    )


def with_signature(request: Received, signature: str) -> dict[str, str]:
    return {**lowered(request.headers), "webhook-signature": signature}


def random_secret() -> str:
    return "whsec_" + base64.b64encode(random_secrets.token_bytes(32)).decode()


def assert_one_line_error(output: str, message: str) -> None:
    assert output == f"error: {message}\n"


async def show(cli: Cli, webhook_id: int | str) -> dict[str, object]:
    shown: dict[str, object] = await cli.json("webhooks", "show", str(webhook_id))
    return shown


async def stored_secret(db: asyncpg.Pool, webhook_id: int) -> str:
    secret: str = await db.fetchval(
        "SELECT secret FROM dispatcher.webhooks WHERE id = $1", webhook_id
    )
    return secret


async def deliver_one(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, **settings: object
) -> Received:
    """Publish one event, run the daemon until idle, and return the request that arrived."""
    before = len(receiver.requests)
    await publish(db, "t.x", '{"n": 1}')
    await deliver_all(fast_settings(**settings), dsn)
    assert len(receiver.requests) == before + 1
    return receiver.requests[-1]


# --- rotation ---------------------------------------------------------------------------------


async def test_rotation_signs_with_both_secrets_during_the_grace_period_then_only_the_new(
    cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    webhook_id, old = await add_webhook(db, receiver.url, ["t.x"])

    rotated = await cli.json("webhooks", "rotate-secret", str(webhook_id), "--grace", "1h")
    shown = await show(cli, webhook_id)
    new = shown["secret"]
    assert isinstance(new, str)
    assert new.startswith("whsec_")
    assert new != old
    assert new == await stored_secret(db, webhook_id)
    assert shown["previous_secret"] == old
    expires_text = shown["previous_secret_expires_at"]
    assert isinstance(expires_text, str)
    expires = datetime.fromisoformat(expires_text)
    assert abs(expires - (datetime.now(UTC) + timedelta(hours=1))) < timedelta(seconds=30)
    assert rotated["previous_secret_expires_at"] == expires_text

    during = await deliver_one(db, dsn, receiver)
    first, second = signatures(during)
    assert first.startswith("v1,")
    assert second.startswith("v1,")
    assert first == expected_signature(new, during)
    assert second == expected_signature(old, during)
    verify(new, with_signature(during, first), during.body)
    verify(old, with_signature(during, second), during.body)
    with pytest.raises(VerificationError, match="no signature matches"):
        verify(old, with_signature(during, first), during.body)
    verify(new, lowered(during.headers), during.body)
    verify(old, lowered(during.headers), during.body)
    assert lowered(during.headers)["webhook-secret"] == new

    # The grace period ends: backdate it rather than wait an hour.
    await db.execute(
        "UPDATE dispatcher.webhooks SET previous_secret_expires_at = now() - interval '1 second'"
        " WHERE id = $1",
        webhook_id,
    )
    after = await deliver_one(db, dsn, receiver)
    assert signatures(after) == [expected_signature(new, after)]
    with pytest.raises(VerificationError, match="no signature matches"):
        verify(old, lowered(after.headers), after.body)
    assert lowered(after.headers)["webhook-secret"] == new
    shown = await show(cli, webhook_id)
    assert (shown["secret"], shown["previous_secret"], shown["previous_secret_expires_at"]) == (
        new,
        None,
        None,
    )


async def test_rotation_with_zero_grace_drops_the_old_secret_at_once(
    cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    webhook_id, old = await add_webhook(db, receiver.url, ["t.x"])

    rotated = await cli.json("webhooks", "rotate-secret", str(webhook_id), "--grace", "0")
    assert rotated["previous_secret_expires_at"] is None
    shown = await show(cli, webhook_id)
    new = shown["secret"]
    assert isinstance(new, str)
    assert new != old
    assert (shown["previous_secret"], shown["previous_secret_expires_at"]) == (None, None)

    request = await deliver_one(db, dsn, receiver)
    assert signatures(request) == [expected_signature(new, request)]
    with pytest.raises(VerificationError, match="no signature matches"):
        verify(old, lowered(request.headers), request.body)


async def test_rotation_grace_is_at_most_seven_days(cli: Cli, db: asyncpg.Pool) -> None:
    webhook_id, old = await add_webhook(db, "http://127.0.0.1:9/", ["t.x"])

    for too_long in ("8d", "168h1s"):
        result = await cli("webhooks", "rotate-secret", str(webhook_id), "--grace", too_long)
        assert isinstance(result.exception, SystemExit), result.exception
        # A value out of the option's range is a usage error, like --limit 0.
        assert result.exit_code == 2
        assert result.output.endswith(
            f"Error: Invalid value for '--grace': '{too_long}' is too long: at most 168h\n"
        )
    assert await stored_secret(db, webhook_id) == old

    rotated = await cli.json("webhooks", "rotate-secret", str(webhook_id), "--grace", "7d")
    expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=7))) < timedelta(seconds=30)


async def test_rotating_an_unknown_webhook_is_a_one_line_error(cli: Cli) -> None:
    output = await cli.error("webhooks", "rotate-secret", "999999", "--grace", "1h")
    assert_one_line_error(output, "webhook 999999 does not exist")


async def test_webhooks_test_double_signs_during_the_grace_period(
    cli: Cli, db: asyncpg.Pool, receiver: Receiver
) -> None:
    webhook_id, old = await add_webhook(db, receiver.url, ["t.x"])
    await cli.json("webhooks", "rotate-secret", str(webhook_id), "--grace", "1h")
    new = await stored_secret(db, webhook_id)

    result = await cli.json("webhooks", "test", str(webhook_id))

    assert result["delivered"] is True
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert signatures(request) == [
        expected_signature(new, request),
        expected_signature(old, request),
    ]
    assert result["request"]["headers"]["webhook-signature"] == " ".join(signatures(request))
    assert lowered(request.headers)["webhook-secret"] == new


# --- signature-only mode ----------------------------------------------------------------------


@pytest.mark.parametrize("header_name", ["webhook-secret", "x-hook-secret"])
async def test_without_the_secret_header_requests_are_still_signed(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, header_name: str
) -> None:
    _, secret = await add_webhook(db, receiver.url, ["t.x"])

    request = await deliver_one(
        db, dsn, receiver, send_secret_header=False, secret_header=header_name
    )

    headers = lowered(request.headers)
    assert "webhook-secret" not in headers
    assert header_name not in headers
    assert [name for name, value in headers.items() if secret in value] == []
    assert signatures(request) == [expected_signature(secret, request)]
    verify(secret, headers, request.body)


async def test_the_secret_header_uses_the_configured_name_when_enabled(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    _, secret = await add_webhook(db, receiver.url, ["t.x"])

    request = await deliver_one(db, dsn, receiver, secret_header="x-hook-secret")

    headers = lowered(request.headers)
    assert headers["x-hook-secret"] == secret
    assert "webhook-secret" not in headers


async def test_webhooks_test_sends_no_secret_header_in_signature_only_mode(
    cli: Cli, db: asyncpg.Pool, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCHER_SEND_SECRET_HEADER", "false")
    webhook_id, secret = await add_webhook(db, receiver.url, ["t.x"])

    result = await cli.json("webhooks", "test", str(webhook_id))

    assert result["delivered"] is True
    request = receiver.requests[0]
    headers = lowered(request.headers)
    assert "webhook-secret" not in headers
    assert "webhook-secret" not in result["request"]["headers"]
    verify(secret, headers, request.body)


# --- interop with the reference verifier ------------------------------------------------------


async def test_a_delivered_request_verifies_with_the_standardwebhooks_library(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    _, secret = await add_webhook(db, receiver.url, ["t.x"])

    request = await deliver_one(db, dsn, receiver)

    parsed = Webhook(secret).verify(request.body, request.headers)
    assert parsed == orjson.loads(request.body)
    verify(secret, lowered(request.headers), request.body)


async def test_both_secrets_verify_with_standardwebhooks_during_a_rotation(
    cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    webhook_id, old = await add_webhook(db, receiver.url, ["t.x"])
    await cli.json("webhooks", "rotate-secret", str(webhook_id), "--grace", "1h")
    new = await stored_secret(db, webhook_id)

    request = await deliver_one(db, dsn, receiver)

    assert Webhook(new).verify(request.body, request.headers) == orjson.loads(request.body)
    assert Webhook(old).verify(request.body, request.headers) == orjson.loads(request.body)


def assert_both_reject(secret: str, headers: Mapping[str, str], body: bytes) -> None:
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, dict(headers))
    with pytest.raises(VerificationError):
        verify(secret, headers, body)


def assert_both_accept(secret: str, headers: Mapping[str, str], body: bytes) -> None:
    Webhook(secret).verify(body, dict(headers))
    verify(secret, headers, body)


async def test_tampering_a_wrong_secret_and_stale_or_future_timestamps_are_rejected_by_both(
    db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    _, secret = await add_webhook(db, receiver.url, ["t.x"])
    request = await deliver_one(db, dsn, receiver)
    headers = lowered(request.headers)
    assert_both_accept(secret, headers, request.body)

    tampered = request.body.replace(b'"n": 1', b'"n": 2')
    assert tampered != request.body
    assert_both_reject(secret, headers, tampered)
    assert_both_reject(random_secret(), headers, request.body)

    def resigned(timestamp: int) -> dict[str, str]:
        signature = reference_signature(secret, headers["webhook-id"], timestamp, request.body)
        return {**headers, "webhook-timestamp": str(timestamp), "webhook-signature": signature}

    # Rounded away from "now" so that the moments between signing and verifying cannot move a
    # timestamp back inside the tolerance (or, for the accepted ones, out of it).
    assert_both_reject(secret, resigned(math.floor(time.time()) - 301), request.body)
    assert_both_reject(secret, resigned(math.ceil(time.time()) + 301), request.body)
    assert_both_accept(secret, resigned(math.ceil(time.time()) - 299), request.body)
    assert_both_accept(secret, resigned(math.floor(time.time()) + 299), request.body)


@pytest.mark.parametrize(
    ("offset_s", "accepted"),
    [(-301, False), (-300, True), (0, True), (300, True), (301, False)],
)
def test_verify_tolerance_is_five_minutes_either_way(offset_s: int, accepted: bool) -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    now = 1_700_000_000
    body = b'{"test": 2432232314}'
    timestamp = now + offset_s
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": reference_signature(
            secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp, body
        ),
    }
    if accepted:
        verify(secret, headers, body, now=now)
    else:
        with pytest.raises(VerificationError, match="outside the tolerance"):
            verify(secret, headers, body, now=now)


def test_verify_compares_signatures_in_constant_time() -> None:
    source = inspect.getsource(verify)
    assert "hmac.compare_digest(" in source
    assert "candidate ==" not in source
    assert "== good" not in source


# --- secrets stay secret ----------------------------------------------------------------------


async def run_daemon_until_requests(
    receiver: Receiver, dsn: str, count: int, log_path: Path
) -> str:
    """Run `dispatcher run` at log level debug until `count` requests arrived, stop it with
    SIGTERM (which lets in-flight attempts finish and flushes their outcomes), and return what
    it printed."""
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")},
        "DISPATCHER_DATABASE_URL": dsn,
        "DISPATCHER_RETRY_SCHEDULE": "[]",
        "DISPATCHER_POLL_INTERVAL_S": "0.2",
        "DISPATCHER_FLUSH_INTERVAL_S": "0.005",
        "DISPATCHER_ALLOWED_NETWORKS": "127.0.0.0/8",
        "DISPATCHER_LOG_FORMAT": "json",
        "DISPATCHER_LOG_LEVEL": "debug",
    }
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dispatcher",
            "run",
            env=environ,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await receiver.wait_for(count)
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return await asyncio.to_thread(log_path.read_text)


def needles(*secrets: str) -> list[str]:
    """The secrets and their base64 key parts: neither may appear anywhere but `webhooks show`."""
    return [s for secret in secrets for s in (secret, secret.removeprefix("whsec_"))]


@pytest.mark.slow
async def test_secrets_never_appear_in_debug_logs_or_stored_attempts(
    cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver, tmp_path: Path
) -> None:
    async def fail_on_fail_path(request: web.Request, rec: Receiver) -> web.StreamResponse:
        if request.path == "/fail":
            return web.Response(status=500, text="internal error")
        return web.Response(text="ok")

    receiver.handler = fail_on_fail_path
    failing_id, failing_old = await add_webhook(db, receiver.url + "/fail", ["t.x"], name="f")
    _, ok_secret = await add_webhook(db, receiver.url + "/ok", ["t.x"], name="o")
    # A rotation in its grace period puts a previous secret into play as well.
    await cli.json("webhooks", "rotate-secret", str(failing_id), "--grace", "1h")
    failing_new = await stored_secret(db, failing_id)
    await publish(db, "t.x", '{"n": 1}')

    output = await run_daemon_until_requests(receiver, dsn, 2, tmp_path / "daemon.log")

    assert len(receiver.requests) == 2
    assert await db.fetchval("SELECT count(*) FROM dispatcher.attempts") == 2
    events = [orjson.loads(line)["event"] for line in output.splitlines() if line.startswith("{")]
    assert "daemon_started" in events
    assert "attempt_failed" in events
    assert await db.fetchval(
        "SELECT array_agg(status ORDER BY webhook_id) FROM dispatcher.deliveries"
    ) == ["failed", "succeeded"]
    hidden = needles(failing_old, failing_new, ok_secret)
    assert [s for s in hidden if s in output] == []
    leaked_attempts = await db.fetchval(
        "SELECT count(*) FROM dispatcher.attempts a, unnest($1::text[]) AS s(needle)"
        " WHERE strpos(a::text, s.needle) > 0",
        hidden,
    )
    assert leaked_attempts == 0


async def test_json_output_of_every_command_but_show_hides_the_secrets(
    cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    outputs: dict[str, str] = {}
    outputs["webhooks add"] = await cli.ok(
        "webhooks", "add", "--name", "svc", "--url", receiver.url, "--events", "t.x", "--json"
    )
    webhook_id = str(orjson.loads(outputs["webhooks add"])["id"])
    first = (await show(cli, webhook_id))["secret"]
    outputs["webhooks rotate-secret"] = await cli.ok(
        "webhooks", "rotate-secret", webhook_id, "--grace", "1h", "--json"
    )
    shown = await show(cli, webhook_id)
    second = shown["secret"]
    assert isinstance(first, str)
    assert isinstance(second, str)
    assert shown["previous_secret"] == first

    outputs["webhooks list"] = await cli.ok("webhooks", "list", "--json")
    outputs["webhooks edit"] = await cli.ok(
        "webhooks", "edit", webhook_id, "--description", "d", "--json"
    )
    outputs["webhooks events"] = await cli.ok(
        "webhooks", "events", webhook_id, "--add", "t.y", "--json"
    )
    outputs["webhooks disable"] = await cli.ok("webhooks", "disable", webhook_id, "--json")
    outputs["webhooks enable"] = await cli.ok("webhooks", "enable", webhook_id, "--json")
    outputs["webhooks test"] = await cli.ok("webhooks", "test", webhook_id, "--json")
    outputs["events publish"] = await cli.ok("events", "publish", "t.x", "--data", "{}", "--json")
    message_id = orjson.loads(outputs["events publish"])["message_id"]
    await deliver_all(fast_settings(), dsn)
    outputs["events resend"] = await cli.ok("events", "resend", message_id, "--json")
    await deliver_all(fast_settings(), dsn)
    outputs["deliveries list"] = await cli.ok("deliveries", "list", "--json")
    delivery_ids = [d["id"] for d in orjson.loads(outputs["deliveries list"])]
    assert len(delivery_ids) == 3
    for delivery_id in delivery_ids:
        outputs[f"deliveries show {delivery_id}"] = await cli.ok(
            "deliveries", "show", str(delivery_id), "--json"
        )
    outputs["deliveries resend"] = await cli.ok(
        "deliveries", "resend", "--since", "1h", "--dry-run", "--json"
    )
    outputs["stats"] = await cli.ok("stats", "--json")

    assert len(receiver.requests) == 3
    hidden = needles(first, second)
    leaks = {name: [s for s in hidden if s in out] for name, out in outputs.items()}
    assert leaks == {name: [] for name in outputs}
    # The secrets are in `webhooks show`, and the receivers did get them: the check above is
    # not vacuous.
    assert lowered(receiver.requests[-1].headers)["webhook-secret"] == second
