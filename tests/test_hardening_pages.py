"""Every page works in real Chromium under its Content-Security-Policy, with no CSP
violation reported, and frame-ancestors lets only the allowed origins frame a page."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, expect

from storage.embedded import free_port
from tests.client import Api, Instance
from tests.pagekit import DESKTOP, browser, sign_in  # noqa: F401

# Chromium reports each blocked load, inline script or style, and frame as a console
# message; the `securitypolicyviolation` event catches the ones it reports only there.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""


async def watched_page(browser: Browser, url: str) -> tuple[Page, list[str]]:  # noqa: F811
    """A page in its own context whose console and CSP violations are recorded from the start."""
    context = await browser.new_context(viewport=DESKTOP)
    await context.add_init_script(RECORD_VIOLATIONS)
    page = await context.new_page()
    page.set_default_timeout(10_000)
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if "Content Security Policy" in msg.text or "Refused to" in msg.text else None)
    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
    # Every file a page needs loads (a 404 would hide a script moved out of the page);
    # browsers ask for /favicon.ico on their own.
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
    await page.goto(url)
    return page, problems


async def assert_no_violations(page: Page, problems: list[str]) -> None:
    violations = [v for frame in page.frames for v in await frame.evaluate("window.__cspViolations || []")]
    assert not violations and not problems, (violations, problems)


async def test_each_page_works_without_csp_violations(browser, server: Instance, api: Api, db: Any) -> None:  # noqa: F811
    home, problems = await watched_page(browser, server.url + "/")
    await expect(home.locator("#snippet")).to_contain_text("/static/widget.js")  # its script ran
    await assert_no_violations(home, problems)

    demo, problems = await watched_page(browser, server.url + "/static/demo.html")
    assert "Georgia" in await demo.evaluate("getComputedStyle(document.body).fontFamily")  # demo.css applied
    w = demo.locator("#studyhall-widget")
    await w.get_by_role("button", name="Ask the tutor").click()
    await expect(demo.get_by_label("Your question")).to_be_enabled()
    await demo.get_by_label("Your question").fill("What is photosynthesis?")
    await demo.keyboard.press("Enter")
    await expect(w.locator("li[data-seq]:not(.msg-mine)").first).to_be_visible()  # answered over the socket
    await assert_no_violations(demo, problems)

    pages: dict[str, tuple[str, str]] = {
        "/static/threads.html": ("student", "#conn"),
        "/static/rooms.html": ("mentor", "#conn"),
        "/static/console.html": ("agent", "#conn"),
    }
    for path, (role, conn) in pages.items():
        user = await api.register(role.title()) if role == "student" else await api.staff(db, role)
        page, problems = await watched_page(browser, server.url + path)
        await sign_in(page, user.email or "")
        await expect(page.locator(conn)).to_have_text("Connected")
        await assert_no_violations(page, problems)


HOST_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Some school</title></head>
<body><h1>Course page</h1>
<script src="{server}/static/widget.js" data-server="{server}" data-title="Course helper"></script></body></html>"""

FRAMING_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Frames</title></head>
<body><iframe id="demo" src="{server}/static/demo.html" title="demo"></iframe>
<iframe id="console" src="{server}/static/console.html" title="console"></iframe></body></html>"""


Site = Callable[[Any], Awaitable[str]]


@pytest.fixture
async def other_site() -> AsyncIterator[Site]:
    """`await other_site(html)`: serve a page on another origin (localhost, a new port);
    `html` may be a function called on each request (when the page names a server that
    starts later)."""
    runners: list[web.AppRunner] = []

    async def start(html: str | Callable[[], str]) -> str:
        async def page(_: web.Request) -> web.Response:
            return web.Response(text=html() if callable(html) else html, content_type="text/html")

        app = web.Application()
        app.router.add_get("/", page)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "localhost", port).start()
        runners.append(runner)
        return f"http://localhost:{port}/"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_widget_embedded_on_another_origin_has_no_csp_violations(browser, server: Instance, other_site: Site) -> None:  # noqa: F811
    page, problems = await watched_page(browser, await other_site(HOST_PAGE.format(server=server.url)))
    w = page.locator("#studyhall-widget")
    await w.get_by_role("button", name="Ask the tutor").click()
    await expect(page.get_by_label("Your question")).to_be_enabled()
    await page.get_by_label("Your question").fill("Hello?")
    await page.keyboard.press("Enter")
    await expect(w.locator("li[data-seq]:not(.msg-mine)").first).to_be_visible()
    await assert_no_violations(page, problems)


async def frame_shows(page: Page, frame_id: str, text: str) -> bool:
    """Whether the iframe loaded our page (a refused frame shows Chromium's error page)."""
    handle = await page.locator(f"iframe#{frame_id}").element_handle()
    assert handle is not None
    frame = await handle.content_frame()
    if frame is None:
        return False
    try:
        await frame.wait_for_load_state("load", timeout=5_000)
        return text in await frame.evaluate("document.body ? document.body.innerText : ''")
    except Exception:
        return False


async def test_frame_ancestors_follow_cors_origins(browser, start_instance: Any, other_site: Site) -> None:  # noqa: F811
    framing: dict[str, str] = {}
    allowed_url = await other_site(lambda: framing["html"])
    refused_url = await other_site(lambda: framing["html"])
    server = await start_instance(http__cors_origins=f"{allowed_url.rstrip('/')},https://school.example")
    framing["html"] = FRAMING_PAGE.format(server=server.url)

    page, problems = await watched_page(browser, allowed_url)
    assert await frame_shows(page, "demo", "Biology 101")  # the widget's page may be framed there
    assert not await frame_shows(page, "console", "Agent")  # the console only by its own origin
    assert any("frame-ancestors" in p for p in problems), problems

    page, problems = await watched_page(browser, refused_url)
    assert not await frame_shows(page, "demo", "Biology 101")  # an origin not on the list
    assert any("frame-ancestors" in p for p in problems), problems

    anywhere = await start_instance()  # STUDYHALL_CORS_ORIGINS="*": any site may frame the widget's page
    framing["html"] = FRAMING_PAGE.format(server=anywhere.url)
    page, problems = await watched_page(browser, refused_url)
    assert await frame_shows(page, "demo", "Biology 101")
