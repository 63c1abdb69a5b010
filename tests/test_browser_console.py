"""Agent console in Chromium: the queue sorted by SLA as tickets arrive live, claim,
transfer to another agent by id, and resolve with close."""

from __future__ import annotations

from playwright.async_api import expect

from tests.client import Api, Instance
from tests.pagekit import PHONE, assert_clean, browser, open_page, screenshot, sign_in  # noqa: F401


async def test_queue_order_claim_transfer_close(browser, server: Instance, api: Api, db) -> None:  # noqa: F811
    alex = await api.staff(db, "agent", "Alex")
    bea = await api.staff(db, "agent", "Bea")
    page_a = await open_page(browser, server.url + "/static/console.html")
    await sign_in(page_a, alex.email)
    page_b = await open_page(browser, server.url + "/static/console.html", viewport=PHONE)
    await sign_in(page_b, bea.email)

    # Two guests' tutor conversations are escalated by staff: a low one, then an urgent one.
    staff = await api.socket(alex)
    tickets = {}
    for priority in ("low", "urgent"):
        guest = await api.guest(f"Guest {priority}")
        guest_sock = await api.socket(guest)
        conv = (await guest_sock.ok("tutor:start", {"title": f"{priority} help"}))["conversation"]
        ack = await staff.ok("ticket:create", {"conversation_id": conv["id"], "reason": f"{priority} test", "priority": priority})
        tickets[priority] = (ack["ticket"], guest_sock)

    # They arrived live; the urgent one (earlier SLA) is listed first.
    items = page_a.locator("#queue button.item")
    await expect(items).to_have_count(2)
    numbers = await items.evaluate_all("els => els.map(e => e.dataset.number)")
    assert numbers == [tickets["urgent"][0]["number"], tickets["low"][0]["number"]]

    urgent, guest_sock = tickets["urgent"]
    await items.first.click()
    await page_a.get_by_role("button", name="Claim").click()
    await expect(page_a.locator("#ticket-status")).to_have_text("assigned")
    await page_a.get_by_label("Transfer to agent (user id)").fill(bea.id)
    await page_a.get_by_role("button", name="Transfer").click()
    await expect(page_a.locator("#ticket-header")).to_contain_text("assigned to Bea")
    await expect(page_a.get_by_role("button", name="Transfer")).to_be_hidden()  # no longer Alex's to move

    # Bea sees it as hers (live update), opens it and closes the conversation.
    await page_b.get_by_label("Mine").check()
    mine = page_b.locator("#queue button.item")
    await expect(mine).to_have_count(1)
    await expect(mine).to_contain_text("yours")
    await mine.click()
    await expect(page_b.locator("#messages li.msg-system").last).to_contain_text("Bea")
    await screenshot(page_b, "console-phone", full_page=True)
    await page_b.get_by_label("After resolving").select_option("close")
    await page_b.get_by_role("button", name="Resolve").click()
    await expect(page_b.locator("#ticket-status")).to_have_text("closed")
    await expect(page_b.locator("#queue")).to_contain_text("No tickets here.")
    await guest_sock.wait_for("conversation:updated", lambda d: d["conversation"]["status"] == "closed")
    status, body = await api.request("GET", f"/api/tickets/{urgent['id']}", alex)
    assert status == 200 and body["ticket"]["status"] == "closed" and body["ticket"]["resolved_by"] == bea.id
    assert_clean(page_a)
    assert_clean(page_b)
