"""max_concurrency on every surface: `webhooks add/edit/show`, the API (checked against the
OpenAPI document), and the console's forms and details, each setting, showing and clearing it
as they do rate_limit, and copying it to the health row the lease reads."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import pytest
from click.testing import Result

from tests.api_support import Api
from tests.conftest import Cli, WebApp, add_webhook
from tests.console_support import console_session
from tests.test_console_health import get, post

V1 = "/api/v1"
ADD = ("webhooks", "add", "--name", "X", "--url", "https://x.example/", "--events", "a.b")
CLI_HINT = "--max-concurrency must be a whole number of attempts in flight from 1 to 1000"


async def caps(db: asyncpg.Pool, webhook_id: int) -> tuple[int | None, int | None]:
    """The webhook's max_concurrency and the health row's copy of it."""
    row = await db.fetchrow(
        "SELECT w.max_concurrency, h.max_concurrency AS copy FROM dispatcher.webhooks w"
        " JOIN dispatcher.webhook_health h ON h.webhook_id = w.id WHERE w.id = $1",
        webhook_id,
    )
    assert row is not None
    return row["max_concurrency"], row["copy"]


def assert_error(result: Result, message: str) -> None:
    assert (result.exit_code, result.output) == (1, f"error: {message}\n")


# --- CLI ------------------------------------------------------------------------------------


async def test_cli_add_edit_show_and_clear(cli: Cli, db: asyncpg.Pool) -> None:
    out = await cli.ok(*ADD, "--max-concurrency", "3")
    assert "concurrency: at most 3 at once\n" in out.replace("  ", " ")
    assert await caps(db, 1) == (3, 3)
    assert (await cli.json("webhooks", "show", "1"))["max_concurrency"] == 3

    data = await cli.json("webhooks", "edit", "1", "--max-concurrency", "1000")
    assert (data["max_concurrency"], data["rate_limit"]) == (1000, None)
    data = await cli.json("webhooks", "edit", "1", "--rate-limit", "5")
    assert (data["max_concurrency"], data["rate_limit"]) == (1000, 5)
    assert await caps(db, 1) == (1000, 1000)

    out = await cli.ok("webhooks", "edit", "1", "--max-concurrency", "default")
    assert "concurrency:  default (the daemon's per_endpoint_concurrency)\n" in out
    assert await caps(db, 1) == (None, None)
    plain = await cli.json(*ADD)
    assert plain["max_concurrency"] is None


@pytest.mark.parametrize("value", ["0", "1001", "2.5", "many", "", "-1"])
async def test_cli_a_bad_max_concurrency_is_one_line(
    cli: Cli, db: asyncpg.Pool, value: str
) -> None:
    message = f"{CLI_HINT}, got {value!r}"
    assert_error(await cli(*ADD, "--max-concurrency", value), message)
    assert await db.fetchval("SELECT count(*) FROM dispatcher.webhooks") == 0
    wid, _ = await add_webhook(db, "https://x.example/", ["a.b"])
    assert_error(await cli("webhooks", "edit", str(wid), "--max-concurrency", value), message)
    assert await caps(db, wid) == (None, None)


# --- API ------------------------------------------------------------------------------------


@pytest.fixture
def api(web_app: WebApp) -> Api:
    return Api(web_app)


async def create(api: Api, **fields: Any) -> dict[str, Any]:
    body = {"service_name": "CRM", "url": "https://crm.example/hook", "event_types": ["a.b"]}
    created: dict[str, Any] = await api.ok("POST", f"{V1}/webhooks", {**body, **fields}, 201)
    return created


async def test_api_create_patch_read_and_clear(api: Api, db: asyncpg.Pool) -> None:
    webhook = await create(api, max_concurrency=4)
    assert webhook["max_concurrency"] == 4
    path = f"{V1}/webhooks/{webhook['id']}"
    assert (await api.ok("GET", path))["max_concurrency"] == 4
    assert await caps(db, webhook["id"]) == (4, 4)

    changed = await api.ok("PATCH", path, {"max_concurrency": 1})
    assert changed["max_concurrency"] == 1
    changed = await api.ok("PATCH", path, {"service_name": "New"})
    assert changed["max_concurrency"] == 1
    listed = (await api.ok("GET", f"{V1}/webhooks"))["webhooks"]
    assert [w["max_concurrency"] for w in listed] == [1]
    changed = await api.ok("PATCH", path, {"max_concurrency": None})
    assert changed["max_concurrency"] is None
    assert await caps(db, webhook["id"]) == (None, None)
    assert (await create(api))["max_concurrency"] is None


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (0, "max_concurrency must be a whole number of attempts in flight from 1 to 1000"),
        (1001, "or null for the daemon's per_endpoint_concurrency; got 1001"),
        (2.5, "got 2.5"),
        ("5", 'got "5"'),
        (True, "got True"),
    ],
)
async def test_api_a_bad_max_concurrency_is_a_422_naming_the_field(
    api: Api, db: asyncpg.Pool, value: Any, words: str
) -> None:
    body = {"service_name": "X", "url": "https://x.example/", "event_types": ["a.b"]}
    reply = await api.problem("POST", f"{V1}/webhooks", {**body, "max_concurrency": value})
    assert reply.body["field"] == "max_concurrency" and words in reply.detail, reply.detail
    webhook = await create(api)
    reply = await api.problem("PATCH", f"{V1}/webhooks/{webhook['id']}", {"max_concurrency": value})
    assert reply.body["field"] == "max_concurrency" and words in reply.detail, reply.detail
    assert await db.fetchval("SELECT count(max_concurrency) FROM dispatcher.webhooks") == 0


# --- console --------------------------------------------------------------------------------


async def test_console_add_edit_and_details(web_app: WebApp) -> None:
    db = web_app.pool
    session = await console_session(db, web_app.token)
    form = {
        "service_name": "Billing",
        "url": "https://billing.example/hooks",
        "other_types": "invoice.paid",
        "max_concurrency": "lots",
    }
    status, _, page = await post(web_app, "/webhooks", form, session)
    assert status == 422
    assert "The max concurrency must be a whole number of attempts in flight" in page
    assert re.search(r'name="max_concurrency" value="lots"[^>]*aria-invalid="true"', page)
    assert await db.fetchval("SELECT count(*) FROM dispatcher.webhooks") == 0

    form["max_concurrency"] = " 7 "
    status, _, _ = await post(web_app, "/webhooks", form, session)
    assert status == 303
    wid = await db.fetchval("SELECT id FROM dispatcher.webhooks")
    assert await caps(db, wid) == (7, 7)
    _, page = await get(web_app, f"/webhooks/{wid}?dialog=edit", session)
    assert 'name="max_concurrency" value="7"' in page
    assert re.search(r"<dt>Max concurrency</dt><dd>7 at once</dd>", page)

    base = {"service_name": "Billing", "url": "https://billing.example/hooks", "description": ""}
    status, _, page = await post(
        web_app, f"/webhooks/{wid}/edit", {**base, "max_concurrency": "0"}, session
    )
    assert status == 422 and "The max concurrency must be" in page
    # A form without the field (as the edit dialog of an older page) keeps the cap.
    await post(web_app, f"/webhooks/{wid}/edit", {**base, "rate_limit": "2"}, session)
    assert await caps(db, wid) == (7, 7)
    await post(web_app, f"/webhooks/{wid}/edit", {**base, "max_concurrency": ""}, session)
    assert await caps(db, wid) == (None, None)
    _, page = await get(web_app, f"/webhooks/{wid}", session)
    assert re.search(r"<dt>Max concurrency</dt><dd>The daemon(&#39;|')s default</dd>", page), (
        re.findall(r"<dt>Max concurrency</dt>.{0,60}", page)
    )
