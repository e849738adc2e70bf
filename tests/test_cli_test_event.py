"""`dispatcher webhooks test`: one signed request to a real receiver, shown exactly as sent and
recorded as a `test` delivery; no other webhook gets it and the secret is never printed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from click.testing import Result
from standardwebhooks.webhooks import Webhook

from tests.conftest import Cli, Receiver, add_webhook, deliver_all, fast_settings

GENERIC_PAYLOAD = {"test": True, "message": "This is a test event from webhook-dispatcher."}
MASK = "whsec_… (the webhook's secret; `webhooks show` prints it)"
SENT_HEADERS = [
    "content-type",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "webhook-secret",
]


@dataclass
class Printed:
    """The human output of `webhooks test`, taken apart."""

    url: str
    request_headers: dict[str, str]
    request_body: str
    response_line: str
    response_headers: dict[str, str]
    response_body: str | None
    delivery_id: int
    message_id: str


def parse_printed(output: str) -> Printed:
    blocks = output.rstrip("\n").split("\n\n")
    request_lines = blocks[0].splitlines()
    assert request_lines[0].startswith("Request  POST ")
    url = request_lines[0].removeprefix("Request  POST ")
    request_headers = dict(_header(line) for line in request_lines[1:])
    assert blocks[1].startswith("  ")
    response_lines = blocks[2].splitlines()
    if response_lines[0].startswith("Response none: "):
        assert len(blocks) == 4
        response_headers: dict[str, str] = {}
        response_body = None
    else:
        assert len(blocks) == 5
        response_headers = dict(_header(line) for line in response_lines[1:])
        response_body = blocks[3].removeprefix("  ")
    recorded = re.fullmatch(
        r"Recorded as test delivery (\d+) \(message ([0-9a-f-]{36})\);"
        r" see `dispatcher deliveries show \1`\.",
        blocks[-1],
    )
    assert recorded is not None, blocks[-1]
    return Printed(
        url=url,
        request_headers=request_headers,
        request_body=blocks[1].removeprefix("  "),
        response_line=response_lines[0],
        response_headers=response_headers,
        response_body=response_body,
        delivery_id=int(recorded[1]),
        message_id=recorded[2],
    )


def _header(line: str) -> tuple[str, str]:
    assert line.startswith("  "), line
    name, value = line.removeprefix("  ").split(": ", 1)
    return name, value


async def answer(request: web.Request, rec: Receiver) -> web.Response:
    status = 500 if request.path.startswith("/broken") else 200
    return web.Response(status=status, text=f"answer {status}", headers={"X-Test": "yes"})


@dataclass
class Setup:
    webhook_id: int
    secret: str
    others: list[int]


async def three_subscribers(db: asyncpg.Pool, receiver: Receiver, path: str = "/w") -> Setup:
    """The webhook under test plus two others that would get t.x in a normal fan-out."""
    receiver.handler = answer
    wid, secret = await add_webhook(db, receiver.url + path, ["t.x", "t.y"], name="Under test")
    exact, _ = await add_webhook(db, receiver.url + "/other", ["t.x"], name="Other")
    star, _ = await add_webhook(db, receiver.url + "/all", ["*"], name="All")
    return Setup(wid, secret, [exact, star])


async def assert_only_the_test_delivery(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, setup: Setup, status: str
) -> asyncpg.Record:
    """The log holds one test delivery, to this webhook only, and a daemon sends nothing more."""
    rows = await db.fetch("SELECT * FROM dispatcher.deliveries")
    assert [(r["webhook_id"], r["kind"], r["status"], r["attempts"]) for r in rows] == [
        (setup.webhook_id, "test", status, 1)
    ]
    assert await db.fetchval("SELECT count(*) FROM dispatcher.attempts") == 1
    before = len(receiver.requests)
    await deliver_all(fast_settings(), dsn)
    assert len(receiver.requests) == before
    assert receiver.on("/other") == []
    assert receiver.on("/all") == []
    row: asyncpg.Record = rows[0]
    return row


async def refused_test(cli: Cli, *args: str) -> Result:
    """Run `webhooks test` against an endpoint that does not answer 2xx: exit code 1, the full
    report on stdout, and one `error:` line on stderr saying why."""
    result = await cli("webhooks", "test", *args)
    assert result.exit_code == 1, result.output
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: webhook {args[0]} did not accept the test event (")
    return result


def assert_secret_hidden(output: str, secret: str) -> None:
    assert secret not in output
    assert secret.removeprefix("whsec_") not in output
    assert secret.removeprefix("whsec_")[:16] not in output


async def test_human_output_is_exactly_what_the_receiver_got(
    cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    setup = await three_subscribers(db, receiver)

    output = await cli.ok("webhooks", "test", str(setup.webhook_id), "--event-type", "t.x")

    printed = parse_printed(output)
    [req] = receiver.requests
    assert req.path == "/w"
    assert printed.url == receiver.url + "/w"
    assert list(printed.request_headers) == SENT_HEADERS
    received = {k.lower(): v for k, v in req.headers.items()}
    for name, value in printed.request_headers.items():
        if name == "webhook-secret":
            assert value == MASK
            assert received[name] == setup.secret
        else:
            assert received[name] == value, name
    assert printed.request_body.encode() == req.body
    Webhook(setup.secret).verify(req.body, received)
    Webhook(setup.secret).verify(printed.request_body.encode(), printed.request_headers)
    assert_secret_hidden(output, setup.secret)

    body = orjson.loads(req.body)
    assert (body["messageId"], body["type"], body["data"]) == (
        printed.message_id,
        "t.x",
        GENERIC_PAYLOAD,
    )
    assert printed.request_headers["webhook-id"] == printed.message_id

    delivery = await assert_only_the_test_delivery(db, dsn, receiver, setup, "succeeded")
    attempt = await db.fetchrow("SELECT * FROM dispatcher.attempts")
    assert printed.response_line == f"Response 200 (delivered) in {attempt['duration_ms']} ms"
    assert printed.response_headers["X-Test"] == "yes"
    assert printed.response_headers["Content-Type"] == "text/plain; charset=utf-8"
    assert printed.response_headers["Content-Length"] == "10"
    assert printed.response_body == "answer 200"
    assert printed.delivery_id == delivery["id"]
    assert str(delivery["message_id"]) == printed.message_id
    assert (delivery["last_response_status"], delivery["last_error_kind"]) == (200, None)
    assert delivery["lease_token"] is None
    assert (attempt["delivery_id"], attempt["attempt"], attempt["response_status"]) == (
        delivery["id"],
        1,
        200,
    )
    assert (attempt["response_body"], attempt["error_kind"]) == ("answer 200", None)
    event = await db.fetchrow("SELECT event_type, payload::text AS payload FROM dispatcher.events")
    assert (event["event_type"], orjson.loads(event["payload"])) == ("t.x", GENERIC_PAYLOAD)


async def test_json_output_is_exactly_what_the_receiver_got(
    cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    setup = await three_subscribers(db, receiver)

    output = await cli.ok(
        "webhooks", "test", str(setup.webhook_id), "--event-type", "t.x", "--json"
    )

    data: dict[str, Any] = orjson.loads(output)
    assert list(data) == [
        "delivery_id",
        "message_id",
        "event_type",
        "request",
        "response",
        "delivered",
        "error_kind",
        "error_message",
    ]
    assert list(data["request"]) == ["url", "headers", "body"]
    assert list(data["response"]) == ["status", "headers", "body", "truncated", "duration_ms"]
    [req] = receiver.requests
    received = {k.lower(): v for k, v in req.headers.items()}
    headers = data["request"]["headers"]
    assert list(headers) == SENT_HEADERS
    assert headers["webhook-secret"] == MASK
    assert received["webhook-secret"] == setup.secret
    assert {k: v for k, v in headers.items() if k != "webhook-secret"} == {
        k: received[k] for k in SENT_HEADERS if k != "webhook-secret"
    }
    assert data["request"]["body"].encode() == req.body
    assert data["request"]["url"] == receiver.url + "/w"
    Webhook(setup.secret).verify(data["request"]["body"].encode(), headers)
    Webhook(setup.secret).verify(req.body, received)
    assert_secret_hidden(output, setup.secret)

    delivery = await assert_only_the_test_delivery(db, dsn, receiver, setup, "succeeded")
    attempt = await db.fetchrow("SELECT * FROM dispatcher.attempts")
    response = data["response"]
    assert (response["status"], response["body"], response["truncated"]) == (
        200,
        "answer 200",
        False,
    )
    assert response["headers"]["X-Test"] == "yes"
    assert response["headers"]["Content-Length"] == "10"
    assert response["duration_ms"] == attempt["duration_ms"]
    assert (data["delivered"], data["error_kind"], data["error_message"]) == (True, None, None)
    assert (data["delivery_id"], data["message_id"], data["event_type"]) == (
        delivery["id"],
        str(delivery["message_id"]),
        "t.x",
    )
    assert headers["webhook-id"] == data["message_id"]
    assert orjson.loads(req.body)["data"] == GENERIC_PAYLOAD


async def test_payload_is_the_catalog_sample_when_the_type_has_one(
    cli: Cli, db: asyncpg.Pool, receiver: Receiver
) -> None:
    setup = await three_subscribers(db, receiver)
    sample = {"id": 42, "name": "Ada", "tags": ["a", "b"], "nested": {"ok": True, "n": None}}
    await cli.ok("event-types", "add", "t.x", "--sample", orjson.dumps(sample).decode())
    await cli.ok("event-types", "add", "t.y")  # in the catalog, but without a sample
    await cli.ok("event-types", "add", "t.z", "--sample", '{"other": 1}')

    with_sample = orjson.loads(
        await cli.ok("webhooks", "test", str(setup.webhook_id), "--event-type", "t.x", "--json")
    )
    without_sample = orjson.loads(
        await cli.ok("webhooks", "test", str(setup.webhook_id), "--event-type", "t.y", "--json")
    )

    assert [orjson.loads(r.body)["data"] for r in receiver.requests] == [sample, GENERIC_PAYLOAD]
    assert [orjson.loads(r.body)["type"] for r in receiver.requests] == ["t.x", "t.y"]
    assert orjson.loads(with_sample["request"]["body"])["data"] == sample
    assert orjson.loads(without_sample["request"]["body"])["data"] == GENERIC_PAYLOAD
    assert {r.path for r in receiver.requests} == {"/w"}
    assert await db.fetchval("SELECT count(*) FROM dispatcher.deliveries") == 2


async def test_default_event_type_is_the_first_subscribed_one(
    cli: Cli, db: asyncpg.Pool, receiver: Receiver
) -> None:
    receiver.handler = answer
    listed, _ = await add_webhook(db, receiver.url + "/listed", ["*", "b.b", "a.a"])
    star, _ = await add_webhook(db, receiver.url + "/star", ["*"])

    first = orjson.loads(await cli.ok("webhooks", "test", str(listed), "--json"))
    second = orjson.loads(await cli.ok("webhooks", "test", str(star), "--json"))

    assert (first["event_type"], second["event_type"]) == ("b.b", "webhook.test")
    assert [orjson.loads(r.body)["type"] for r in receiver.requests] == ["b.b", "webhook.test"]
    assert [r.path for r in receiver.requests] == ["/listed", "/star"]


async def test_custom_secret_header_is_masked_too(
    cli: Cli, db: asyncpg.Pool, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.handler = answer
    wid, secret = await add_webhook(db, receiver.url + "/w", ["t.x"])
    config = tmp_path / "dispatcher.toml"
    config.write_text('secret_header = "x-hook-secret"\n')

    human = await cli.ok("webhooks", "test", str(wid), "--config", str(config))
    data = orjson.loads(
        await cli.ok("webhooks", "test", str(wid), "--config", str(config), "--json")
    )

    assert parse_printed(human).request_headers["x-hook-secret"] == MASK
    assert data["request"]["headers"]["x-hook-secret"] == MASK
    assert "webhook-secret" not in data["request"]["headers"]
    assert [r.headers["x-hook-secret"] for r in receiver.requests] == [secret, secret]
    assert_secret_hidden(human, secret)
    assert_secret_hidden(str(data), secret)


async def test_a_500_answer_is_shown_as_a_failure_and_recorded_failed(
    cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    setup = await three_subscribers(db, receiver, path="/broken")

    result = await refused_test(cli, str(setup.webhook_id), "--event-type", "t.x")

    assert (
        result.stderr == f"error: webhook {setup.webhook_id} did not accept the test event"
        " (it answered 500)\n"
    )
    output = result.stdout
    printed = parse_printed(output)
    assert len(receiver.on("/broken")) == 1
    delivery = await assert_only_the_test_delivery(db, dsn, receiver, setup, "failed")
    attempt = await db.fetchrow("SELECT * FROM dispatcher.attempts")
    assert printed.response_line == f"Response 500 (failed) in {attempt['duration_ms']} ms"
    assert printed.response_body == "answer 500"
    assert printed.response_headers["X-Test"] == "yes"
    assert printed.delivery_id == delivery["id"]
    assert (delivery["last_response_status"], delivery["last_error_kind"]) == (500, "status")
    assert delivery["finished_at"] is not None
    assert (attempt["response_status"], attempt["error_kind"], attempt["error_message"]) == (
        500,
        "status",
        "HTTP 500",
    )
    assert_secret_hidden(output, setup.secret)

    as_json = await refused_test(cli, str(setup.webhook_id), "--event-type", "t.x", "--json")
    data = orjson.loads(as_json.stdout)
    assert (data["delivered"], data["error_kind"], data["error_message"]) == (
        False,
        "status",
        "HTTP 500",
    )
    assert (data["response"]["status"], data["response"]["body"]) == (500, "answer 500")
    assert len(receiver.on("/broken")) == 2
    statuses = await db.fetch("SELECT kind, status FROM dispatcher.deliveries ORDER BY id")
    assert [tuple(r) for r in statuses] == [("test", "failed"), ("test", "failed")]


async def test_a_dead_url_is_shown_as_a_connect_error_and_recorded_failed(
    cli: Cli, db: asyncpg.Pool, dead_port: int
) -> None:
    wid, secret = await add_webhook(db, f"http://127.0.0.1:{dead_port}/hook", ["t.x"])

    result = await refused_test(cli, str(wid), "--event-type", "t.x")
    as_json = await refused_test(cli, str(wid), "--event-type", "t.x", "--json")

    assert (
        result.stderr
        == as_json.stderr
        == (f"error: webhook {wid} did not accept the test event (no response: connect)\n")
    )
    output = result.stdout
    data = orjson.loads(as_json.stdout)
    printed = parse_printed(output)
    assert re.fullmatch(r"Response none: connect: .+  \(\d+ ms\)", printed.response_line), (
        printed.response_line
    )
    assert (data["delivered"], data["error_kind"]) == (False, "connect")
    assert data["error_message"]
    recorded_ms = await db.fetchval(
        "SELECT duration_ms FROM dispatcher.attempts WHERE delivery_id = $1", data["delivery_id"]
    )
    assert data["response"] == {
        "status": None,
        "headers": {},
        "body": None,
        "truncated": False,
        "duration_ms": recorded_ms,
    }
    assert_secret_hidden(output, secret)
    assert_secret_hidden(str(data), secret)
    rows = await db.fetch(
        "SELECT kind, status, attempts, last_response_status, last_error_kind"
        " FROM dispatcher.deliveries ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [("test", "failed", 1, None, "connect")] * 2
    kinds = await db.fetch("SELECT error_kind, response_status FROM dispatcher.attempts")
    assert [tuple(r) for r in kinds] == [("connect", None)] * 2


@pytest.mark.parametrize(
    ("event_type", "message"),
    [
        (
            "bad type",
            "invalid event type 'bad type': use a dotted name of letters, digits, '_' and '-',"
            " such as customer.updated",
        ),
        (
            "*",
            "invalid event type '*': use a dotted name of letters, digits, '_' and '-',"
            " such as customer.updated",
        ),
    ],
)
async def test_invalid_event_type_sends_and_records_nothing(
    cli: Cli, db: asyncpg.Pool, receiver: Receiver, event_type: str, message: str
) -> None:
    wid, _ = await add_webhook(db, receiver.url + "/w", ["*"])

    result = await cli("webhooks", "test", str(wid), "--event-type", event_type)

    assert (result.exit_code, result.output) == (1, f"error: {message}\n")
    assert receiver.requests == []
    assert await db.fetchval("SELECT count(*) FROM dispatcher.events") == 0
    assert await db.fetchval("SELECT count(*) FROM dispatcher.deliveries") == 0


async def test_a_disabled_webhook_is_sent_the_test_with_a_note(
    cli: Cli, db: asyncpg.Pool, receiver: Receiver
) -> None:
    wid, _ = await add_webhook(db, receiver.url + "/off", ["t.x"], status="disabled")
    on, _ = await add_webhook(db, receiver.url + "/on", ["t.x"])

    result = await cli("webhooks", "test", str(wid), "--json")

    assert result.exit_code == 0, result.output
    assert result.stderr == (
        f"note: webhook {wid} is disabled: the daemon is not delivering to it;"
        " sending the test anyway.\n"
    )
    assert orjson.loads(result.stdout)["delivered"] is True
    assert len(receiver.on("/off")) == 1
    active = await cli("webhooks", "test", str(on))
    assert (active.exit_code, active.stderr) == (0, "")
