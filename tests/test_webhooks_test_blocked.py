"""`dispatcher webhooks test` to an address the SSRF guard refuses, with no allowed_networks: it
fails with one line naming the refusal and the remedy, records the failed test delivery, and
never connects. Only loopback addresses are used, so that even a broken guard reaches nothing
but this test's own receiver, which counts what it gets.
"""

from __future__ import annotations

import asyncpg
import orjson
import pytest

from tests.conftest import Cli, Receiver, add_webhook

REMEDY = "to permit it, add its network to allowed_networks"


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("127.0.0.1", "127.0.0.1, which is not a public address"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1, which is not a public address"),
        ("localhost", "localhost, which resolves to an address that is not public"),
    ],
)
async def test_a_refused_address_is_not_connected_to_and_the_error_says_what_to_do(
    cli: Cli,
    db: asyncpg.Pool,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    host: str,
    refused: str,
) -> None:
    port = receiver.url.rsplit(":", 1)[1]
    wid, _ = await add_webhook(db, f"http://{host}:{port}/hook", ["t.x"])
    monkeypatch.delenv("DISPATCHER_ALLOWED_NETWORKS")

    result = await cli("webhooks", "test", str(wid))
    as_json = await cli("webhooks", "test", str(wid), "--json")

    for run in (result, as_json):
        assert isinstance(run.exception, SystemExit) and run.exit_code == 1, run.output
        assert run.stderr == (
            f"error: webhook {wid} did not accept the test event (blocked_address: the SSRF"
            f" guard refused to connect to {refused}; {REMEDY})\n"
        )
    [response] = [line for line in result.stdout.splitlines() if line.startswith("Response")]
    assert response.startswith("Response none: blocked_address: ")
    assert "is not a public address; " + REMEDY in response
    data = orjson.loads(as_json.stdout)
    assert (data["delivered"], data["error_kind"], data["response"]["status"]) == (
        False,
        "blocked_address",
        None,
    )
    assert receiver.requests == []

    # Each is recorded as a failed test delivery of one attempt, and its slot is free again.
    rows = await db.fetch(
        "SELECT d.kind, d.status, d.attempts, d.last_error_kind, a.error_kind"
        " FROM dispatcher.deliveries d JOIN dispatcher.attempts a ON a.delivery_id = d.id"
    )
    assert [tuple(r) for r in rows] == [
        ("test", "failed", 1, "blocked_address", "blocked_address")
    ] * 2
    assert (
        await db.fetchval(
            "SELECT in_flight FROM dispatcher.webhook_health WHERE webhook_id = $1", wid
        )
        == 0
    )

    # The remedy works: with loopback allowed, the same command reaches the receiver.
    monkeypatch.setenv("DISPATCHER_ALLOWED_NETWORKS", "127.0.0.0/8")
    await cli.ok("webhooks", "test", str(wid))
    assert len(receiver.requests) == 1
