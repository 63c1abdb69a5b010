"""Command-line tools read which webhook events are subscribed only when their changes
emit some: `createuser` and `demo` put their `user.created` and `conversation.created` in
the outbox for a running server to deliver; the other commands skip the read. The real
command functions, run as `studyhall` runs them (their own event loop, in a thread here),
against the test's PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aiohttp

from handlers.settings import Settings
from server.cli import cmd_createuser, cmd_demo, core_for_command
from tests.client import Api
from tests.identity_platform import hs256_platform
from tests.webhook_receiver import Receiver

SUBSCRIBED = ["user.created", "conversation.created"]


async def outbox(db: Any) -> list[tuple[str, dict[str, Any]]]:
    async with db.connection() as conn:
        rows = await conn.fetch("SELECT event_type, payload FROM webhook_deliveries ORDER BY created_at")
    return [(r["event_type"], r["payload"]) for r in rows]


async def test_commands_that_emit_events_reach_the_outbox_and_others_skip_the_read(
    start_instance: Any, db: Any, base_settings: Settings,
) -> None:
    server = await start_instance(webhooks__allow_private_targets=True)
    receiver = await Receiver().start()
    async with aiohttp.ClientSession() as session:
        api = Api(session, server.url)
        admin = await api.staff(db, "admin")
        platform = await hs256_platform(api, admin)
        status, body = await api.request("POST", "/api/webhooks/endpoints", admin, json={
            "app_id": platform.app_id, "url": receiver.url, "events": SUBSCRIBED})
    await receiver.close()
    assert status == 201, body
    before = len(await outbox(db))

    async with core_for_command(base_settings) as core:
        assert core.webhooks is None  # ingest, reindex, eval, app, webhook: no read
    async with core_for_command(base_settings, webhooks=True) as core:
        assert core.webhooks is not None and core.webhooks.wants("user.created")
        assert not core.webhooks.wants("message.created")

    created = argparse.Namespace(email="cli-hooks@example.com", password="correct horse battery", password_stdin=False,
                                 name="From CLI", role="mentor")
    assert await asyncio.to_thread(cmd_createuser, created, base_settings) == 0
    assert await asyncio.to_thread(cmd_demo, argparse.Namespace(), base_settings) == 0

    events = (await outbox(db))[before:]
    users = [p for t, p in events if t == "user.created"]
    assert all(u["via"] == "cli" for u in users), users
    # createuser's, then the demo's mentor, agent and student
    assert sorted(u["user"]["role"] for u in users) == ["agent", "mentor", "mentor", "student"]
    assert "From CLI" in {u["user"]["name"] for u in users}
    conversations = [p for t, p in events if t == "conversation.created"]
    # The demo's welcome thread and its live room's chat.
    assert sorted(c["conversation"]["kind"] for c in conversations) == ["direct", "room"]
