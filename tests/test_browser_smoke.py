"""The browser harness works: headless Chromium loads a local page, clicks, and reads the result."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, expect

from tests.browser_support import browser_fixture  # noqa: F401

FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Smoke</title></head>
<body>
  <form method="post" action="/clicked"><button type="submit">Press me</button></form>
</body></html>
"""

CLICKED = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Smoke</title></head>
<body><p id="result">The server saw a {method} from the button.</p></body></html>
"""


async def form(request: web.Request) -> web.Response:
    return web.Response(text=FORM, content_type="text/html")


async def clicked(request: web.Request) -> web.Response:
    return web.Response(text=CLICKED.format(method=request.method), content_type="text/html")


@pytest.mark.browser
async def test_chromium_clicks_a_button_on_a_local_page(browser: Browser) -> None:
    app = web.Application()
    app.router.add_get("/", form)
    app.router.add_post("/clicked", clicked)
    async with TestServer(app, host="127.0.0.1") as server:
        page = await browser.new_page()
        await page.goto(str(server.make_url("/")))
        await page.get_by_role("button", name="Press me").click()
        await expect(page.locator("#result")).to_have_text("The server saw a POST from the button.")
