"""The widget signed in as a platform's user, in real Chromium: a small "platform" (its
own origin, its own backend signing identity tokens) embeds the widget; it shows the
user's name; a second device of the same `sub` shows the same history; the short
Studyhall session is refreshed through the host page's callback, and a message sent after
it expired still arrives, once, on both devices. And a guest whom the platform then signs
in, naming the guest, keeps their conversation."""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Page, expect

from handlers.settings import IdentitySettings
from server.keys import GATEWAY
from storage.embedded import free_port
from tests.client import Api
from tests.identity_platform import Platform, hs256_platform
from tests.pagekit import assert_clean, browser, open_page, screenshot  # noqa: F401

SESSION_SECONDS = 4.0

# data-identity + Studyhall.onIdentityExpired(...)
ATTR_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Platform</title></head>
<body><h1>The platform's course page</h1>
<script>window.refreshes = 0;</script>
<script src="{server}/static/widget.js" data-server="{server}" data-title="Course helper"
        data-app-id="{app_id}" data-identity="{jwt}"></script>
<script>
Studyhall.onIdentityExpired(async () => {{
  window.refreshes += 1;
  return (await fetch("/identity?sub={sub}&name={name_q}")).text();
}});
</script></body></html>"""

# Studyhall.identify(...) + data-identity-refresh="fnName"
JS_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Platform</title></head>
<body><h1>The platform's course page, second device</h1>
<script>
window.refreshes = 0;
window.platformIdentity = async () => {{
  window.refreshes += 1;
  return (await fetch("/identity?sub={sub}&name={name_q}")).text();
}};
</script>
<script src="{server}/static/widget.js" data-server="{server}" data-title="Course helper"
        data-app-id="{app_id}" data-identity-refresh="platformIdentity"></script>
<script>
fetch("/identity?sub={sub}&name={name_q}").then((r) => r.text()).then((jwt) => Studyhall.identify(jwt));
</script></body></html>"""


# A guest first; then the platform signs the visitor in, naming the guest (carry-over).
GUEST_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Platform</title></head>
<body><h1>The platform's public page</h1>
<button id="sign-in">Sign in on the platform</button>
<script src="{server}/static/widget.js" data-server="{server}" data-title="Course helper"
        data-app-id="{app_id}"></script>
<script>
const identity = (guest) => fetch("/identity?sub={sub}&name={name_q}" + (guest ? "&guest_token=" + encodeURIComponent(guest) : ""))
  .then((r) => r.text());
