"""Headless Chromium for browser tests: Debian's /usr/bin/chromium, driven by Playwright.

Playwright's own browser download cannot reach its host here, so tests always use the system
browser; .ci/run installs it. A test module gets the `browser` fixture by importing it:

    from tests.browser_support import browser_fixture  # noqa: F401

(Not `pytest_plugins` in a test module: once another module has imported this one, pytest warns
that it cannot rewrite it, and warnings are errors here.)

Each test gets its own browser: starting Playwright and Chromium takes about half a second, and a
session-wide one would tie every browser test to a session-scoped event loop.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from playwright.async_api import Browser, async_playwright

CHROMIUM = "/usr/bin/chromium"


@asynccontextmanager
async def launch_browser() -> AsyncIterator[Browser]:
    """Start Playwright and a headless Debian Chromium; fail the test if Chromium is missing."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: browser tests drive Debian's chromium. Install it with"
            " `apt-get install -y --no-install-recommends chromium` (.ci/run does this).",
            pytrace=False,
        )
    # Chromium will not start as root with its sandbox on; as any other user, keep the sandbox.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=args
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture(name="browser")
async def browser_fixture() -> AsyncIterator[Browser]:
    """A headless Chromium of this test's own, closed after it."""
    async with launch_browser() as chromium:
        yield chromium
