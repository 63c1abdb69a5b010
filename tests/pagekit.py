"""Browser-test kit: Debian's Chromium driven by Playwright against real Studyhall servers.

Import the fixtures into a test module (`from tests.pagekit import browser`).
Every page opened through `open_page` records uncaught JavaScript errors and failed
console errors; `assert_clean(page)` fails a test on any of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
PHONE = {"width": 375, "height": 740}
DESKTOP = {"width": 1280, "height": 860}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield b
        await b.close()


async def open_page(browser: Browser, url: str, *, viewport: dict[str, int] | None = None) -> Page:
    """A page in its own context (own storage: one identity per context)."""
    context: BrowserContext = await browser.new_context(viewport=viewport or DESKTOP)
    page = await context.new_page()
    page.js_errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda exc: page.js_errors.append(str(exc)))  # type: ignore[attr-defined]
    page.set_default_timeout(10_000)
    await page.goto(url)
    return page


def assert_clean(page: Page) -> None:
    errors: list[Any] = page.js_errors  # type: ignore[attr-defined]
    assert not errors, f"JavaScript errors on {page.url}: {errors}"


async def screenshot(page: Page, name: str, *, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    return path


async def sign_in(page: Page, email: str, password: str = "correct horse 1") -> None:
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_text("Sign out").wait_for()


async def seqs(page: Page, selector: str = "#messages") -> list[int]:
    """The seq of every committed message shown, in page order."""
    return await page.locator(f"{selector} > li[data-seq]").evaluate_all(
        "els => els.map(e => Number(e.dataset.seq))"
    )
