"""Markdown in the widget, in real Chromium against a real server (docs/browser.md,
"Markdown"): the tutor's and agents' Markdown renders (lists, code, emphasis, quotes,
links, citation links), and nothing a student, a document or a model writes runs script:
raw `<script>`, `onerror=`, `javascript:` links and HTML smuggled through Markdown stay
text. A student's own message shows exactly as typed."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from playwright.async_api import Page, expect

from tests.client import Api
from tests.fakellm import FakeLLM
from tests.pagekit import assert_clean, browser, open_page  # noqa: F401

SOURCE = "https://example.org/biology/cells"
DOC = {"title": "Cell biology", "source": SOURCE,
       "content": "Mitochondria make ATP, the energy currency of the cell. Ribosomes build proteins."}
# Each payload sets window.__pwned if it ever runs.
NASTY = [
    "<script>window.__pwned = 'script'</script>",
    "<img src=x onerror=\"window.__pwned = 'onerror'\">",
    "[click me](javascript:window.__pwned='js-link')",
    "[entity](&#106;avascript:window.__pwned='entity')",
    "[data](data:text/html;base64,PHNjcmlwdD53aW5kb3cuX19wd25lZD0xPC9zY3JpcHQ+)",
    "<a href=\"javascript:window.__pwned='raw-a'\">raw anchor</a>",
    "<javascript:window.__pwned='autolink'>",
    "![img](x\" onerror=\"window.__pwned='img-md')",
    "**<svg/onload=window.__pwned='svg'>**",
]
OTHER = {"title": "Cell energy", "source": "https://example.org/biology/energy",
         "content": "Mitochondria are the powerhouse of the cell and make most of its energy."}
ANSWER = "\n".join([
    "Mitochondria are the cell's powerhouse [2].",
    "Mitochondria make **ATP** [1], the cell's *energy currency*.",
    "",
    "- first item",
    "- second item",
    "",
    "```python",
    "def atp():",
    "    return 'energy'  # <b>not bold</b>",
    "```",
    "",
    "> A quoted line.",
    "",
    "Read [the course page](https://example.org/course) or [mail us](mailto:help@example.org).",
    "",
    *NASTY,
])


async def assistant_citations(api: Api, db: Any) -> list[dict[str, Any]]:
    """The committed answer's `metadata.citations`, from the database."""
    async with db.connection() as conn:
        raw = await conn.fetchval("SELECT metadata->'citations' FROM messages WHERE role = 'assistant' "
                                  "ORDER BY created_at DESC LIMIT 1")
    return json.loads(raw) if isinstance(raw, str) else raw


def widget(page: Page) -> Any:
    return page.locator("#studyhall-widget")


async def ask(page: Page, text: str) -> None:
    box = page.get_by_label("Your question")
    await box.fill(text)
    await box.press("Enter")


async def open_widget(browser: Any, url: str) -> tuple[Page, Any]:  # noqa: F811
    page = await open_page(browser, url + "/static/demo.html", viewport={"width": 1000, "height": 900})
    w = widget(page)
    await w.get_by_role("button", name="Ask the tutor").click()
    await expect(page.get_by_label("Your question")).to_be_enabled()
    return page, w


async def assert_nothing_ran(page: Page, w: Any) -> None:
    assert await page.evaluate("window.__pwned") is None
    for selector in ("script", "img", "svg", "iframe", "[onerror]", "[onload]", "[style]"):
        assert await w.locator(f"#sh-messages {selector}").count() == 0, selector
    hrefs = await w.locator("#sh-messages a").evaluate_all("els => els.map(a => a.getAttribute('href'))")
    assert all(h.startswith(("https:", "http:", "mailto:")) for h in hrefs), hrefs
    assert_clean(page)


