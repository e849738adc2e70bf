"""`dispatcher listen`: a real process on a real port, sent real signed requests; what it prints,
what it answers, and that the secret never shows."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from multidict import CIMultiDict
from standardwebhooks.webhooks import Webhook

from dispatcher.manage import admin
from dispatcher.ops.receiver import Rules, check_secret, judge
from tests.conftest import Cli, add_webhook, fast_settings, publish, running

MASK = "whsec_… (the webhook's secret; `webhooks show` prints it)"
START = re.compile(r"listening on (http://127\.0\.0\.1:\d+)(/\S*) \(answering (\d+); (.+)\)\n")
BODY = b'{"type": "customer.updated", "data": {"id": 42, "name": "Ada"}}'


def random_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def signed(
    secret: str, body: bytes = BODY, message_id: str = "msg_1", at: int | None = None
) -> dict[str, str]:
    """Headers as the daemon sends them, the raw secret header included."""
    timestamp = int(time.time()) if at is None else at
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        # Signed by the reference library, so `listen` is checked against it, not against us.
        "webhook-signature": Webhook(secret).sign(
            message_id, datetime.fromtimestamp(timestamp, UTC), body
        ),
        "webhook-secret": secret,
    }


@dataclass
class Listener:
    """A running `dispatcher listen`; everything read from it is kept in `seen`."""

    proc: asyncio.subprocess.Process
    url: str
    start: re.Match[str]
    seen: list[str] = field(default_factory=list)

    async def line(self, within_s: float = 10.0) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), within_s)
        assert raw, "the listener closed its stdout"
        self.seen.append(raw.decode())
        return raw.decode()

    async def record(self) -> dict[str, Any]:
        """The next --json line."""
        value: dict[str, Any] = orjson.loads(await self.line())
        return value

    async def block(self) -> list[str]:
        """The next request as printed for people, up to its `answered` line."""
        lines: list[str] = []
        while not lines or not lines[-1].startswith("  answered "):
            lines.append((await self.line()).rstrip("\n"))
        assert await self.line() == "\n"
        return lines

    async def post(
        self, path: str, headers: dict[str, str], body: bytes = BODY, method: str = "POST"
    ) -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.request(method, self.url + path, data=body, headers=headers) as response,
        ):
            return response.status, await response.json()

    async def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        """Signal it; return its exit code and everything it printed on both streams."""
        self.proc.send_signal(signum)
        out, err = await asyncio.wait_for(self.proc.communicate(), 10)
        assert self.proc.returncode is not None
        return self.proc.returncode, "".join(self.seen) + out.decode() + err.decode()


def listen_environment() -> dict[str, str]:
    """The caller's environment minus any DISPATCHER_* setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}


