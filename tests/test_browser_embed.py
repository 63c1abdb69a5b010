"""The widget embedded in a page of another origin with one script tag: CORS for the API
and the ES modules, style isolation, keyboard use, and history after a reload."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from playwright.async_api import expect

from storage.embedded import free_port
from tests.client import Instance
from tests.pagekit import assert_clean, browser, open_page, screenshot  # noqa: F401

HOST_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Some school</title>
<style>button {{ background: rgb(255, 105, 180); font-size: 30px; }} body {{ font-family: serif; }}</style></head>
<body><h1>Some school's course page</h1><button id="own">The page's own button</button>
<script src="{server}/static/widget.js" data-server="{server}" data-title="Course helper"></script></body></html>"""


@pytest.fixture
async def other_site(server: Instance) -> AsyncIterator[str]:
    """A plain web site on another origin ("localhost" vs the server's 127.0.0.1)."""
    async def page(_: web.Request) -> web.Response:
        return web.Response(text=HOST_PAGE.format(server=server.url), content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "localhost", port).start()
    yield f"http://localhost:{port}/"
    await runner.cleanup()


async def test_widget_on_another_origin_keyboard_and_reload(browser, server: Instance, other_site: str) -> None:  # noqa: F811
    page = await open_page(browser, other_site, viewport={"width": 375, "height": 720})
    w = page.locator("#studyhall-widget")
    launcher = w.get_by_role("button", name="Ask the tutor")
    await expect(launcher).to_be_visible()
    # The host page's CSS does not reach into the widget.
    page_bg = await page.locator("#own").evaluate("e => getComputedStyle(e).backgroundColor")
    launcher_bg = await launcher.evaluate("e => getComputedStyle(e).backgroundColor")
    assert page_bg == "rgb(255, 105, 180)" and launcher_bg != page_bg

    # Keyboard only: focus the launcher, open with Enter, type, send with Enter.
    await launcher.focus()
    await page.keyboard.press("Enter")
    dialog = w.get_by_role("dialog", name="Course helper")
    await expect(dialog).to_be_visible()
    await expect(page.get_by_label("Your question")).to_be_focused()
    await expect(page.get_by_label("Your question")).to_be_enabled()
    await page.keyboard.type("Hello, what is a derivative?")
    await page.keyboard.press("Enter")
    await expect(w.locator("li.msg-mine[data-seq]")).to_have_count(1)
    # No model and no material: the tutor still answers (offline mode), never silent.
    await expect(w.locator("li[data-seq]:not(.msg-mine)").first).to_be_visible()
    shown = await w.locator("li[data-seq] .msg-body").all_inner_texts()
    await screenshot(page, "widget-embedded-phone")

    # Escape closes and gives focus back to the launcher.
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(launcher).to_be_focused()

    # Reopened after a reload: the same guest, the same conversation, its history.
    await page.reload()
    await w.get_by_role("button", name="Ask the tutor").click()
    await expect(w.locator("li[data-seq] .msg-body")).to_have_text(shown)
    assert_clean(page)