Studyhall.onIdentityExpired(() => identity(null));
document.getElementById("sign-in").onclick = async () => Studyhall.identify(await identity(Studyhall.guestToken()));
</script></body></html>"""


@dataclass
class PlatformSite:
    url: str
    origin: str
    platform: Platform | None = None
    signed: list[str] = field(default_factory=list)


@pytest.fixture
async def site(server_and_api: tuple[Any, Api]) -> AsyncIterator[PlatformSite]:
    """The platform's web site: pages embedding the widget and its backend's `/identity`."""
    server, _ = server_and_api
    port = free_port()
    site = PlatformSite(f"http://localhost:{port}", f"http://localhost:{port}")

    def jwt_for(request: web.Request, *, stale: bool = False) -> str:
        assert site.platform is not None
        site.signed.append(request.query["sub"])
        # Short-lived and single use (jti), as docs/integration.md recommends.
        now = int(time.time()) - (600 if stale else 0)
        return site.platform.sign(sub=request.query["sub"], name=request.query["name"], iat=now, exp=now + 60,
                                  guest_token=request.query.get("guest_token"))

    async def page(request: web.Request) -> web.Response:
        assert site.platform is not None
        template = {"js": JS_PAGE, "guest": GUEST_PAGE}.get(request.query.get("how", ""), ATTR_PAGE)
        sub, name = request.query["sub"], request.query["name"]
        body = template.format(server=server.url, app_id=site.platform.app_id, sub=html.escape(sub),
                               name_q=html.escape(name.replace(" ", "%20")),
                               jwt=html.escape(jwt_for(request, stale="stale" in request.query))
                               if template is ATTR_PAGE else "")
        return web.Response(text=body, content_type="text/html")

    async def identity(request: web.Request) -> web.Response:
        return web.Response(text=jwt_for(request))

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/identity", identity)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "localhost", port).start()
    yield site
    await runner.cleanup()


@pytest.fixture
async def server_and_api(start_instance: Any) -> AsyncIterator[tuple[Any, Api]]:
    server = await start_instance(identity=IdentitySettings(session_hours=SESSION_SECONDS / 3600))
    async with aiohttp.ClientSession() as http:
        yield server, Api(http, server.url)


def widget(page: Page) -> Any:
    return page.locator("#studyhall-widget")


async def ask(page: Page, text: str) -> None:
    box = page.get_by_label("Your question")
    await expect(box).to_be_enabled()
    await box.fill(text)
    await box.press("Enter")


async def test_widget_signed_in_by_the_platform_refreshes_and_loses_nothing(
    browser, server_and_api: tuple[Any, Api], site: PlatformSite, db: Any,  # noqa: F811
) -> None:
    _, api = server_and_api
    admin = await api.staff(db, "admin")
    # The app lists the platform's origin: the widget's sign-ins come from that page.
    site.platform = await hs256_platform(api, admin, origins=[site.origin])

    # First device: the token in data-identity.
    first = await open_page(browser, site.url + "/?sub=ada-1&name=Ada%20Lovelace")
    w1 = widget(first)
    await w1.get_by_role("button", name="Ask the tutor").click()
    await expect(w1.locator(".who")).to_have_text("Signed in as Ada Lovelace")
    await ask(first, "What is a derivative?")
    await expect(w1.locator("li.msg-mine[data-seq]")).to_have_count(1)
    await expect(w1.locator("li[data-seq]:not(.msg-mine)").first).to_be_visible()  # the tutor answered
    await screenshot(first, "widget-identity")

    # Second device of the same platform user: Studyhall.identify(...), the same history.
    second = await open_page(browser, site.url + "/?sub=ada-1&name=Ada%20Lovelace&how=js")
    w2 = widget(second)
    await w2.get_by_role("button", name="Ask the tutor").click()
    await expect(w2.locator(".who")).to_have_text("Signed in as Ada Lovelace")
    await expect(w2.locator("li.msg-mine[data-seq] .msg-body")).to_have_text(["What is a derivative?"])
    shown = await w1.locator("li[data-seq] .msg-body").all_inner_texts()
    await expect(w2.locator("li[data-seq] .msg-body")).to_have_text(shown)

    # The session ends after SESSION_SECONDS: each page's callback is asked for a fresh token.
    await first.wait_for_function("window.refreshes >= 1", timeout=15_000)
    refreshed_at = time.monotonic()
    await second.wait_for_function("window.refreshes >= 1", timeout=15_000)
    # Write just after the refreshed session has expired in turn: the send waits in the
    # outbox through the drop and the next refresh, and arrives once.
    # (The server closes the socket the moment the session expires; a margin of a second
    # makes sure the send comes after that, not just before it.)
    await asyncio.sleep(max(0.0, refreshed_at + SESSION_SECONDS + 1.0 - time.monotonic()))
    await ask(first, "And an integral?")
    await expect(w1.locator("li.msg-mine[data-seq] .msg-body")).to_have_text(
        ["What is a derivative?", "And an integral?"], timeout=15_000)
    assert await first.evaluate("window.refreshes") >= 2
    # The other device receives it too (live, or recovered by seq after its own refresh).
    await expect(w2.locator("li.msg-mine[data-seq] .msg-body")).to_have_text(
        ["What is a derivative?", "And an integral?"], timeout=15_000)
    await expect(w1.locator("li.msg-pending")).to_have_count(0)
    await expect(w1.locator(".notice.warn")).to_be_hidden()
    assert set(site.signed) == {"ada-1"}
    assert_clean(first)
    assert_clean(second)


WATCH_CONNECTION = """() => {
  // Every time the widget's connection line shows (offline, reconnecting, signed out).
  window.connStates = [];
  const el = document.querySelector("#studyhall-widget").shadowRoot.querySelector(".conn");
  new MutationObserver(() => { if (!el.hidden) window.connStates.push(`${el.dataset.status}: ${el.textContent}`); })
    .observe(el, { attributes: true, childList: true, characterData: true, subtree: true });
}"""


async def test_the_widget_refreshes_ahead_of_the_sessions_end_and_never_drops(
    browser, server_and_api: tuple[Any, Api], site: PlatformSite, db: Any,  # noqa: F811
) -> None:
    """A little before the session ends, the widget asks the page for a fresh token and
    hands the new session to its open socket (`auth:refresh`): the same socket lives on past
    the old session's end (when the server would have closed it), with no reconnect."""
    server, api = server_and_api
    admin = await api.staff(db, "admin")
    site.platform = await hs256_platform(api, admin, origins=[site.origin])
    page = await open_page(browser, site.url + "/?sub=grace-1&name=Grace%20Hopper")
    w = widget(page)
    await w.get_by_role("button", name="Ask the tutor").click()
    await expect(w.locator(".who")).to_have_text("Signed in as Grace Hopper")
    await ask(page, "What is a derivative?")
    await expect(w.locator("li.msg-mine[data-seq]")).to_have_count(1)
    await page.evaluate(WATCH_CONNECTION)
    gateway = server.app[GATEWAY]

    def sockets() -> dict[str, Any]:
        return {sid: st.actor.token_id for sid, st in gateway.sockets.items() if st.actor.name == "Grace Hopper"}

    before = sockets()
    assert len(before) == 1, before
    # Past two and a half session lifetimes: without the refresh ahead, the server closes
    # the socket at the end of each.
    await asyncio.sleep(SESSION_SECONDS * 2.5)
    after = sockets()
    assert after.keys() == before.keys(), (before, after)  # the same socket, never closed
    assert set(after.values()).isdisjoint(before.values())  # now on a newer session
    assert await page.evaluate("window.refreshes") >= 2
    assert await page.evaluate("window.connStates") == []
    async with db.connection() as conn:
        row_token = await conn.fetchval("SELECT token_id FROM connections WHERE sid = $1", next(iter(after)))
    assert row_token == next(iter(after.values()))  # revoking the new session finds the socket
    await ask(page, "And an integral?")
    await expect(w.locator("li.msg-mine[data-seq] .msg-body")).to_have_text(["What is a derivative?", "And an integral?"])
    await expect(w.locator("li.msg-pending")).to_have_count(0)
    assert sockets().keys() == before.keys()
    assert await page.evaluate("window.connStates") == []
    assert_clean(page)


