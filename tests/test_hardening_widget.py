"""The widget and answers abandoned mid-stream, in real Chromium against real servers.

1. The answer's streaming stops without its instance cleaning up (as when the process is
   killed; the kill itself is tested at the socket level in test_hardening_tutor.py): the
   sweeper's `message:cancelled` removes the draft, and the recovered answer shows once.
2. The widget's server shuts down mid-answer and the widget misses the `message:cancelled`
   while offline: the recovered answer to the same question, which it gets through `sync`
   after reconnecting, replaces the orphan draft.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from playwright.async_api import Page, expect

from server.keys import CORE
from tests.client import Api
from tests.pagekit import assert_clean, browser, open_page  # noqa: F401
from tests.test_browser_recovery import serve_on_port
from tests.test_tutor import CALVIN

LONG = " ".join(f"word{i}" for i in range(80)) + " [1]."


async def ask(page: Page, text: str) -> None:
    box = page.get_by_label("Your question")
    await box.fill(text)
    await box.press("Enter")


async def guest_with_draft(browser: Any, url: str) -> tuple[Page, Any]:  # noqa: F811
    page = await open_page(browser, url + "/static/demo.html")
    w = page.locator("#studyhall-widget")
    await w.get_by_role("button", name="Ask the tutor").click()
    await expect(page.get_by_label("Your question")).to_be_enabled()
    await ask(page, "Explain how the Calvin cycle builds sugars")
    await expect(w.locator("li.draft .msg-body")).to_contain_text("word4", timeout=15_000)
    return page, w


async def test_draft_disappears_on_message_cancelled_then_the_recovered_answer_shows(
    browser, start_instance, db  # noqa: F811
) -> None:
    from tests.fakellm import FakeLLM

    async with FakeLLM(reply=LONG, token_delay=0.12) as llm, aiohttp.ClientSession() as http:
        server = await start_instance(tutor__llm_base_url=llm.base_url, tutor__llm_api_key="test",
                                      tutor__stream_stale_seconds=1.0, tutor__stream_sweep_seconds=0.3)
        api = Api(http, server.url)
        mentor = await api.staff(db, "mentor")
        status, _ = await api.request("POST", "/api/documents", mentor, json={"title": "Photosynthesis", "content": CALVIN})
        assert status == 201
        page, w = await guest_with_draft(browser, server.url)

        # The answer's task dies without cleaning up after itself (its stream row stays).
        service = server.app[CORE].tutor
        for task in list(service._workers):
            task.cancel()
        await expect(w.locator("li.draft")).to_have_count(0, timeout=5_000)
        await expect(w.locator("li.msg-assistant")).to_have_count(0)

        await service.recover(0)  # the recovery pass (every 15 s) answers the question again
        final = w.locator("li.msg-assistant[data-seq] .msg-body")
        await expect(final).to_have_text(LONG, timeout=20_000)
        await expect(w.locator("li.draft")).to_have_count(0)
        await expect(w.locator("li.msg-assistant")).to_have_count(1)
        assert_clean(page)


async def test_orphan_draft_is_replaced_after_a_reconnect_that_missed_the_cancel(
    browser, start_instance, base_settings, db  # noqa: F811
) -> None:
    from tests.fakellm import FakeLLM

    runners: list[web.AppRunner] = []
    async with FakeLLM(reply=LONG, token_delay=0.12) as llm, aiohttp.ClientSession() as http:
        llm_settings = {"tutor__llm_base_url": llm.base_url, "tutor__llm_api_key": "test",
                        "tutor__stream_stale_seconds": 1.0, "tutor__stream_sweep_seconds": 0.3}
        first = await start_instance(**llm_settings)
        port = int(first.url.rsplit(":", 1)[1])
        other = await start_instance(**llm_settings)  # no Redis: nothing it sends reaches the widget live
        api = Api(http, first.url)
        mentor = await api.staff(db, "mentor")
        status, _ = await api.request("POST", "/api/documents", mentor, json={"title": "Photosynthesis", "content": CALVIN})
        assert status == 201
        try:
            page, w = await guest_with_draft(browser, first.url)
            orphan = await w.locator("li.draft").get_attribute("data-id")
            await first.stop()  # shutdown mid-answer: the other instance's sweeper cancels it
            await expect(w.locator(".conn")).to_have_text("Reconnecting…")
            await expect(w.locator(f'li.draft[data-id="{orphan}"]')).to_have_count(1)  # the cancel was missed

            # The other instance answers the question again (its recovery pass), committed.
            await other.app[CORE].tutor.recover(0)
            async with db.connection() as conn:
                for _ in range(300):
                    if await conn.fetchval("SELECT count(*) FROM messages WHERE role = 'assistant'"):
                        break
                    await page.wait_for_timeout(100)

            back = await serve_on_port(base_settings.with_(**llm_settings), port, runners)
            assert back.url == first.url
            await expect(w.locator(".conn")).to_be_hidden(timeout=15_000)
            final = w.locator("li.msg-assistant[data-seq] .msg-body")
            await expect(final).to_have_text(LONG, timeout=15_000)
            await expect(w.locator("li.draft")).to_have_count(0)
            await expect(w.locator("li.msg-assistant")).to_have_count(1)
        finally:
            for runner in runners:
                await runner.cleanup()
