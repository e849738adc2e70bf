"""`dispatcher event-types`, `events`, `deliveries` and `stats` against a real database and real
deliveries: what they print, what they change, and how they fail."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web

from dispatcher.cli.output import ago
from tests.conftest import Cli, Receiver, add_webhook, deliver_all, fast_settings, publish

DELIVERY_FIELDS = [
    "id",
    "message_id",
    "webhook_id",
    "service_name",
    "event_type",
    "kind",
    "status",
    "attempts",
    "last_response_status",
    "last_error_kind",
    "created_at",
    "finished_at",
    "next_attempt_at",
]
ATTEMPT_FIELDS = [
    "attempt",
    "started_at",
    "duration_ms",
    "response_status",
    "response_body",
    "response_truncated",
    "error_kind",
    "error_message",
    "retry_in_s",
    "retry_reason",
]


async def count(db: asyncpg.Pool, sql: str = "", *args: Any) -> int:
    n: int = await db.fetchval(f"SELECT count(*) FROM dispatcher.deliveries {sql}", *args)
    return n


async def usage_error(cli: Cli, *args: str) -> str:
    """Run a command with a malformed value: exit 2, click's usage error; return its last line."""
    result = await cli(*args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Usage: "), result.output
    return result.output.splitlines()[-1]


def shown(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


# --- event-types ------------------------------------------------------------------------

BUILTIN_TYPES = (
    "\n"
    "Built in, published by the daemon; a webhook gets them only by naming them:\n"
    "NAME                          WEBHOOKS\n"
    "dispatcher.webhook.disabled   0\n"
    "dispatcher.webhook.failing    0\n"
    "dispatcher.webhook.recovered  0\n"
)


async def test_event_types_add_list_remove(cli: Cli, db: asyncpg.Pool) -> None:
    assert await cli.ok("event-types", "list") == (
        "The catalog is empty: webhooks may subscribe to any event type.\n" + BUILTIN_TYPES
    )
    assert await cli.json("event-types", "list") == []

    out = await cli.ok(
        "event-types",
        "add",
        "customer.updated",
        "--description",
        "A customer changed",
        "--sample",
        '{"id": 1}',
    )
    assert out == "Added event type customer.updated.\n"
    data = await cli.json("event-types", "add", "invoice.paid")
    assert list(data) == ["name", "description", "sample", "created_at"]
    assert (data["name"], data["description"], data["sample"]) == ("invoice.paid", "", None)
    created = await db.fetchval(
        "SELECT created_at FROM dispatcher.event_types WHERE name = 'invoice.paid'"
    )
    assert datetime.fromisoformat(data["created_at"]) == created
    await add_webhook(db, "https://a.example/", ["customer.updated"])
    await add_webhook(db, "https://b.example/", ["customer.updated", "x.y"])
    await add_webhook(db, "https://c.example/", ["*"])

    assert await cli.ok("event-types", "list") == (
        "NAME              DESCRIPTION         WEBHOOKS  SAMPLE\n"
        'customer.updated  A customer changed  2         {"id": 1}\n'
        "invoice.paid                          0         -\n" + BUILTIN_TYPES
    )
    listed = await cli.json("event-types", "list")
    assert [(e["name"], e["description"], e["sample"], e["webhooks"], list(e)) for e in listed] == [
        (
            "customer.updated",
            "A customer changed",
            {"id": 1},
            2,
            ["name", "description", "sample", "created_at", "webhooks"],
        ),
        (
            "invoice.paid",
            "",
            None,
            0,
            ["name", "description", "sample", "created_at", "webhooks"],
        ),
    ]

    assert await cli.ok("event-types", "remove", "customer.updated") == (
        "Removed event type customer.updated.\n"
    )
    assert [e["name"] for e in await cli.json("event-types", "list")] == ["invoice.paid"]
    # Webhooks keep their subscriptions.
    assert await db.fetchval("SELECT event_types FROM dispatcher.webhooks WHERE id = 1") == [
        "customer.updated"
    ]


async def test_event_types_errors(cli: Cli, db: asyncpg.Pool) -> None:
    await cli.ok("event-types", "add", "t.x", "--description", "first")

    assert await cli.error("event-types", "add", "t.x", "--description", "second") == (
        "error: event type t.x is already in the catalog\n"
    )
    assert await cli.error("event-types", "remove", "nope.nope") == (
        "error: event type nope.nope is not in the catalog\n"
    )
    bad_sample = await usage_error(cli, "event-types", "add", "t.y", "--sample", "{not json")
    assert bad_sample.startswith(
        "Error: Invalid value for '--sample': the value is not valid JSON: "
    )
    for name in ("bad type", "*", "a..b"):
        assert (await cli.error("event-types", "add", name)).startswith(
            f"error: invalid event type '{name}': "
        )
    rows = await db.fetch("SELECT name, description FROM dispatcher.event_types")
    assert [tuple(r) for r in rows] == [("t.x", "first")]


# --- events publish ---------------------------------------------------------------------


async def test_publish_human_and_json(cli: Cli, db: asyncpg.Pool) -> None:
    a, _ = await add_webhook(db, "https://a.example/", ["order.paid"])
    b, _ = await add_webhook(db, "https://b.example/", ["*"])
    await add_webhook(db, "https://c.example/", ["order.paid"], status="disabled")
    await add_webhook(db, "https://d.example/", ["other.type"])

    out = await cli.ok("events", "publish", "order.paid", "--data", '{"id": 7, "tags": ["x"]}')
    match = re.fullmatch(r"Published ([0-9a-f-]{36}) to 2 webhook\(s\)\.\n", out)
    assert match is not None, out
    mid = uuid.UUID(match[1])
    event = await db.fetchrow("SELECT event_type, payload::text AS p FROM dispatcher.events")
    assert (event["event_type"], orjson.loads(event["p"])) == (
        "order.paid",
        {"id": 7, "tags": ["x"]},
    )
    rows = await db.fetch("SELECT message_id, webhook_id, kind FROM dispatcher.deliveries")
    assert sorted(tuple(r) for r in rows) == [(mid, a, "event"), (mid, b, "event")]

    data = await cli.json("events", "publish", "other.type", "--data", "[]")
    assert list(data) == ["message_id", "created", "deliveries"]
    assert (data["created"], data["deliveries"]) == (True, 2)
    assert await count(db, "WHERE message_id = $1", uuid.UUID(data["message_id"])) == 2


async def test_publish_with_message_id_is_idempotent(cli: Cli, db: asyncpg.Pool) -> None:
    await add_webhook(db, "https://a.example/", ["order.paid"])
    await add_webhook(db, "https://b.example/", ["order.paid", "order.refunded"])
    mid = str(uuid.uuid4())

    first = await cli.json(
        "events", "publish", "order.paid", "--data", '{"n": 1}', "--message-id", mid
    )
    assert first == {"message_id": mid, "created": True, "deliveries": 2}
    # A new webhook in between must not get the repeated event either.
    await add_webhook(db, "https://c.example/", ["*"])
    second = await cli.json(
        "events", "publish", "order.refunded", "--data", '{"n": 2}', "--message-id", mid
    )
    human = await cli.ok("events", "publish", "order.paid", "--data", "{}", "--message-id", mid)

    assert (second["message_id"], second["created"]) == (mid, False)
    assert second["deliveries"] == 2  # the deliveries the event has, none of them new
    assert human == f"Event {mid} already exists; nothing new was published.\n"
    assert await count(db) == 2
    event = await db.fetchrow("SELECT event_type, payload::text AS p FROM dispatcher.events")
    assert (event["event_type"], orjson.loads(event["p"])) == ("order.paid", {"n": 1})


async def test_publish_stores_the_payload_exactly_as_sql_would(cli: Cli, db: asyncpg.Pool) -> None:
    data = '{"id": 12345678901234567890123, "n": -9223372036854775809}'
    await cli.ok("events", "publish", "t.x", "--data", data)
    assert await db.fetchval("SELECT payload = $1::jsonb FROM dispatcher.events", data) is True


async def test_publish_errors(cli: Cli, db: asyncpg.Pool) -> None:
    await add_webhook(db, "https://a.example/", ["*"])

    bad_json = await usage_error(cli, "events", "publish", "t.x", "--data", "{'single': 1}")
    assert bad_json.startswith("Error: Invalid value for '--data': the value is not valid JSON: ")
    assert await usage_error(
        cli, "events", "publish", "t.x", "--data", "{}", "--message-id", "nope"
    ) == ("Error: Invalid value for '--message-id': 'nope' is not a valid UUID.")
    assert (await cli.error("events", "publish", "a b", "--data", "{}")).startswith(
        "error: invalid event type 'a b': "
    )
    assert (await cli.error("events", "publish", "*", "--data", "{}")).startswith(
        "error: invalid event type '*': "
    )
    missing = await cli("events", "publish", "t.x")
    assert missing.exit_code == 2
    assert "Missing option '--data'" in missing.output
    assert await db.fetchval("SELECT count(*) FROM dispatcher.events") == 0
    assert await count(db) == 0


# --- events resend ----------------------------------------------------------------------


async def test_events_resend_makes_new_deliveries_of_the_same_event(
    cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    a, _ = await add_webhook(db, receiver.url + "/a", ["t.x"], name="A")
    b, _ = await add_webhook(db, receiver.url + "/b", ["t.x"], name="B")
    c, _ = await add_webhook(db, receiver.url + "/c", ["other.type"], name="C")
    mid = await publish(db, "t.x", '{"n": 1}')
    await publish(db, "t.x")  # another event: not resent
    await deliver_all(fast_settings(), dsn)
    original = {r.path: r.body for r in receiver.requests if r.headers["webhook-id"] == mid}
    assert set(original) == {"/a", "/b"}

    out = await cli.ok("events", "resend", mid)

    new = await db.fetch(
        "SELECT id, message_id, webhook_id, kind, status, attempts, run_at <= now() AS due"
        " FROM dispatcher.deliveries WHERE kind = 'resend' ORDER BY webhook_id"
    )
    assert [(str(r["message_id"]), r["webhook_id"], r["status"], r["attempts"]) for r in new] == [
        (mid, a, "pending", 0),
        (mid, b, "pending", 0),
    ]
    assert all(r["due"] for r in new)
    assert sorted(out.splitlines()) == sorted(
        f"Queued delivery {r['id']} of {mid} to webhook {r['webhook_id']}." for r in new
    )

    receiver.requests.clear()
    await deliver_all(fast_settings(), dsn)
    assert sorted(r.path for r in receiver.requests) == ["/a", "/b"]
    for r in receiver.requests:
        assert r.headers["webhook-id"] == mid
        assert r.body == original[r.path]
    assert await count(db, "WHERE kind = 'resend' AND status = 'succeeded'") == 2

    # --webhook sends it to any active webhook, subscribed or not.
    data = await cli.json("events", "resend", mid, "--webhook", str(c))
    delivery_id = await db.fetchval("SELECT max(id) FROM dispatcher.deliveries")
    assert data == [{"delivery_id": delivery_id, "webhook_id": c}]
    row = await db.fetchrow("SELECT * FROM dispatcher.deliveries WHERE id = $1", delivery_id)
    assert (str(row["message_id"]), row["kind"], row["attempts"]) == (mid, "resend", 0)
    await deliver_all(fast_settings(), dsn)
    assert [r.headers["webhook-id"] for r in receiver.on("/c")] == [mid]


async def test_events_resend_errors(cli: Cli, db: asyncpg.Pool) -> None:
    a, _ = await add_webhook(db, "https://a.example/", ["t.x"])
    b, _ = await add_webhook(db, "https://b.example/", ["t.y"])
    mid = await publish(db, "t.x")
    unknown = uuid.uuid4()
    before = await count(db)

    assert await cli.error("events", "resend", str(unknown)) == (
        f"error: event {unknown} does not exist\n"
    )
    assert await usage_error(cli, "events", "resend", "12345") == (
        "Error: Invalid value for 'MESSAGE_ID': '12345' is not a valid UUID."
    )
    assert await cli.error("events", "resend", mid, "--webhook", "999") == (
        "error: webhook 999 does not exist\n"
    )
    await db.execute("UPDATE dispatcher.webhooks SET status = 'disabled' WHERE id = $1", b)
    assert await cli.error("events", "resend", mid, "--webhook", str(b)) == (
        f"error: webhook {b} is disabled; enable it first\n"
    )
    await db.execute("UPDATE dispatcher.webhooks SET status = 'disabled' WHERE id = $1", a)
    assert await cli.error("events", "resend", mid) == (
        f"error: event {mid} has no active webhook to resend to; name one with --webhook\n"
    )
    assert await count(db) == before


# --- deliveries list --------------------------------------------------------------------


@dataclass
class Log:
    alpha: int
    beta: int
    ids: dict[str, int]  # "m1.alpha" -> delivery id
    mids: dict[str, str]


async def delivery_log(db: asyncpg.Pool) -> Log:
    """Five deliveries in known states: m1 (3 hours old) and m2 finished, m3 pending."""
    alpha, _ = await add_webhook(db, "https://a.example/", ["t.a", "t.b"], name="Alpha")
    beta, _ = await add_webhook(db, "https://b.example/", ["t.a"], name="Beta")
    mids = {
        "m1": await publish(db, "t.a"),
        "m2": await publish(db, "t.b"),
        "m3": await publish(db, "t.a"),
    }
    names = {alpha: "alpha", beta: "beta"}
    ids = {
        f"{m}.{names[r['webhook_id']]}": r["id"]
        for m, mid in mids.items()
        for r in await db.fetch(
            "SELECT id, webhook_id FROM dispatcher.deliveries WHERE message_id = $1",
            uuid.UUID(mid),
        )
    }
    assert sorted(ids) == ["m1.alpha", "m1.beta", "m2.alpha", "m3.alpha", "m3.beta"]
    finish = (
        "UPDATE dispatcher.deliveries SET status = $2, attempts = $3, last_response_status = $4,"
        " last_error_kind = $5, finished_at = now() WHERE id = $1"
    )
    await db.execute(finish, ids["m1.alpha"], "failed", 7, 500, "status")
    await db.execute(finish, ids["m1.beta"], "succeeded", 1, 200, None)
    await db.execute(finish, ids["m2.alpha"], "failed", 7, None, "connect")
    await db.execute(
        "UPDATE dispatcher.deliveries SET attempts = 2, run_at = now() + interval '1 hour',"
        " last_response_status = 503, last_error_kind = 'status' WHERE id = $1",
        ids["m3.beta"],
    )
    await db.execute(
        "UPDATE dispatcher.deliveries SET created_at = now() - interval '3 hours'"
        " WHERE message_id = $1",
        uuid.UUID(mids["m1"]),
    )
    return Log(alpha, beta, ids, mids)


async def test_deliveries_list_filters(cli: Cli, db: asyncpg.Pool) -> None:
    log = await delivery_log(db)
    ids = log.ids

    async def listed(*args: str) -> list[int]:
        return [d["id"] for d in await cli.json("deliveries", "list", *args)]

    def newest_first(*names: str) -> list[int]:
        return sorted((ids[n] for n in names), reverse=True)

    assert await listed() == newest_first(*ids)
    assert await listed("--webhook", str(log.alpha)) == newest_first(
        "m1.alpha", "m2.alpha", "m3.alpha"
    )
    assert await listed("--status", "failed") == newest_first("m1.alpha", "m2.alpha")
    assert await listed("--status", "pending") == newest_first("m3.alpha", "m3.beta")
    assert await listed("--event-type", "t.b") == [ids["m2.alpha"]]
    assert await listed("--since", "2h") == newest_first("m2.alpha", "m3.alpha", "m3.beta")
    assert await listed("--since", "4h") == newest_first(*ids)
    assert await listed("--limit", "2") == newest_first(*ids)[:2]
    assert await listed("--webhook", str(log.beta), "--status", "pending") == [ids["m3.beta"]]
    assert await listed("--event-type", "t.a", "--since", "1h", "--limit", "1") == [
        max(ids["m3.alpha"], ids["m3.beta"])
    ]
    assert await listed("--event-type", "nope") == []
    assert await listed("--webhook", "999") == []


async def test_deliveries_list_json_fields_and_human_table(cli: Cli, db: asyncpg.Pool) -> None:
    log = await delivery_log(db)
    rows = {
        r["id"]: r
        for r in await db.fetch(
            "SELECT id, created_at, finished_at, run_at FROM dispatcher.deliveries"
        )
    }

    data = {d["id"]: d for d in await cli.json("deliveries", "list")}

    assert {tuple(d) for d in data.values()} == {tuple(DELIVERY_FIELDS)}
    retrying = data[log.ids["m3.beta"]]
    stored = rows[log.ids["m3.beta"]]
    # Its times parsed back, against the row as stored: the retry is due at run_at.
    assert {
        **retrying,
        "created_at": datetime.fromisoformat(retrying["created_at"]),
        "next_attempt_at": datetime.fromisoformat(retrying["next_attempt_at"]),
    } == {
        "id": log.ids["m3.beta"],
        "message_id": log.mids["m3"],
        "webhook_id": log.beta,
        "service_name": "Beta",
        "event_type": "t.a",
        "kind": "event",
        "status": "pending",
        "attempts": 2,
        "last_response_status": 503,
        "last_error_kind": "status",
        "created_at": stored["created_at"],
        "finished_at": None,
        "next_attempt_at": stored["run_at"],
    }
    failed = data[log.ids["m2.alpha"]]
    assert (failed["status"], failed["attempts"], failed["last_error_kind"]) == (
        "failed",
        7,
        "connect",
    )
    assert failed["next_attempt_at"] is None
    assert datetime.fromisoformat(failed["finished_at"]) == rows[failed["id"]]["finished_at"]
    assert datetime.fromisoformat(failed["created_at"]) == rows[failed["id"]]["created_at"]

    human = (await cli.ok("deliveries", "list", "--webhook", str(log.alpha))).splitlines()
    assert (
        " ".join(human[0].split())
        == "ID CREATED WEBHOOK EVENT TYPE STATUS ATTEMPTS LAST MESSAGE ID"
    )
    assert [line.split()[0:1] + line.split()[3:] for line in human[1:]] == [
        [
            str(log.ids["m3.alpha"]),
            str(log.alpha),
            "Alpha",
            "t.a",
            "pending",
            "0",
            "-",
            log.mids["m3"],
        ],
        [
            str(log.ids["m2.alpha"]),
            str(log.alpha),
            "Alpha",
            "t.b",
            "failed",
            "7",
            "connect",
            log.mids["m2"],
        ],
        [
            str(log.ids["m1.alpha"]),
            str(log.alpha),
            "Alpha",
            "t.a",
            "failed",
            "7",
            "500",
            log.mids["m1"],
        ],
    ]
    assert human[3].split()[1:3] == shown(rows[log.ids["m1.alpha"]]["created_at"]).split()
    assert await cli.ok("deliveries", "list", "--status", "cancelled") == "No deliveries match.\n"


async def test_deliveries_list_bad_options(cli: Cli, db: asyncpg.Pool) -> None:
    assert await usage_error(cli, "deliveries", "list", "--since", "yesterday") == (
        "Error: Invalid value for '--since': invalid duration 'yesterday':"
        " use forms like 90s, 15m, 2h, 7d"
    )
    for args in (["--status", "lost"], ["--limit", "0"], ["--webhook", "x"]):
        result = await cli("deliveries", "list", *args)
        assert result.exit_code == 2, (args, result.output)


# --- deliveries show --------------------------------------------------------------------


async def test_deliveries_show_lists_every_attempt_of_a_real_run(
    cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    async def fail_twice(request: web.Request, rec: Receiver) -> web.Response:
        if len(rec.requests) <= 2:
            return web.Response(status=503, text="not yet")
        return web.Response(text="done")

    receiver.handler = fail_twice
    wid, _ = await add_webhook(db, receiver.url + "/hook", ["t.x"], name="Flaky")
    mid = await publish(db, "t.x", '{"n": 1}')
    await deliver_all(fast_settings(), dsn)
    row = await db.fetchrow("SELECT * FROM dispatcher.deliveries")
    attempts = await db.fetch("SELECT * FROM dispatcher.attempts ORDER BY attempt")
    assert len(receiver.requests) == 3

    data = await cli.json("deliveries", "show", str(row["id"]))

    assert list(data) == [*DELIVERY_FIELDS, "url", "payload", "leased", "attempts_log"]
    assert {k: data[k] for k in DELIVERY_FIELDS if not k.endswith("_at")} == {
        "id": row["id"],
        "message_id": mid,
        "webhook_id": wid,
        "service_name": "Flaky",
        "event_type": "t.x",
        "kind": "event",
        "status": "succeeded",
        "attempts": 3,
        "last_response_status": 200,
        "last_error_kind": None,
    }
    assert (data["url"], data["payload"], data["leased"], data["next_attempt_at"]) == (
        receiver.url + "/hook",
        {"n": 1},
        False,
        None,
    )
    assert [list(a) for a in data["attempts_log"]] == [ATTEMPT_FIELDS] * 3
    assert [
        (
            a["attempt"],
            a["response_status"],
            a["response_body"],
            a["error_kind"],
            a["error_message"],
            a["retry_in_s"],
            a["retry_reason"],
        )
        for a in data["attempts_log"]
    ] == [
        (1, 503, "not yet", "status", "HTTP 503", 0.0, "schedule"),
        (2, 503, "not yet", "status", "HTTP 503", 0.0, "schedule"),
        (3, 200, None, None, None, None, None),  # a 2xx body is not read
    ]
    assert [a["duration_ms"] for a in data["attempts_log"]] == [a["duration_ms"] for a in attempts]

    human = await cli.ok("deliveries", "show", str(row["id"]))
    details, table = human.split("\n\nAttempts:\n")
    assert details.splitlines() == [
        f"delivery:     {row['id']}",
        f"message id:   {mid}",
        "event type:   t.x",
        f"webhook:      {wid} Flaky",
        f"url:          {receiver.url}/hook",
        "kind:         event",
        "status:       succeeded",
        "attempts:     3",
        f"created:      {shown(row['created_at'])}",
        f"finished:     {shown(row['finished_at'])}",
        "next attempt: -",
        'payload:      {"n": 1}',
    ]
    lines = table.splitlines()
    assert " ".join(lines[0].split()) == "# STARTED TOOK STATUS ERROR MESSAGE RESPONSE THEN"
    assert [re.sub(r"\s+", " ", line).rstrip() for line in lines[1:]] == [
        f"{a['attempt']} {shown(a['started_at'])} {a['duration_ms']} ms {rest}"
        for a, rest in zip(
            attempts,
            [
                "503 status HTTP 503 not yet retry in 0 s (policy)",
                "503 status HTTP 503 not yet retry in 0 s (policy)",
                "200 - - -",
            ],
            strict=True,
        )
    ]


async def test_deliveries_show_pending_and_unknown(cli: Cli, db: asyncpg.Pool) -> None:
    await add_webhook(db, "https://a.example/", ["t.x"])
    await publish(db, "t.x")
    delivery_id = await db.fetchval("SELECT id FROM dispatcher.deliveries")
    await db.execute(
        "UPDATE dispatcher.deliveries SET lease_token = gen_random_uuid(),"
        " run_at = now() + interval '1 minute'"
    )

    data = await cli.json("deliveries", "show", str(delivery_id))
    assert (data["status"], data["leased"], data["attempts_log"]) == ("pending", True, [])
    human = await cli.ok("deliveries", "show", str(delivery_id))
    assert "status:       pending (in flight)\n" in human
    assert human.endswith("\nNo attempts yet.\n")
    assert await cli.error("deliveries", "show", "999") == "error: delivery 999 does not exist\n"


# --- deliveries resend (bulk) -----------------------------------------------------------


@dataclass
class Failures:
    alpha: int
    beta: int
    failed: set[tuple[uuid.UUID, int]]  # (message_id, webhook_id) pairs that failed recently


async def failed_deliveries(cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver) -> Failures:
    """Five recent failures across Alpha (3) and Beta (2), plus failures that must not count."""

    async def handler(request: web.Request, rec: Receiver) -> web.Response:
        return web.Response(status=200 if request.path == "/ok" else 500)

    receiver.handler = handler
    alpha, _ = await add_webhook(db, receiver.url + "/alpha", ["t.x", "t.y"], name="Alpha")
    beta, _ = await add_webhook(db, receiver.url + "/beta", ["t.x"], name="Beta")
    await add_webhook(db, receiver.url + "/ok", ["t.x"], name="Fine")
    gone, _ = await add_webhook(db, receiver.url + "/gone", ["t.y"], name="Disabled later")
    await publish(db, "t.x")
    await publish(db, "t.x")
    await publish(db, "t.y")
    await deliver_all(fast_settings(retry_schedule=()), dsn)
    # Not resent: a disabled webhook's failure, a failed test, and a failure older than 24h.
    await db.execute("UPDATE dispatcher.webhooks SET status = 'disabled' WHERE id = $1", gone)
    # The endpoint answers 500: the test is recorded as failed, and the command exits 1.
    assert (await cli("webhooks", "test", str(alpha), "--event-type", "t.x")).exit_code == 1
    old = uuid.UUID(await publish(db, "t.old"))
    await db.execute(
        "INSERT INTO dispatcher.deliveries (message_id, webhook_id, status, attempts, created_at,"
        " finished_at) VALUES ($1, $2, 'failed', 1, now() - interval '2 days',"
        " now() - interval '2 days')",
        old,
        alpha,
    )
    rows = await db.fetch(
        "SELECT message_id, webhook_id FROM dispatcher.deliveries"
        " WHERE status = 'failed' AND kind = 'event' AND webhook_id IN ($1, $2)"
        " AND created_at > now() - interval '1 hour'",
        alpha,
        beta,
    )
    failed = {(r["message_id"], r["webhook_id"]) for r in rows}
    assert len(failed) == 5
    assert await count(db, "WHERE status = 'failed'") == 8  # 5 + disabled + test + old
    return Failures(alpha, beta, failed)


async def resent_pairs(db: asyncpg.Pool) -> list[tuple[uuid.UUID, int]]:
    rows = await db.fetch(
        "SELECT message_id, webhook_id FROM dispatcher.deliveries WHERE kind = 'resend'"
    )
    return sorted((r["message_id"], r["webhook_id"]) for r in rows)


async def test_bulk_resend_dry_run_then_once_then_nothing(
    cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    f = await failed_deliveries(cli, db, dsn, receiver)
    total = await count(db)

    assert await cli.ok("deliveries", "resend", "--since", "24h", "--dry-run") == (
        "5 failed deliveries from the last 24h to resend.\nDry run: nothing was sent.\n"
    )
    assert await cli.json("deliveries", "resend", "--since", "24h", "--dry-run") == {
        "matched": 5,
        "resent": 0,
        "dry_run": True,
    }
    assert await count(db) == total

    assert await cli.ok("deliveries", "resend", "--since", "24h") == (
        "5 failed deliveries from the last 24h to resend.\nQueued 5 new deliveries.\n"
    )
    assert await count(db) == total + 5
    assert await resent_pairs(db) == sorted(f.failed)
    assert await count(db, "WHERE kind = 'resend' AND status = 'pending' AND attempts = 0") == 5

    assert await cli.ok("deliveries", "resend", "--since", "24h") == (
        "0 failed deliveries from the last 24h to resend.\nQueued 0 new deliveries.\n"
    )
    assert await cli.json("deliveries", "resend", "--since", "24h") == {
        "matched": 0,
        "resent": 0,
        "dry_run": False,
    }
    assert await count(db) == total + 5

    # The resends are real deliveries: sent, and failed again, they can be recovered again.
    receiver.requests.clear()
    await deliver_all(fast_settings(retry_schedule=()), dsn)
    assert sorted(r.path for r in receiver.requests) == ["/alpha"] * 3 + ["/beta"] * 2
    assert await count(db, "WHERE kind = 'resend' AND status = 'failed'") == 5
    assert (await cli.json("deliveries", "resend", "--since", "24h", "--dry-run"))["matched"] == 5


async def test_bulk_resend_limited_to_one_webhook_and_window(
    cli: Cli, db: asyncpg.Pool, dsn: str, receiver: Receiver
) -> None:
    f = await failed_deliveries(cli, db, dsn, receiver)
    total = await count(db)

    out = await cli.ok("deliveries", "resend", "--since", "24h", "--webhook", str(f.beta))

    assert out == (
        f"2 failed deliveries of webhook {f.beta} from the last 24h to resend.\n"
        "Queued 2 new deliveries.\n"
    )
    assert await resent_pairs(db) == sorted(p for p in f.failed if p[1] == f.beta)
    assert await cli.json("deliveries", "resend", "--since", "24h") == {
        "matched": 3,
        "resent": 3,
        "dry_run": False,
    }
    assert await resent_pairs(db) == sorted(f.failed)
    # A wider window reaches the old failure, and only it is new.
    assert await cli.ok("deliveries", "resend", "--since", "3d", "--webhook", str(f.alpha)) == (
        f"1 failed deliveries of webhook {f.alpha} from the last 3d to resend.\n"
        "Queued 1 new deliveries.\n"
    )
    assert await count(db) == total + 6
    assert await cli.error("deliveries", "resend", "--since", "24h", "--webhook", "999") == (
        "error: webhook 999 does not exist\n"
    )
    assert await usage_error(cli, "deliveries", "resend", "--since", "soon") == (
        "Error: Invalid value for '--since': invalid duration 'soon':"
        " use forms like 90s, 15m, 2h, 7d"
    )
    assert (await cli("deliveries", "resend")).exit_code == 2
    assert await count(db) == total + 6


# --- stats ------------------------------------------------------------------------------


@dataclass
class Queue:
    alpha: int
    beta: int
    gamma: int
    oldest_due_at: datetime  # the run_at of the delivery due longest


async def queue_in_known_states(db: asyncpg.Pool) -> Queue:
    alpha, _ = await add_webhook(db, "https://a.example/", ["t.a"], name="Alpha")
    beta, _ = await add_webhook(db, "https://b.example/", ["t.b"], name="Beta")
    gamma, _ = await add_webhook(db, "https://c.example/", ["t.c"], name="Gamma", status="disabled")
    for _ in range(5):
        await publish(db, "t.a")
    for _ in range(4):
        await publish(db, "t.b")
    a = [
        r["id"]
        for r in await db.fetch(
            "SELECT id FROM dispatcher.deliveries WHERE webhook_id = $1 ORDER BY id", alpha
        )
    ]
    b = [
        r["id"]
        for r in await db.fetch(
            "SELECT id FROM dispatcher.deliveries WHERE webhook_id = $1 ORDER BY id", beta
        )
    ]
    set_sql = "UPDATE dispatcher.deliveries SET {} WHERE id = $1"
    oldest_due_at = await db.fetchval(
        set_sql.format("run_at = now() - interval '10 minutes'") + " RETURNING run_at", a[0]
    )
    await db.execute(set_sql.format("run_at = now() - interval '1 minute'"), a[1])
    await db.execute(set_sql.format("run_at = now() + interval '1 hour'"), a[2])
    await db.execute(set_sql.format("status = 'succeeded', finished_at = now()"), a[3])
    await db.execute(
        set_sql.format("status = 'failed', finished_at = now() - interval '2 days'"), a[4]
    )
    await db.execute(
        set_sql.format("lease_token = gen_random_uuid(), run_at = now() + interval '5 minutes'"),
        b[0],
    )
    await db.execute(set_sql.format("status = 'failed', finished_at = now()"), b[1])
    await db.execute(set_sql.format("status = 'failed', finished_at = now()"), b[2])
    await db.execute(set_sql.format("status = 'cancelled', finished_at = now()"), b[3])
    return Queue(alpha, beta, gamma, oldest_due_at)


async def db_clock(db: asyncpg.Pool) -> datetime:
    """The database's clock now: the clock `stats` measures ages by."""
    moment: datetime = await db.fetchval("SELECT clock_timestamp()")
    return moment


def seconds_since(moment: datetime, then: datetime) -> float:
    return (moment - then).total_seconds()


async def test_stats_human_and_json(cli: Cli, db: asyncpg.Pool) -> None:
    queue = await queue_in_known_states(db)
    alpha, beta, gamma = queue.alpha, queue.beta, queue.gamma

    # The oldest due row's age is read while the command runs: somewhere between the ages
    # before and after it, however long the command took.
    before = await db_clock(db)
    human = await cli.ok("stats")
    after = await db_clock(db)
    shown_age = re.search(r"^oldest due: +(\d+\.\d)m$", human, re.MULTILINE)
    assert shown_age is not None, human
    # One decimal of a minute: the figure may be rounded by up to 3 s either way.
    assert (
        seconds_since(before, queue.oldest_due_at) - 3
        <= float(shown_age[1]) * 60
        <= seconds_since(after, queue.oldest_due_at) + 3
    )
    assert human.replace(shown_age[0], "oldest due:         <age>") == (
        "due now:            2\n"
        "scheduled later:    1\n"
        "in flight (leased): 1\n"
        "oldest due:         <age>\n"
        "\n"
        "Last 24h by webhook:\n"
        "ID  NAME   STATUS    SUCCEEDED  FAILED  PENDING NOW\n"
        f"{alpha}   Alpha  active    1          0       3\n"
        f"{beta}   Beta   active    0          2       1\n"
        f"{gamma}   Gamma  disabled  0          0       0\n"
    )
    before = await db_clock(db)
    data = await cli.json("stats")
    after = await db_clock(db)
    assert list(data) == ["window_s", "due_now", "scheduled", "leased", "oldest_due_s", "webhooks"]
    assert (
        seconds_since(before, queue.oldest_due_at)
        <= data["oldest_due_s"]
        <= seconds_since(after, queue.oldest_due_at)
    )
    assert {k: v for k, v in data.items() if k != "oldest_due_s"} == {
        "window_s": 86400.0,
        "due_now": 2,
        "scheduled": 1,
        "leased": 1,
        "webhooks": [
            {
                "webhook_id": alpha,
                "service_name": "Alpha",
                "status": "active",
                "succeeded": 1,
                "failed": 0,
                "pending": 3,
            },
            {
                "webhook_id": beta,
                "service_name": "Beta",
                "status": "active",
                "succeeded": 0,
                "failed": 2,
                "pending": 1,
            },
            {
                "webhook_id": gamma,
                "service_name": "Gamma",
                "status": "disabled",
                "succeeded": 0,
                "failed": 0,
                "pending": 0,
            },
        ],
    }
    week = await cli.json("stats", "--window", "7d")
    assert week["window_s"] == 604800.0
    assert [(w["succeeded"], w["failed"], w["pending"]) for w in week["webhooks"]] == [
        (1, 1, 3),
        (0, 2, 1),
        (0, 0, 0),
    ]
    assert "Last 7d by webhook:" in await cli.ok("stats", "--window", "7d")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (0.0, "0.0s"),
        (0.64, "0.6s"),
        (119.9, "119.9s"),
        (120.0, "2.0m"),
        (600.0, "10.0m"),
        (602.9, "10.0m"),
        (603.1, "10.1m"),
        (7140.0, "119.0m"),
        (7200.0, "2.0h"),
        (90000.0, "25.0h"),
    ],
)
def test_stats_shows_an_age_in_tenths_of_its_unit(seconds: float | None, shown: str) -> None:
    assert ago(seconds) == shown


async def test_stats_of_an_empty_queue(cli: Cli) -> None:
    assert await cli.ok("stats") == (
        "due now:            0\n"
        "scheduled later:    0\n"
        "in flight (leased): 0\n"
        "oldest due:         -\n"
    )
    assert await cli.json("stats") == {
        "window_s": 86400.0,
        "due_now": 0,
        "scheduled": 0,
        "leased": 0,
        "oldest_due_s": None,
        "webhooks": [],
    }
    assert await usage_error(cli, "stats", "--window", "forever") == (
        "Error: Invalid value for '--window': invalid duration 'forever':"
        " use forms like 90s, 15m, 2h, 7d"
    )


async def test_stats_counts_an_expired_lease_as_due(cli: Cli, db: asyncpg.Pool) -> None:
    await add_webhook(db, "https://a.example/", ["t.a"])
    await publish(db, "t.a")
    # The lease of a crashed process: its run_at (the lease expiry) has passed.
    await db.execute(
        "UPDATE dispatcher.deliveries SET lease_token = gen_random_uuid(), attempts = 1,"
        " run_at = now() - interval '5 minutes'"
    )

    data = await cli.json("stats")

    assert (data["due_now"], data["leased"]) == (1, 0)
    assert data["oldest_due_s"] is not None and data["oldest_due_s"] >= 300
