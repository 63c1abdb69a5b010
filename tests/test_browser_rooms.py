"""A mentor and three students in one live room, each in their own Chromium context:
schedule, start, join (and a full room refused), chat, raise a hand, kick, end."""

from __future__ import annotations

from playwright.async_api import Page, expect

from tests.client import Api, Instance
from tests.pagekit import PHONE, assert_clean, browser, open_page, screenshot, sign_in  # noqa: F401

TITLE = "Algebra office hours"


async def join(page: Page) -> None:
    await page.get_by_role("button", name="Refresh").click()
    await page.get_by_role("button", name=f"Join {TITLE}").click()


async def test_mentor_and_three_students(browser, server: Instance, api: Api, db) -> None:  # noqa: F811
    mentor = await api.staff(db, "mentor", "Maya")
    students = [await api.register(name) for name in ("Sam", "Lea", "Omar")]
    extra = await api.register("Dan")

    host = await open_page(browser, server.url + "/static/rooms.html")
    await sign_in(host, mentor.email)
    await host.get_by_label("Title").fill(TITLE)
    await host.get_by_label("Max participants").fill("3")
    await host.get_by_role("button", name="Schedule").click()
    await host.get_by_role("button", name=f"Start {TITLE}").click()
    await expect(host.locator("#room-status")).to_have_text("live")

    # Dan takes a seat from a plain Socket.IO client, so the third browser finds the room full.
    _, body = await api.request("GET", "/api/live-sessions?status=live", extra)
    session_id = body["live_sessions"][0]["id"]
    dan = await api.socket(extra)
    await dan.ok("room:join", {"live_session_id": session_id})

    pages = []
    for i, student in enumerate(students):
        page = await open_page(browser, server.url + "/static/rooms.html", viewport=PHONE if i == 0 else None)
        await sign_in(page, student.email)
        await join(page)
        pages.append(page)
    sam, lea, omar = pages
    await expect(omar.locator("#notice")).to_have_text("This room is full. Try again when someone leaves.")
    await dan.ok("room:leave", {"live_session_id": session_id})
    await join(omar)
    for page in (host, *pages):
        await expect(page.locator("#participants > li")).to_have_count(4)  # host + three students
    await expect(host.locator("#count")).to_have_text("3 / 3")

    # Chat reaches everyone, in the order it was committed. The host answers once Sam's
    # message is committed (shown with its seq): two senders racing have no order to keep.
    chat = sam.get_by_label("Message", exact=True)
    await chat.fill("Hello everyone")
    await chat.press("Enter")
    await expect(host.locator("#messages > li[data-seq] .msg-body")).to_have_text(["Hello everyone"])
    host_chat = host.get_by_label("Message", exact=True)
    await host_chat.fill("Welcome! Questions on chapter 3?")
    await host_chat.press("Enter")
    for page in (host, *pages):
        bodies = page.locator("#messages > li[data-seq] .msg-body")
        await expect(bodies).to_have_text(["Hello everyone", "Welcome! Questions on chapter 3?"])

    # Lea raises her hand: the mentor sees it.
    await lea.get_by_role("button", name="Raise hand").click()
    await expect(lea.get_by_role("button", name="Lower hand")).to_have_attribute("aria-pressed", "true")
    await expect(host.locator("#hands")).to_contain_text("Raised hands (1): Lea")
    await expect(host.locator(f"#participants li[data-user-id='{students[1].id}'] [aria-label='hand raised']")).to_be_visible()
    await screenshot(host, "rooms-mentor")

    # The mentor kicks Omar: he is told and back in the lobby; the others see him gone.
    await host.get_by_role("button", name="Kick Omar").click()
    await expect(omar.locator("#notice")).to_have_text("The host removed you from this room. You may join again.")
    await expect(omar.get_by_role("heading", name="Live now")).to_be_visible()
    for page in (host, sam, lea):
        await expect(page.locator("#participants > li")).to_have_count(3)

    await screenshot(sam, "rooms-student-phone")
    # The mentor ends the room: the students are told and can no longer write.
    await host.get_by_role("button", name="End room").click()
    for page in (sam, lea):
        await expect(page.locator("#notice")).to_have_text("This room has ended. Thanks for coming!")
        await expect(page.get_by_label("Message", exact=True)).to_be_disabled()
    await expect(host.locator("#notice")).to_have_text("You ended the room.")
    _, body = await api.request("GET", f"/api/live-sessions/{session_id}", mentor)
    assert body["live_session"]["status"] == "ended"
    for page in (host, *pages):
        assert_clean(page)
