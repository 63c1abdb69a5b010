"""Threads page in real Chromium: sign in, create a direct thread by user id, unread
counts, presence, send and receive, typing."""

from __future__ import annotations

from playwright.async_api import expect

from tests.client import Api, Instance
from tests.pagekit import PHONE, assert_clean, browser, open_page, screenshot, seqs, sign_in  # noqa: F401


async def test_direct_thread_between_two_browsers(browser, server: Instance, api: Api) -> None:  # noqa: F811
    ana = await api.register("Ana")
    ben = await api.register("Ben")

    page_a = await open_page(browser, server.url + "/static/threads.html")
    await sign_in(page_a, ana.email)
    page_b = await open_page(browser, server.url + "/static/threads.html", viewport=PHONE)
    await sign_in(page_b, ben.email)
    await expect(page_a.locator("#conn")).to_have_text("Connected")

    # Ana starts a direct thread with Ben by his id; Ben's list shows it at once.
    await page_a.get_by_label("Member user ids (comma separated)").fill(ben.id)
    await page_a.get_by_role("button", name="Create").click()
    await expect(page_a.locator("#thread-title")).to_have_text("Ben")
    # Ben is online: the thread's member line and the list's dot say so.
    await expect(page_a.locator("#thread-members")).to_contain_text("Ben (online)")
    await expect(page_a.locator("#conversations .dot.online")).to_have_count(1)
    conv_item_b = page_b.locator("#conversations button.item", has_text="Ana")
    await expect(conv_item_b).to_be_visible()

    composer_a = page_a.get_by_label("Message", exact=True)
    for text in ("Hi Ben", "Are you coming to the study group?"):
        await composer_a.fill(text)
        await composer_a.press("Enter")
    await expect(page_a.locator("#messages > li[data-seq]")).to_have_count(2)

    # Not open on Ben's side: an unread count of 2.
    await expect(conv_item_b.locator(".badge.unread")).to_have_text("2")
    await conv_item_b.click()
    await expect(page_b.locator("#messages > li[data-seq]")).to_have_count(2)
    await expect(conv_item_b.locator(".badge.unread")).to_have_count(0)

    # Ben types: Ana sees it; Ben answers: Ana sees the reply.
    composer_b = page_b.get_by_label("Message", exact=True)
    await composer_b.press_sequentially("Yes, ")
    await expect(page_a.locator(".typing")).to_have_text("Ben is typing…")
    await composer_b.fill("Yes, see you at 5")
    await composer_b.press("Enter")
    reply = page_a.locator("#messages > li[data-seq='3']")
    await expect(reply).to_contain_text("Yes, see you at 5")
    await expect(reply.locator(".msg-sender")).to_have_text("Ben")
    assert await seqs(page_a) == [1, 2, 3]
    assert await seqs(page_b) == [1, 2, 3]

    # The server agrees: three messages, Ben's read marker moved (his unread is 0).
    status, body = await api.request("GET", "/api/conversations", ben)
    assert status == 200 and body["conversations"][0]["unread"] == 0

    await screenshot(page_a, "threads-desktop")
    await screenshot(page_b, "threads-phone")
    assert_clean(page_a)
    assert_clean(page_b)