@asynccontextmanager
async def listening(*args: str) -> AsyncIterator[Listener]:
    """Start `dispatcher listen --port 0 ARGS`; wait for its start line; kill it at the end."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher",
        "listen",
        "--port",
        "0",
        *args,
        env=listen_environment(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        first = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        start = START.fullmatch(first)
        assert start is not None, first
        yield Listener(proc, start[1], start, [first])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- verification ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_good_signature_is_verified_and_answered_the_chosen_status() -> None:
    secret = random_secret()
    async with listening("--secret", secret, "--status", "202", "--json") as listener:
        assert listener.start[4] == "verifying with the given secret"
        sent = signed(secret)
        status, reply = await listener.post("/hooks/a", sent)
        assert (status, reply) == (202, {"received": True, "verified": True})
        record = await listener.record()
        code, output = await listener.stop()
    received_at = datetime.fromisoformat(record.pop("received_at"))
    assert abs(received_at - datetime.now(UTC)) < timedelta(seconds=30)
    headers = record.pop("headers")
    assert record == {
        "method": "POST",
        "path": "/hooks/a",
        "body": {"type": "customer.updated", "data": {"id": 42, "name": "Ada"}},
        "verified": True,
        "error": None,
        "answered_status": 202,
    }
    for name in ("content-type", "webhook-id", "webhook-signature"):
        assert headers[name] == sent[name]
    assert headers["webhook-secret"] == MASK
    assert code == 0
    assert secret not in output
    assert secret.removeprefix("whsec_") not in output


@pytest.mark.slow
async def test_a_tampered_body_a_wrong_secret_or_a_stale_timestamp_is_answered_400() -> None:
    secret = random_secret()
    async with listening("--secret", secret, "--json") as listener:
        cases = [
            (signed(secret), BODY.replace(b"42", b"43"), "no signature matches"),
            (signed(random_secret()), BODY, "no signature matches"),
            (
                signed(secret, at=int(time.time()) - 600),
                BODY,
                "webhook-timestamp is outside the tolerance",
            ),
            ({"content-type": "application/json"}, BODY, "missing header webhook-id"),
        ]
        for headers, body, error in cases:
            status, reply = await listener.post("/", headers, body)
            assert (status, reply) == (400, {"received": True, "verified": False, "error": error})
            record = await listener.record()
            assert (record["verified"], record["error"], record["answered_status"]) == (
                False,
                error,
                400,
            )
            assert record["body"] == orjson.loads(body)
        code, output = await listener.stop()
    assert code == 0
    assert secret not in output


@pytest.mark.slow
async def test_without_a_secret_every_request_gets_the_status_unchecked() -> None:
    async with listening("--status", "503", "--json") as listener:
        assert listener.start.group(3, 4) == ("503", "not verifying: no --webhook or --secret")
        for headers, body in [(signed(random_secret()), BODY), ({}, b"not json")]:
            status, reply = await listener.post("/anything", headers, body)
            assert (status, reply) == (503, {"received": True, "verified": None})
            record = await listener.record()
            assert (record["verified"], record["error"], record["answered_status"]) == (
                None,
                None,
                503,
            )
        assert record["body"] == "not json"


@pytest.mark.slow
async def test_people_see_the_headers_the_body_and_the_verdict_but_never_the_secret() -> None:
    secret = random_secret()
    async with listening("--secret", secret) as listener:
        headers = signed(secret)
        assert (await listener.post("/hooks", headers))[0] == 200
        good = await listener.block()
        assert (await listener.post("/hooks", headers, BODY + b" "))[0] == 400
        bad = await listener.block()
        async with listening() as unchecked:
            await unchecked.post("/", {}, b"hello")
            plain = await unchecked.block()
        code, output = await listener.stop(signal.SIGINT)

    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  POST /hooks", good[0]), good[0]
    assert good[1:] == [
        f"  webhook-id: {headers['webhook-id']}",
        f"  webhook-timestamp: {headers['webhook-timestamp']}",
        f"  webhook-signature: {headers['webhook-signature']}",
        f"  webhook-secret: {MASK}",
        "",
        "  {",
        '    "type": "customer.updated",',
        '    "data": {',
        '      "id": 42,',
        '      "name": "Ada"',
        "    }",
        "  }",
        "",
        "  signature: verified",
        "  answered 200",
    ]
    assert bad[-2:] == ["  signature: INVALID (no signature matches)", "  answered 400"]
    assert plain[1:] == [
        "",
        "  hello",
        "",
        "  signature: not checked (no --webhook or --secret)",
        "  answered 200",
    ]
    assert code == 0
    assert secret not in output
    assert secret.removeprefix("whsec_") not in output


# --- what it accepts ------------------------------------------------------------------------


@pytest.mark.slow
async def test_path_limits_posts_to_that_path_and_below_and_other_methods_get_405() -> None:
    async with listening("--path", "/hooks/", "--json") as listener:
        assert listener.start[2] == "/hooks"
        for method, path, status in [
            ("POST", "/hooks", 200),
            ("POST", "/hooks/stripe", 200),
            ("POST", "/hooksx", 404),
            ("POST", "/", 404),
            ("GET", "/hooks", 405),
        ]:
            answered, _ = await listener.post(path, {}, method=method)
            assert answered == status, (method, path)
            record = await listener.record()
            assert (record["method"], record["path"], record["answered_status"]) == (
                method,
                path,
                status,
            )
            assert (record["error"] is None) == (status == 200)


@pytest.mark.parametrize(
    ("status", "method", "path", "headers", "answered", "verified", "error"),
    [
        (200, "POST", "/x", "good", 200, True, None),
        (503, "POST", "/x", "good", 503, True, None),
        (503, "POST", "/x", "wrong", 400, False, "no signature matches"),
        (503, "POST", "/x", "none", 400, False, "missing header webhook-id"),
        (201, "PUT", "/x", "good", 405, None, "method PUT not allowed: only POST is accepted"),
        (201, "POST", "/y", "good", 404, None, "path /y is outside --path /x"),
    ],
)
def test_judge(
    status: int,
    method: str,
    path: str,
    headers: str,
    answered: int,
    verified: bool | None,
    error: str | None,
) -> None:
    secret = random_secret()
    sent = {"good": signed(secret), "wrong": signed(random_secret()), "none": {}}[headers]
    rules = Rules(status=status, path="/x", secrets=(secret,))
    received = judge(rules, method, path, CIMultiDict(sent), BODY)
    assert (received.answered_status, received.verified, received.error) == (
        answered,
        verified,
        error,
    )
    assert received.headers.get("webhook-secret", MASK) == MASK


@pytest.mark.parametrize(
    ("secret", "ok"),
    [
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", True),
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", False),
        ("whsec_", False),
        ("whsec_!!!!", False),
    ],
)
def test_check_secret(secret: str, ok: bool) -> None:
    if ok:
        assert check_secret(secret) == secret
    else:
        with pytest.raises(ValueError, match="expected whsec_ followed by base64"):
            check_secret(secret)


# --- the database's secret ------------------------------------------------------------------


@pytest.mark.slow
async def test_webhook_reads_its_secret_from_the_database(db: asyncpg.Pool, dsn: str) -> None:
    webhook_id, secret = await add_webhook(db, "http://127.0.0.1:9/", ["t.x"])
    args = ("--database-url", dsn, "--webhook", str(webhook_id), "--json")
    async with listening(*args) as listener:
        assert listener.start[4] == f"verifying with webhook {webhook_id}'s secret"
        assert (await listener.post("/", signed(secret)))[0] == 200
        assert (await listener.record())["verified"] is True
        assert (await listener.post("/", signed(random_secret())))[0] == 400
        assert (await listener.record())["verified"] is False
        code, output = await listener.stop()
    assert code == 0
    assert secret not in output


@pytest.mark.slow
async def test_webhook_accepts_the_previous_secret_during_a_rotation(
    db: asyncpg.Pool, dsn: str
) -> None:
    webhook_id, old = await add_webhook(db, "http://127.0.0.1:9/", ["t.x"])
    async with db.acquire() as conn:
        new = (await admin.rotate_secret(conn, webhook_id, timedelta(hours=1)))["secret"]
    args = ("--database-url", dsn, "--webhook", str(webhook_id), "--json")
    async with listening(*args) as listener:
        assert listener.start[4] == (
            f"verifying with webhook {webhook_id}'s secret and its previous one"
        )
        for secret in (old, new):
            assert (await listener.post("/", signed(secret)))[0] == 200
            assert (await listener.record())["verified"] is True
        assert (await listener.post("/", signed(random_secret())))[0] == 400


async def test_an_unknown_webhook_is_one_error_line(cli: Cli) -> None:
    assert await cli.error("listen", "--webhook", "999") == "error: webhook 999 does not exist\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--webhook", "1", "--secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], "not both"),
        (["--secret", "hunter2"], "expected whsec_ followed by base64"),
        (["--path", "hooks"], "must start with /"),
        (["--status", "100"], "200<=x<=599"),
    ],
)
async def test_bad_options_are_usage_errors(cli: Cli, args: list[str], message: str) -> None:
    result = await cli("listen", *args)
    assert result.exit_code == 2
    assert message in result.output


# --- the process --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_it_with_exit_0(signum: int) -> None:
    async with listening() as listener:
        code, output = await listener.stop(signum)
    assert code == 0
    assert "Traceback" not in output


@pytest.mark.slow
async def test_a_port_in_use_is_one_error_line_naming_it_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dispatcher",
            "listen",
            "--port",
            str(port),
            env=listen_environment(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 1
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: cannot listen on 127.0.0.1 port {port}: ")


# --- end to end -----------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_daemon_delivers_to_the_listener_and_it_verifies(
    db: asyncpg.Pool, dsn: str
) -> None:
    webhook_id, secret = await add_webhook(db, "http://127.0.0.1:9/", ["customer.updated"])
    async with listening("--database-url", dsn, "--webhook", str(webhook_id)) as listener:
        await db.execute(
            "UPDATE dispatcher.webhooks SET url = $2 WHERE id = $1", webhook_id, listener.url + "/"
        )
        message_id = await publish(db, "customer.updated", '{"id": 42}')
        async with running(fast_settings(), dsn):
            block = await listener.block()
        code, output = await listener.stop()
    assert block[0].endswith("  POST /")
    assert f"  webhook-id: {message_id}" in block
    assert f"  webhook-secret: {MASK}" in block
    assert '      "id": 42' in block
    assert block[-2:] == ["  signature: verified", "  answered 200"]
    assert code == 0
    assert secret not in output


@pytest.mark.slow
async def test_a_chosen_failure_status_makes_the_daemon_retry(db: asyncpg.Pool, dsn: str) -> None:
    webhook_id, _ = await add_webhook(db, "http://127.0.0.1:9/", ["customer.updated"])
    args = ("--database-url", dsn, "--webhook", str(webhook_id), "--status", "503", "--json")
    async with listening(*args) as listener:
        await db.execute(
            "UPDATE dispatcher.webhooks SET url = $2 WHERE id = $1", webhook_id, listener.url
        )
        message_id = await publish(db, "customer.updated")
        async with running(fast_settings(), dsn):
            attempts = [await listener.record() for _ in range(2)]
    assert [
        (a["headers"]["webhook-id"], a["verified"], a["answered_status"]) for a in attempts
    ] == [(message_id, True, 503)] * 2