async def test_tutor_markdown_renders_and_nothing_smuggled_runs(browser, start_instance, db) -> None:  # noqa: F811
    async with FakeLLM(reply=ANSWER, token_delay=0.0) as llm, aiohttp.ClientSession() as http:
        server = await start_instance(tutor__llm_base_url=llm.base_url, tutor__llm_api_key="test")
        api = Api(http, server.url)
        staff = await api.staff(db, "agent", "Alex")
        for doc in (DOC, OTHER):
            status, body = await api.request("POST", "/api/documents", staff, json=doc)
            assert status == 201, body
        page, w = await open_widget(browser, server.url)
        await ask(page, "What do mitochondria make?")
        body_el = w.locator("li.msg-assistant[data-seq] .msg-body")
        await expect(body_el).to_contain_text("A quoted line.")

        # Lists, code, emphasis, quotes and links render.
        await expect(body_el.locator("ul > li")).to_have_text(["first item", "second item"])
        await expect(body_el.locator("pre > code")).to_contain_text("return 'energy'  # <b>not bold</b>")
        await expect(body_el.locator("strong").first).to_have_text("ATP")
        await expect(body_el.locator("em")).to_have_text("energy currency")
        await expect(body_el.locator("blockquote")).to_have_text("A quoted line.")
        course = body_el.get_by_role("link", name="the course page")
        await expect(course).to_have_attribute("href", "https://example.org/course")
        await expect(course).to_have_attribute("rel", "noopener noreferrer")
        await expect(course).to_have_attribute("target", "_blank")
        await expect(body_el.get_by_role("link", name="mail us")).to_have_attribute("href", "mailto:help@example.org")
        # Each [n] links to the source the answer cites as n (metadata.citations[].n), though
        # the citations are listed in order of first citation.
        cites = body_el.locator("a.cite")
        await expect(cites).to_have_count(2)
        links = await cites.evaluate_all(
            "els => els.map(a => [a.textContent, a.getAttribute('href'), a.getAttribute('rel'), a.title])")
        citations = await assistant_citations(api, db)
        by_n = {c["n"]: c for c in citations}
        assert sorted(by_n) == [1, 2] and {c["source"] for c in citations} == {SOURCE, OTHER["source"]}
        assert links == [
            [f"[{n}]", by_n[n]["source"], "noopener noreferrer", by_n[n]["title"]]
            for n in (int(text.strip("[]")) for text, *_ in links)
        ]
        assert {link[1] for link in links} == {SOURCE, OTHER["source"]}

        # The nasty lines are text: visible, inert.
        text = await body_el.inner_text()
        for visible in ("<script>window.__pwned = 'script'</script>", "onerror=", "click me", "raw anchor"):
            assert visible in text, visible
        await expect(body_el.get_by_role("link", name="click me")).to_have_count(0)
        await body_el.get_by_text("click me").click()  # a would-be link does nothing when clicked
        await assert_nothing_ran(page, w)


async def test_student_text_shows_as_typed_and_runs_nothing(browser, server) -> None:  # noqa: F811
    page, w = await open_widget(browser, server.url)
    typed = "My list:\n- *not* a list\n" + "\n".join(NASTY)
    box = page.get_by_label("Your question")
    await box.fill(typed)
    await box.press("Enter")
    mine = w.locator("li.msg-user[data-seq] .msg-body").first
    await expect(mine).to_be_visible()
    assert await mine.evaluate("el => el.textContent") == typed  # exactly as typed: no Markdown
    assert await mine.locator("*").count() == 0
    await assert_nothing_ran(page, w)


async def test_an_offline_answer_quoting_a_hostile_document_runs_nothing(browser, server, api, db) -> None:  # noqa: F811
    """No model: the tutor quotes the document's own sentences, hostile ones included."""
    staff = await api.staff(db, "agent", "Alex")
    hostile = {"title": "Ribosomes <img src=x onerror=\"window.__pwned='title'\">", "source": "javascript:alert(1)",
               "content": ("Ribosomes build proteins <img src=x onerror=\"window.__pwned='doc'\"> in every cell. "
                           "Ribosomes read [a link](javascript:window.__pwned='doc-link') messenger RNA. "
                           "Ribosomes <script>window.__pwned='doc-script'</script> are tiny.")}
    status, body = await api.request("POST", "/api/documents", staff, json=hostile)
    assert status == 201, body
    page, w = await open_widget(browser, server.url)
    await ask(page, "What do ribosomes build?")
    answer = w.locator("li.msg-assistant[data-seq] .msg-body")
    await expect(answer).to_contain_text("Ribosomes build proteins")
    await expect(answer.locator("blockquote").first).to_contain_text("onerror=")
    # Its citation's source is not http(s): [1] is no link, its title is plain text.
    await expect(answer.locator("span.cite").first).to_have_text("[1]")
    await expect(w.locator(".citations li").first).to_contain_text("onerror=")
    await assert_nothing_ran(page, w)
