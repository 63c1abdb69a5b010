"""The embeddable widget and the agent console together, in real Chromium against a real
server, with the real `openai` client talking to the fake model server.

A guest on a page embedding the widget asks about an ingested document, watches the answer
stream in with its source, asks for a person; an agent in another browser context sees the
ticket arrive, claims it and replies; the guest sees the reply; an internal note never
reaches the guest; the agent hands back to the AI, which answers again.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from playwright.async_api import Page, expect

from tests.client import Api
from tests.fakellm import FakeLLM
from tests.pagekit import DESKTOP, assert_clean, browser, open_page, screenshot, seqs, sign_in  # noqa: F401

DOC = {
    "title": "Photosynthesis basics",
    "source": "https://example.org/biology/photosynthesis",
    "content": (
        "# Photosynthesis\n\nPhotosynthesis happens in the chloroplasts of plant cells. "
        "Chlorophyll, the green pigment in the chloroplasts, captures light energy.\n\n"
        "## Products\n\nThe plant turns water and carbon dioxide into glucose and releases oxygen."
    ),
}
FIRST_ANSWER = "Photosynthesis happens in the chloroplasts of plant cells, where chlorophyll captures light [1]."
SECOND_ANSWER = "Chlorophyll is the green pigment that captures light energy for the plant [1]."


def answer(body: dict[str, Any]) -> str:
    prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
    return SECOND_ANSWER if "chlorophyll do" in prompt.split("[1]")[-1] else FIRST_ANSWER


def widget(page: Page) -> Any:
    """Locators inside the widget's (open) shadow root: Playwright pierces it."""
    return page.locator("#studyhall-widget")


async def ask(page: Page, text: str) -> None:
    box = page.get_by_label("Your question")
    await box.fill(text)
    await box.press("Enter")


async def test_guest_asks_tutor_then_agent_takes_over_and_hands_back(browser, start_instance, db) -> None:  # noqa: F811
    async with FakeLLM(reply=answer, token_delay=0.06) as llm, aiohttp.ClientSession() as http:
        server = await start_instance(tutor__llm_base_url=llm.base_url, tutor__llm_api_key="test")
        api = Api(http, server.url)
        agent = await api.staff(db, "agent", "Alex")
        status, body = await api.request("POST", "/api/documents", agent, json=DOC)
        assert status == 201, body

        console = await open_page(browser, server.url + "/static/console.html")
        await sign_in(console, agent.email)
        await expect(console.locator("#queue")).to_contain_text("No tickets here.")

        guest = await open_page(browser, server.url + "/static/demo.html", viewport={"width": 1000, "height": 760})
        w = widget(guest)
        await w.get_by_role("button", name="Ask the tutor").click()
        await expect(w.get_by_role("dialog", name="Photosynthesis tutor")).to_be_visible()
        await expect(guest.get_by_label("Your question")).to_be_enabled()

        # The answer streams in (a draft grows), then the committed message replaces it.
        await ask(guest, "Where does photosynthesis happen in the cell?")
        draft = w.locator("li.draft")
        await expect(draft).to_be_visible()
        await expect(draft.locator(".msg-body")).to_contain_text("chloroplasts")
        final = w.locator("li.msg-assistant[data-seq]")
        await expect(final.locator(".msg-body")).to_have_text(FIRST_ANSWER)
        await expect(draft).to_have_count(0)
        citation = final.locator(".citations li")
        await expect(citation).to_have_text(DOC["title"])
        await expect(citation.get_by_role("link", name=DOC["title"])).to_have_attribute("href", DOC["source"])
        await screenshot(guest, "widget-answer")

        # Talk to a person: the AI stops, the guest is told, the console gets the ticket live.
        await w.get_by_role("button", name="Talk to a person").click()
        await expect(w.locator("#sh-mode")).to_contain_text("Waiting for a person")
        await expect(w.locator("li.msg-system")).to_have_count(1)
        ticket_item = console.locator("#queue button.item")
        await expect(ticket_item).to_have_count(1)
        await expect(ticket_item).to_contain_text(re.compile(r"SH-\d+"))

        ticket_id = await ticket_item.get_attribute("data-id")
        await ticket_item.click()
        await expect(console.locator("#messages li.msg-assistant .citations")).to_contain_text(DOC["title"])
        await expect(console.locator("#decisions")).to_contain_text("answer")
        await console.get_by_role("button", name="Claim").click()
        await expect(console.locator("#ticket-status")).to_have_text("assigned")
        await expect(w.locator("#sh-mode")).to_have_text("Alex (support) is helping you")

        # A reply reaches the guest; an internal note does not.
        await console.get_by_label("Internal note (agents only)").check()
        await console.get_by_label("Internal note", exact=True).fill("Guest seems new to biology; keep it simple.")
        await console.get_by_role("button", name="Add internal note").click()
        await expect(console.locator("#messages .internal-note")).to_contain_text("keep it simple")
        await console.get_by_label("Reply to the student").check()
        await console.get_by_label("Reply", exact=True).fill("Hi, I'm Alex. Chloroplasts are small green organelles.")
        await console.get_by_role("button", name="Send reply").click()
        agent_msg = w.locator("li.msg-agent")
        await expect(agent_msg.locator(".msg-body")).to_have_text("Hi, I'm Alex. Chloroplasts are small green organelles.")
        await expect(agent_msg.locator(".msg-sender")).to_have_text("Alex (agent)")
        await ask(guest, "Thanks! That helps.")
        await expect(console.locator("#messages li[data-seq] .msg-body").last).to_have_text("Thanks! That helps.")
        await expect(w.locator(".seen")).to_be_visible()  # the agent's console read it
        assert "keep it simple" not in await w.inner_text()
        await screenshot(guest, "widget-agent")
        await console.evaluate("window.scrollTo(0, 0)")
        await screenshot(console, "console", full_page=True)

        # Resolve and hand back: the AI answers again.
        await console.get_by_label("After resolving").select_option("ai")
        await console.get_by_role("button", name="Resolve").click()
        await expect(console.locator("#ticket-status")).to_have_text("resolved")
        await expect(w.locator("#sh-mode")).to_contain_text("AI tutor")
        await ask(guest, "What does chlorophyll do?")
        await expect(w.locator("li.msg-assistant[data-seq] .msg-body").last).to_have_text(SECOND_ANSWER)

        shown = await seqs(guest, "#studyhall-widget #sh-messages")
        assert shown == list(range(1, len(shown) + 1)), shown
        status, body = await api.request("GET", f"/api/tickets/{ticket_id}", agent)
        assert body["ticket"]["status"] == "resolved" and body["ticket"]["handback"] == "ai"
        assert_clean(guest)
        assert_clean(console)
