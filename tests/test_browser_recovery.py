"""The widget loses its server while messages keep coming; after it reconnects the page
shows every message exactly once, in seq order, and what the guest typed while offline is
delivered once.

The server the widget talks to is stopped; meanwhile the agent writes through a second
instance on another port (same database); then a new instance starts on the widget's port.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
from aiohttp import web
from playwright.async_api import Page, expect

from bench.cluster_bench import hole_figures
from handlers.settings import Settings
from server.app import create_app
from server.keys import METRICS
from storage import messages as message_store
from tests.client import Api, Instance, Socket, User
from tests.pagekit import assert_clean, browser, open_page, screenshot, seqs  # noqa: F401

AWAY = [f"While you were away, part {i}" for i in range(1, 6)]


async def serve_on_port(settings: Settings, port: int, runners: list[web.AppRunner]) -> Instance:
    """An instance on a chosen port (the one a restarted server comes back on)."""
    app = create_app(settings.with_(http__port=port))
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    runners.append(runner)
    return Instance(f"http://127.0.0.1:{port}", app, runner)


async def handed_to_an_agent(browser: Any, api: Api, db: Any, near: Instance) -> tuple[Page, User, Socket, str]:  # noqa: F811
    """A guest's widget on `near` asks for a person and agent Alex claims the ticket through
    a socket on `near`: the guest's page, the agent, its socket and the conversation's id."""
    agent = await api.staff(db, "agent", "Alex")
    guest = await open_page(browser, near.url + "/static/demo.html")
    w = guest.locator("#studyhall-widget")
    await w.get_by_role("button", name="Ask the tutor").click()
    await expect(guest.get_by_label("Your question")).to_be_enabled()
    await w.get_by_role("button", name="Talk to a person").click()
    await expect(w.locator("#sh-mode")).to_contain_text("Waiting for a person")
    sock = await api.socket(agent)
    _, body = await api.request("GET", "/api/tickets", agent)
    await sock.ok("ticket:claim", {"ticket_id": body["tickets"][0]["id"]})
    return guest, agent, sock, str(body["tickets"][0]["conversation_id"])


async def test_widget_recovers_every_message_once_after_server_restart(
    browser, start_instance, base_settings: Settings, db  # noqa: F811
) -> None:
    runners: list[web.AppRunner] = []
    first = await start_instance()
    port = int(first.url.rsplit(":", 1)[1])
    async with aiohttp.ClientSession() as http:
        try:
            await run(browser, first, port, base_settings, runners, start_instance, Api(http, first.url), db)
        finally:
            for runner in runners:
                await runner.cleanup()


async def run(browser: Any, first: Instance, port: int, settings: Settings, runners: list[web.AppRunner],  # noqa: F811
              start_instance: Any, api: Api, db: Any) -> None:
    guest, agent, sock, cid = await handed_to_an_agent(browser, api, db, first)
    w = guest.locator("#studyhall-widget")
    await sock.ok("message:send", {"conversation_id": cid, "content": "Before the cut", "client_id": "before-1"})
    await expect(w.locator("li.msg-agent .msg-body")).to_have_text(["Before the cut"])

    # The server goes away. The guest writes anyway: the message waits, marked as sending.
    await sock.disconnect()
    await first.stop()
    await expect(w.locator(".conn")).to_have_text("Reconnecting…")
    box = guest.get_by_label("Your question")
    await box.fill("Are you still there?")
    await box.press("Enter")
    await expect(w.locator("li.msg-pending")).to_contain_text("Sending…")

    # Meanwhile the agent keeps writing through another instance on the same database.
    other = await start_instance()
    sock2 = await api.socket(agent, url=other.url)
    for i, text in enumerate(AWAY):
        await sock2.ok("message:send", {"conversation_id": cid, "content": text, "client_id": f"away-{i}"})
    await screenshot(guest, "widget-offline")

    # The widget's server comes back on the same port: the widget reconnects by itself,
    # fills the gap by seq and delivers the guest's message once.
    back = await serve_on_port(settings, port, runners)
    await expect(w.locator(".conn")).to_be_hidden(timeout=15_000)
    bodies = w.locator("li[data-seq] .msg-body")
    await expect(w.locator("li.msg-pending")).to_have_count(0)
    await expect(w.locator("li.msg-mine[data-seq] .msg-body")).to_have_text(["Are you still there?"])
    # Live delivery works again (instances share no Redis here: write through the widget's own).
    sock3 = await api.socket(agent, url=back.url)
    await sock3.ok("message:send", {"conversation_id": cid, "content": "Welcome back", "client_id": "after-1"})
    await expect(bodies.last).to_have_text("Welcome back")

    status, history = await api.request("GET", f"/api/conversations/{cid}/messages?limit=100", agent)
    assert status == 200
    expected = [m["content"] for m in history["messages"]]
    shown = await bodies.all_inner_texts()
    assert shown == expected, (shown, expected)  # every message once, in the server's order
    assert await seqs(guest, "#studyhall-widget #sh-messages") == [m["seq"] for m in history["messages"]]
    assert [t for t in shown if t.startswith("While you were away")] == AWAY
    assert shown.count("Are you still there?") == 1
    await screenshot(guest, "widget-recovered")
    assert_clean(guest)


async def test_widget_fills_a_seq_gap_without_reconnecting(browser, start_instance, db) -> None:  # noqa: F811
    """Two instances with no Redis between them: what the agent writes through the other
    instance never reaches the widget live. The next message that does arrive jumps in seq;
    the widget asks `sync` for the hole and shows everything once, in order."""
    near, far = await start_instance(), await start_instance()
    async with aiohttp.ClientSession() as http:
        api = Api(http, near.url)
        guest, agent, sock, cid = await handed_to_an_agent(browser, api, db, near)
        w = guest.locator("#studyhall-widget")

        far_sock = await api.socket(agent, url=far.url)
        for i in range(3):
            await far_sock.ok("message:send", {"conversation_id": cid, "content": f"Missed {i}", "client_id": f"m{i}"})
        await sock.ok("message:send", {"conversation_id": cid, "content": "Seen live", "client_id": "live"})

        bodies = w.locator("li[data-seq] .msg-body")
        await expect(bodies.last).to_have_text("Seen live")
        _, history = await api.request("GET", f"/api/conversations/{cid}/messages", agent)
        await expect(bodies).to_have_text([m["content"] for m in history["messages"]])
        assert await seqs(guest, "#studyhall-widget #sh-messages") == list(range(1, len(history["messages"]) + 1))
        assert_clean(guest)


def holes_seen(sock: Socket, cid: str, after: int) -> int:
    """How many times a seq past `after` arrived with one below it still missing
    (bench/cluster_bench.py counts them the same way)."""
    stream = [(0.0, int(d["message"]["seq"])) for d in sock.received("message:new") if d["message"]["conversation_id"] == cid]
    return hole_figures([stream], after).holes


async def test_widget_waits_out_holes_that_fill_themselves(browser, start_instance, redis_url, db) -> None:  # noqa: F811
    """Two instances with Redis between them, an agent writing through both at once: a
    message from the far instance comes through Redis and often arrives a few milliseconds
    after the next near one, so every socket on the near instance sees seq jump and then
    the hole fill. The widget used to `sync` for each such hole (every member on the
    instance, each time); it now waits GAP_GRACE_MS (static/js/timeline.js) and syncs only
    for a hole still open, so here it syncs for almost none, and still shows every message
    once, in order."""
    shared = {"cluster__redis_url": redis_url, "cluster__redis_channel": f"holes-{uuid.uuid4().hex[:8]}",
              "gateway__rate_limit_per_second": 500, "gateway__rate_limit_burst": 500}
    near, far = await start_instance(**shared), await start_instance(**shared)
    async with aiohttp.ClientSession() as http:
        api = Api(http, near.url)
        # The agent's socket on the near instance sees what every socket there sees.
        guest, agent, near_sock, cid = await handed_to_an_agent(browser, api, db, near)
        w = guest.locator("#studyhall-widget")
        await expect(w.locator("#sh-mode")).not_to_contain_text("Waiting for a person")
        far_sock = await api.socket(agent, url=far.url)

        def syncs() -> float:
            return near.app[METRICS].registry.get_sample_value("studyhall_socket_events_total", {"event": "sync"}) or 0.0

        async with db.connection() as conn:
            last = await conn.fetchval("SELECT last_seq FROM conversations WHERE id = $1", uuid.UUID(cid))
        before, sent = syncs(), 0
        while holes_seen(near_sock, cid, last) < 20 and sent < 400:
            await asyncio.gather(*(
                sock.ok("message:send", {"conversation_id": cid, "content": f"{tag}{sent + k}", "client_id": f"{tag}{sent + k}"})
                for k in range(5) for sock, tag in ((near_sock, "n"), (far_sock, "f"))))
            sent += 5
        holes = holes_seen(near_sock, cid, last)
        assert holes >= 20, f"in {2 * sent} sends no message from the far instance came after a later near one"

        async with db.connection() as conn:
            stored, _ = await message_store.history(conn, uuid.UUID(cid), before_seq=None, limit=10_000)
        await expect(w.locator("li[data-seq]")).to_have_count(len(stored), timeout=15_000)
        assert await seqs(guest, "#studyhall-widget #sh-messages") == [m.seq for m in stored]
        await asyncio.sleep(0.5)  # past the grace of the last hole
        widget_syncs = syncs() - before
        print(f"holes seen on the near instance {holes} in {2 * sent} sends; the widget's syncs {widget_syncs:.0f}")
        # Allowed: one sync for a hole that took longer than the grace on a loaded machine,
        # and one for each `resync` the instance sent (a late Redis probe under load sends
        # one to every socket; the agent's socket on the same instance hears it too).
        # Syncing at once, the widget made 9 for 20-21 holes here.
        allowed = 1 + len(near_sock.received("resync"))
        assert widget_syncs <= allowed, f"the widget synced {widget_syncs:.0f} times for {holes} holes that filled"
        assert_clean(guest)