async def test_a_guest_signed_in_by_the_platform_keeps_the_conversation(
    browser, server_and_api: tuple[Any, Api], site: PlatformSite, db: Any,  # noqa: F811
) -> None:
    _, api = server_and_api
    admin = await api.staff(db, "admin")
    site.platform = await hs256_platform(api, admin, origins=[site.origin])
    page = await open_page(browser, site.url + "/?sub=bob-1&name=Bob&how=guest")
    w = widget(page)
    await w.get_by_role("button", name="Ask the tutor").click()
    await ask(page, "Asked as a guest")
    await expect(w.locator("li.msg-mine[data-seq] .msg-body")).to_have_text(["Asked as a guest"])
    await expect(w.locator(".who")).to_be_hidden()
    guest_token = await page.evaluate("Studyhall.guestToken()")
    assert guest_token

    await page.get_by_role("button", name="Sign in on the platform").click()
    await expect(w.locator(".who")).to_have_text("Signed in as Bob")
    # The guest's question is the user's own now, in the same conversation.
    await expect(w.locator("li.msg-mine[data-seq] .msg-body")).to_have_text(["Asked as a guest"])
    await ask(page, "Asked as Bob")
    await expect(w.locator("li.msg-mine[data-seq] .msg-body")).to_have_text(["Asked as a guest", "Asked as Bob"])
    assert await page.evaluate("Studyhall.guestToken()") is None
    status, _ = await api.request("GET", "/api/me", headers={"Authorization": f"Bearer {guest_token}"})
    assert status == 401  # the guest session ended with the move
    assert_clean(page)


async def test_a_token_expired_before_the_chat_opens_is_refreshed(
    browser, server_and_api: tuple[Any, Api], site: PlatformSite, db: Any,  # noqa: F811
) -> None:
    """The page was rendered long ago: its data-identity has expired. The widget asks the
    page's callback instead of failing (or falling back to a guest)."""
    _, api = server_and_api
    site.platform = await hs256_platform(api, await api.staff(db, "admin"))
    page = await open_page(browser, site.url + "/?sub=cy-1&name=Cy&stale=1")
    w = widget(page)
    await w.get_by_role("button", name="Ask the tutor").click()
    await expect(w.locator(".who")).to_have_text("Signed in as Cy")
    assert await page.evaluate("window.refreshes") == 1
    await ask(page, "Still me?")
    await expect(w.locator("li.msg-mine[data-seq] .msg-body")).to_have_text(["Still me?"])
    assert await page.evaluate("Studyhall.guestToken()") is None  # never a guest
    assert_clean(page)
