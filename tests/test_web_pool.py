"""A slow endpoint under "Send test event" must not hold a database connection while it waits."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg
from aiohttp import web

from dispatcher.manage.tokens import create_token
from dispatcher.web.app import create_app
from tests.conftest import add_webhook, fast_settings


async def test_other_requests_are_served_while_a_test_event_waits_on_its_endpoint(
    dsn: str,
) -> None:
    answer = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await answer.wait()
        return web.Response(text="finally")

    endpoint = web.AppRunner(web.Application(), access_log=None)
    endpoint.app.router.add_post("/hook", slow)
    await endpoint.setup()
    await web.TCPSite(endpoint, "127.0.0.1", 0).start()
    # One connection in all: if the test event held it, the list below would wait for it.
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    console = web.AppRunner(create_app(fast_settings(), pool), access_log=None)
    await console.setup()
    await web.TCPSite(console, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{console.addresses[0][1]}/api/v1"
    try:
        webhook_id, _ = await add_webhook(
            pool, f"http://127.0.0.1:{endpoint.addresses[0][1]}/hook", ["a.b"]
        )
        async with pool.acquire() as conn:
            token = (await create_token(conn, "t", read_only=False)).token
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=auth) as http:
            sending = asyncio.create_task(http.post(f"{url}/webhooks/{webhook_id}/test", json={}))
            async with asyncio.timeout(10):
                while not answer.is_set():
                    async with http.get(f"{url}/webhooks") as listed:
                        assert listed.status == 200
                    # The endpoint has the request once the delivery row exists.
                    if await pool.fetchval("SELECT count(*) FROM dispatcher.deliveries"):
                        answer.set()
                    await asyncio.sleep(0.02)
            async with await sending as sent:
                assert sent.status == 200
                assert (await sent.json())["response"]["body"] == "finally"
    finally:
        await console.cleanup()
        await endpoint.cleanup()
        await pool.close()
