"""Webhooks through real servers, real PostgreSQL and a real receiver that verifies every
request with the `standardwebhooks` library (tests/webhook_receiver.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from handlers.webhooks.settings import WebhookSettings
from server.webhooks import DISPATCHER
from storage import webhooks as webhook_store
from storage.db import Database
from tests.client import Api, Instance, User
from tests.identity_platform import hs256_platform
from tests.webhook_receiver import Receiver

FAST = WebhookSettings(allow_private_targets=True, retry_schedule=(0.2, 0.3, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0),
                       timeout_seconds=5.0, lease_seconds=10.0, poll_seconds=0.2, subscriptions_refresh_seconds=1.0)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.close()


@pytest.fixture
async def hooked(start_instance: Any) -> Instance:
    return await start_instance(webhooks=FAST)


@pytest.fixture
async def hapi(hooked: Instance) -> AsyncIterator[Api]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        client = Api(session, hooked.url)
        yield client
        await client.close_sockets()


@pytest.fixture
async def admin(hapi: Api, db: Database) -> User:
    return await hapi.staff(db, "admin")


async def subscribe(api: Api, admin: User, receiver: Receiver, events: list[str], url: str | None = None) -> dict[str, Any]:
    platform = await hs256_platform(api, admin)
    status, body = await api.request("POST", "/api/webhooks/endpoints", admin,
                                     json={"app_id": platform.app_id, "url": url or receiver.url, "events": events})
    assert status == 201, body
    assert body["secret"].startswith("whsec_")
    receiver.secret = body["secret"]
    return body["endpoint"]


async def direct(api: Api) -> tuple[Any, str]:
    a, b = await api.register("A"), await api.register("B")
    sa = await api.socket(a)
    conv = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
    return sa, conv["id"]


async def test_message_created_arrives_signed_with_the_conversation_kind(hapi: Api, admin: User, receiver: Receiver) -> None:
    endpoint = await subscribe(hapi, admin, receiver, ["message.created"])
    assert "secret" not in endpoint and endpoint["enabled"] is True
    sa, cid = await direct(hapi)
    ack = await sa.ok("message:send", {"conversation_id": cid, "content": "hello hook", "client_id": "h1"})
    await receiver.wait_for(lambda: receiver.delivered)
    got = receiver.delivered[0]
    assert not receiver.refused
    assert got.payload["type"] == "message.created"
    data = got.payload["data"]
    assert data["conversation"] == {"id": cid, "kind": "direct", "title": None}
    assert data["message"]["id"] == ack["message"]["id"] and data["message"]["content"] == "hello hook"
    assert got.webhook_id.startswith("msg_")
    # The admin sees the delivery: status, response code, latency, attempts.
    status, body = await hapi.request("GET", f"/api/webhooks/endpoints/{endpoint['id']}/deliveries", admin)
    assert status == 200
    for _ in range(50):
        status, body = await hapi.request("GET", f"/api/webhooks/endpoints/{endpoint['id']}/deliveries", admin)
        if body["deliveries"][0]["status"] == "succeeded":
            break
        await asyncio.sleep(0.05)
    (d,) = body["deliveries"]
    assert d["status"] == "succeeded" and d["last_status_code"] == 204 and d["attempts"] == 1
    assert d["webhook_id"] == got.webhook_id and d["last_latency_ms"] is not None


async def test_no_subscription_writes_no_outbox_rows(hapi: Api, admin: User, receiver: Receiver, db: Database) -> None:
    await subscribe(hapi, admin, receiver, ["ticket.created"])
    sa, cid = await direct(hapi)
    await sa.ok("message:send", {"conversation_id": cid, "content": "nobody listens", "client_id": "n1"})
    async with db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries") == 0
        assert await conn.fetchval("SELECT count(*) FROM webhook_message_batches") == 0


async def test_a_rolled_back_change_sends_nothing(hapi: Api, admin: User, receiver: Receiver, db: Database) -> None:
    """The outbox row is written (by the batch's own statement), then the statement fails:
    a trigger on the outbox of messages sees the row and raises. The message and its
    outbox row roll back together and nothing is sent; the next message goes through."""
    await subscribe(hapi, admin, receiver, ["message.created"])
    sa, cid = await direct(hapi)
    async with db.connection() as conn:
        await conn.execute("""
            CREATE FUNCTION doom() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF (NEW.messages[1]).content = 'doomed' THEN
                    RAISE EXCEPTION 'doomed after its delivery row was written';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER doom AFTER INSERT ON webhook_message_batches FOR EACH ROW EXECUTE FUNCTION doom();
        """)
    ack = await sa.call("message:send", {"conversation_id": cid, "content": "doomed", "client_id": "d1"})
    assert ack["ok"] is False  # a server-side failure, not the sender's input
    await asyncio.sleep(1.0)
    assert receiver.attempts == []
    async with db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM webhook_deliveries") == 0
        assert await conn.fetchval("SELECT count(*) FROM webhook_message_batches") == 0
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE content = 'doomed'") == 0
    await sa.ok("message:send", {"conversation_id": cid, "content": "fine", "client_id": "d2"})
    await receiver.wait_for(lambda: receiver.delivered)
    assert [r.payload["data"]["message"]["content"] for r in receiver.delivered] == ["fine"]
    assert receiver.delivered[0].payload["data"]["message"]["seq"] == 1  # the doomed one took no seq


async def test_receiver_down_then_up_every_event_arrives_under_one_webhook_id(
    hapi: Api, admin: User, receiver: Receiver
) -> None:
    await subscribe(hapi, admin, receiver, ["message.created"])
    sa, cid = await direct(hapi)
    receiver.mode = "fail"
    sent = [(await sa.ok("message:send", {"conversation_id": cid, "content": f"m{i}", "client_id": f"c{i}"}))
            ["message"]["id"] for i in range(10)]
    await receiver.wait_for(lambda: len(receiver.attempts) >= 10)
    await receiver.down()  # now connections are refused
    sent += [(await sa.ok("message:send", {"conversation_id": cid, "content": f"m{i}", "client_id": f"c{i}"}))
             ["message"]["id"] for i in range(10, 20)]
    await asyncio.sleep(1.0)
    receiver.mode = "ok"
    await receiver.up()
    await receiver.wait_for(lambda: len({r.payload["data"]["message"]["id"] for r in receiver.delivered}) == 20,
                            timeout=20)
    ids_per_message: dict[str, set[str]] = {}
    for r in receiver.attempts:
        ids_per_message.setdefault(r.payload["data"]["message"]["id"], set()).add(r.webhook_id)
    assert sorted(ids_per_message) == sorted(sent)
    assert all(len(ids) == 1 for ids in ids_per_message.values())  # one webhook-id across retries
    failed_first = [r for r in receiver.attempts if r.status == 500]
    assert failed_first and all(r.webhook_id in {d.webhook_id for d in receiver.delivered} for r in failed_first)
    assert len(receiver.delivered) == 20  # each delivered once


async def test_two_instances_deliver_each_event_once(start_instance: Any, db: Database, receiver: Receiver) -> None:
    import aiohttp

    # 60 sends at once on a socket that also created the conversation: over the default burst of 60.
    roomy = {"gateway__rate_limit_burst": 200, "gateway__user_rate_limit_burst": 200}
    one = await start_instance(webhooks=FAST, **roomy)
    two = await start_instance(webhooks=FAST, **roomy)
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        admin = await api.staff(db, "admin")
        await subscribe(api, admin, receiver, ["message.created"])
        await asyncio.sleep(1.5)  # instance two hears of the endpoint (NOTIFY; the periodic reload at worst)
        sa, cid = await direct(api)
        api_two = Api(session, two.url)
        sc, cid2 = await direct(api_two)
        await asyncio.gather(
            *(sa.ok("message:send", {"conversation_id": cid, "content": f"a{i}", "client_id": f"a{i}"}) for i in range(60)),
            *(sc.ok("message:send", {"conversation_id": cid2, "content": f"b{i}", "client_id": f"b{i}"})
              for i in range(60)),
        )
        await receiver.wait_for(lambda: len(receiver.delivered) >= 120, timeout=20)
        await asyncio.sleep(0.5)
        counts = Counter(r.webhook_id for r in receiver.attempts)
        assert len(counts) == 120 and set(counts.values()) == {1}, counts.most_common(3)
        contents = sorted(r.payload["data"]["message"]["content"] for r in receiver.delivered)
        assert contents == sorted([f"a{i}" for i in range(60)] + [f"b{i}" for i in range(60)])
        await api.close_sockets()
        await api_two.close_sockets()


async def test_a_dead_instances_claim_is_delivered_by_the_other(
    start_instance: Any, db: Database, receiver: Receiver
) -> None:
    """Instance one claims the delivery and dies mid-request (its loop is cancelled: nothing
    settles the row). When its lease runs out, instance two sends it, same webhook-id."""
    import aiohttp

    one = await start_instance(webhooks=FAST.__class__(**{**FAST.__dict__, "lease_seconds": 1.5}))
    two = await start_instance(webhooks=FAST)
    two.app[DISPATCHER].task.cancel()  # only one can claim first
    async with aiohttp.ClientSession() as session:
        api = Api(session, one.url)
        admin = await api.staff(db, "admin")
        await subscribe(api, admin, receiver, ["message.created"])
        receiver.mode = "hang"
        sa, cid = await direct(api)
        await sa.ok("message:send", {"conversation_id": cid, "content": "survive", "client_id": "s1"})
        await receiver.wait_for(lambda: receiver.attempts)
        first = receiver.attempts[0]
        one.app[DISPATCHER].task.cancel()  # killed mid-delivery
        receiver.mode = "ok"
        async with db.connection() as conn:
            row = await conn.fetchrow("SELECT status, claim, attempts FROM webhook_deliveries")
        assert row["status"] == "pending" and row["claim"] is not None and row["attempts"] == 1
        two.app[DISPATCHER].task = asyncio.create_task(two.app[DISPATCHER].run())
        await receiver.wait_for(lambda: receiver.delivered, timeout=10)
        assert receiver.delivered[0].webhook_id == first.webhook_id
        assert receiver.delivered[0].payload["data"]["message"]["content"] == "survive"
        for _ in range(100):
            async with db.connection() as conn:
                row = await conn.fetchrow("SELECT status, attempts, claimed_by FROM webhook_deliveries")
            if row["status"] != "pending":
                break
            await asyncio.sleep(0.05)
        assert row["status"] == "succeeded" and row["attempts"] == 2
        assert row["claimed_by"] == two.app[DISPATCHER].instance_id
        two.app[DISPATCHER].task.cancel()
        await api.close_sockets()


async def test_private_targets_refused_at_creation_and_at_delivery(
    start_instance: Any, db: Database, receiver: Receiver
) -> None:
    import aiohttp

    strict = await start_instance(webhooks=FAST.__class__(**{**FAST.__dict__, "allow_private_targets": False}))
    async with aiohttp.ClientSession() as session:
        api = Api(session, strict.url)
        admin = await api.staff(db, "admin")
        platform = await hs256_platform(api, admin)
        for url in (receiver.url, "http://localhost:9/x", "http://[::1]/x", "http://169.254.169.254/latest",
                    "http://10.1.2.3/x", "http://0.0.0.0/x", "http://[::ffff:127.0.0.1]/x", "http://224.0.0.1/x",
                    "ftp://example.com/x"):
            status, body = await api.request("POST", "/api/webhooks/endpoints", admin,
                                             json={"app_id": platform.app_id, "url": url, "events": ["message.created"]})
            assert status == 400 and "refused" in body["error"]["message"], (url, body)
        # An endpoint that passed (say, its name pointed elsewhere then) is checked again at
        # delivery, after resolution: `localhost` resolves to loopback and is not connected to.
        async with db.transaction() as conn:
            await webhook_store.insert_endpoint(
                conn, app_id=uuid.UUID(platform.app_id), url=f"http://localhost:{receiver.port}/hook", description="",
                events=["message.created"], secret="whsec_" + "A" * 32, created_by=None,
            )
        await asyncio.sleep(1.5)  # the subscription reload
        receiver.secret = "whsec_" + "A" * 32
        sa, cid = await direct(api)
        await sa.ok("message:send", {"conversation_id": cid, "content": "to localhost", "client_id": "l1"})
        for _ in range(100):
            async with db.connection() as conn:
                row = await conn.fetchrow("SELECT attempts, last_error FROM webhook_deliveries")
            if row is not None and row["attempts"] >= 1 and row["last_error"]:
                break
            await asyncio.sleep(0.05)
        assert row is not None and "refused target" in row["last_error"], row
        assert receiver.attempts == []
        await api.close_sockets()


async def test_endpoint_disabled_after_the_schedule_runs_out_then_redelivered(
    start_instance: Any, db: Database, receiver: Receiver
) -> None:
    import aiohttp

    short = await start_instance(webhooks=FAST.__class__(**{**FAST.__dict__, "retry_schedule": (0.1, 0.2)}))
    async with aiohttp.ClientSession() as session:
        api = Api(session, short.url)
        admin = await api.staff(db, "admin")
        endpoint = await subscribe(api, admin, receiver, ["message.created"])
        receiver.mode = "fail"
        sa, cid = await direct(api)
        await sa.ok("message:send", {"conversation_id": cid, "content": "never", "client_id": "x1"})
        path = f"/api/webhooks/endpoints/{endpoint['id']}"
        for _ in range(100):
            status, body = await api.request("GET", path, admin)
            if not body["endpoint"]["enabled"]:
                break
            await asyncio.sleep(0.05)
        assert body["endpoint"]["enabled"] is False
        assert "failed 3 times" in body["endpoint"]["disabled_reason"] and "HTTP 500" in body["endpoint"]["disabled_reason"]
        assert len(receiver.attempts) == 3 and len({r.webhook_id for r in receiver.attempts}) == 1
        status, body = await api.request("GET", f"{path}/deliveries", admin)
        (d,) = body["deliveries"]
        assert d["status"] == "failed" and d["attempts"] == 3 and d["last_status_code"] == 500
        # Re-enable and redeliver: the same webhook-id arrives.
        receiver.mode = "ok"
        status, body = await api.request("POST", f"{path}/enable", admin)
        assert status == 200 and body["endpoint"]["enabled"] is True and body["endpoint"]["disabled_reason"] is None
        status, body = await api.request("POST", f"/api/webhooks/deliveries/{d['id']}/redeliver", admin)
        assert status == 200, body
        await receiver.wait_for(lambda: receiver.delivered)
        assert receiver.delivered[0].webhook_id == receiver.attempts[0].webhook_id == d["webhook_id"]
        await api.close_sockets()


async def test_admin_only_and_delete(hapi: Api, admin: User, receiver: Receiver) -> None:
    endpoint = await subscribe(hapi, admin, receiver, ["ticket.created"])
    student = await hapi.register("S")
    status, _ = await hapi.request("GET", "/api/webhooks/endpoints", student)
    assert status == 403
    status, body = await hapi.request("POST", "/api/webhooks/endpoints", admin,
                                      json={"app_id": endpoint["app_id"], "url": receiver.url, "events": ["nope"]})
    assert status == 400
    status, body = await hapi.request("GET", "/api/webhooks/endpoints", admin)
    assert [e["id"] for e in body["endpoints"]] == [endpoint["id"]]
    status, _ = await hapi.request("DELETE", f"/api/webhooks/endpoints/{endpoint['id']}", admin)
    assert status == 204
    status, body = await hapi.request("GET", "/api/webhooks/endpoints", admin)
    assert body["endpoints"] == []


async def test_ticket_live_session_conversation_and_user_events(
    hooked: Instance, hapi: Api, admin: User, receiver: Receiver, db: Database
) -> None:
    from handlers.tickets.queue import check_sla
    from handlers.webhooks import EVENTS
    from storage import tickets as ticket_store
    from tests.ticket_helpers import core_of, escalate, tutor_conversation

    await subscribe(hapi, admin, receiver, list(EVENTS))
    student = await hapi.register("Student W")  # user.created
    await direct(hapi)  # two users, one direct conversation
    cid = await tutor_conversation(db, student)
    ticket = await escalate(hooked, cid, "human_requested")  # ticket.created, tutor.escalated
    a1, a2 = await hapi.staff(db, "agent"), await hapi.staff(db, "agent")
    s1 = await hapi.socket(a1)
    await s1.ok("ticket:claim", {"ticket_id": ticket["id"]})
    await s1.ok("ticket:transfer", {"ticket_id": ticket["id"], "agent_id": a2.id})
    s2 = await hapi.socket(a2)
    await s2.ok("ticket:resolve", {"ticket_id": ticket["id"], "handback": "ai"})
    cid2 = await tutor_conversation(db, student)
    async with db.transaction() as conn:
        await ticket_store.set_sla_hours(conn, "low", 0.00001)
    late = await escalate(hooked, cid2, "human_requested", priority="low")
    await asyncio.sleep(0.1)
    await check_sla(core_of(hooked))  # ticket.sla_breached
    mentor = await hapi.staff(db, "mentor")
    status, body = await hapi.request("POST", "/api/live-sessions", mentor, json={"title": "Hooked", "max_participants": 5})
    assert status in (200, 201), body
    session_id = body["live_session"]["id"]
    for action in ("start", "end"):
        status, body = await hapi.request("POST", f"/api/live-sessions/{session_id}/{action}", mentor)
        assert status == 200, body
    wanted = {"user.created", "conversation.created", "ticket.created", "tutor.escalated", "ticket.claimed",
              "ticket.transferred", "ticket.resolved", "ticket.sla_breached", "live_session.started",
              "live_session.ended"}
    await receiver.wait_for(lambda: wanted <= {r.payload["type"] for r in receiver.delivered})
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in receiver.delivered:
        by_type.setdefault(r.payload["type"], []).append(r.payload["data"])
    assert any(d["user"]["id"] == student.id and d["via"] == "register" for d in by_type["user.created"])
    assert {d["conversation"]["kind"] for d in by_type["conversation.created"]} >= {"direct", "room"}
    assert by_type["ticket.created"][0]["ticket"]["id"] == str(ticket["id"])
    assert by_type["tutor.escalated"][0]["conversation_id"] == cid
    assert by_type["ticket.claimed"][0]["agent_id"] == a1.id
    assert by_type["ticket.transferred"][0]["to_agent_id"] == a2.id
    assert by_type["ticket.resolved"][0]["ticket"]["status"] == "resolved"
    assert [d["ticket"]["id"] for d in by_type["ticket.sla_breached"]] == [str(late["id"])]
    assert by_type["live_session.started"][0]["live_session"]["id"] == session_id
    assert by_type["live_session.ended"][0]["live_session"]["status"] == "ended"


async def test_cli_creates_lists_and_shows_deliveries(hooked: Instance, hapi: Api, admin: User, receiver: Receiver,
                                                      database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`studyhall webhook ...` as a command against the database a running server uses:
    the server hears of the new endpoint (NOTIFY) and delivers to it."""
    import re

    from tests.test_identity_keys import run_cli

    platform = await hs256_platform(hapi, admin)
    code, out, err = await run_cli(database_url, "webhook", "create", "--app", platform.app_id, "--url", receiver.url,
                                   "--events", "message.created")
    assert code == 1 and "127.0.0.1 is a loopback address" in err  # the default refuses private targets
    monkeypatch.setenv("STUDYHALL_WEBHOOK_ALLOW_PRIVATE_TARGETS", "1")
    code, out, err = await run_cli(database_url, "webhook", "create", "--app", platform.app_id, "--url", receiver.url,
                                   "--events", "message.created")
    assert code == 0, err
    receiver.secret = re.search(r"(whsec_\S+)", out).group(1)  # type: ignore[union-attr]
    endpoint_id = re.search(r"created endpoint (\S+)", out).group(1)  # type: ignore[union-attr]
    code, out, _ = await run_cli(database_url, "webhook", "list")
    assert endpoint_id in out and "enabled" in out and "whsec_" not in out
    await asyncio.sleep(0.5)
    sa, cid = await direct(hapi)
    await sa.ok("message:send", {"conversation_id": cid, "content": "via cli", "client_id": "v1"})
    await receiver.wait_for(lambda: receiver.delivered)
    await asyncio.sleep(0.3)
    code, out, _ = await run_cli(database_url, "webhook", "deliveries", endpoint_id)
    assert code == 0 and "message.created  succeeded  attempts=1  code=204" in out
    assert receiver.delivered[0].webhook_id in out
    code, out, err = await run_cli(database_url, "webhook", "create", "--app", platform.app_id, "--url",
                                   receiver.url, "--events", "nope")
    assert code == 1 and "events must be" in err


async def test_a_hanging_receiver_does_not_hold_up_the_others(hapi: Api, admin: User, receiver: Receiver) -> None:
    """One slow endpoint holds one delivery slot, not the loop: the other endpoint gets every
    event while the first one's requests are still waiting (timeout 5 s here)."""
    slow = await Receiver(mode="hang").start()
    try:
        await subscribe(hapi, admin, slow, ["message.created"])
        await subscribe(hapi, admin, receiver, ["message.created"])
        sa, cid = await direct(hapi)
        await sa.ok("message:send", {"conversation_id": cid, "content": "first", "client_id": "f1"})
        await slow.wait_for(lambda: slow.attempts)
        await sa.ok("message:send", {"conversation_id": cid, "content": "second", "client_id": "f2"})
        await receiver.wait_for(lambda: len(receiver.delivered) == 2, timeout=2.5)
    finally:
        await slow.close()


def test_every_webhook_setting_is_read_from_the_environment() -> None:
    from handlers.settings import Settings

    s = Settings.from_env({
        "STUDYHALL_WEBHOOK_ALLOW_PRIVATE_TARGETS": "1", "STUDYHALL_WEBHOOK_RETRY_SCHEDULE": "1, 2.5,60",
        "STUDYHALL_WEBHOOK_TIMEOUT": "3", "STUDYHALL_WEBHOOK_LEASE_SECONDS": "30", "STUDYHALL_WEBHOOK_CONCURRENCY": "4",
        "STUDYHALL_WEBHOOK_POLL_SECONDS": "0.5", "STUDYHALL_WEBHOOK_SUBSCRIPTIONS_REFRESH_SECONDS": "7",
        "STUDYHALL_WEBHOOK_CONNECTIONS_PER_ENDPOINT": "3", "STUDYHALL_WEBHOOK_DNS_CACHE_SECONDS": "0",
        "STUDYHALL_WEBHOOK_SATURATED_RATE": "50", "STUDYHALL_WEBHOOK_SATURATED_BATCH_SIZE": "12.5",
        "STUDYHALL_WEBHOOK_BUSY_POLL_SECONDS": "0.05", "STUDYHALL_WEBHOOK_IDLE_SECONDS": "2",
    }).webhooks
    assert s == WebhookSettings(allow_private_targets=True, retry_schedule=(1.0, 2.5, 60.0), timeout_seconds=3.0,
                                lease_seconds=30.0, concurrency=4, poll_seconds=0.5, subscriptions_refresh_seconds=7.0,
                                connections_per_endpoint=3, dns_cache_seconds=0.0, saturated_rate=50.0,
                                saturated_batch_size=12.5, busy_poll_seconds=0.05, idle_seconds=2.0)
    assert Settings.from_env({}).webhooks == WebhookSettings()
    assert sum(WebhookSettings().retry_schedule) > 24 * 3600  # retries for at least a day by default
    with pytest.raises(SystemExit, match="STUDYHALL_WEBHOOK_RETRY_SCHEDULE"):
        Settings.from_env({"STUDYHALL_WEBHOOK_RETRY_SCHEDULE": "soon"})


def test_refused_addresses() -> None:
    from handlers.webhooks.targets import TargetRefused, check_url, refused_reason

    for address in ("127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "::",
                    "::1", "fe80::1", "fc00::1", "224.0.0.1", "ff02::1", "::ffff:10.0.0.1", "100.64.0.1"):
        assert refused_reason(address) is not None, address
    for address in ("93.184.216.34", "2606:4700:4700::1111", "8.8.8.8"):
        assert refused_reason(address) is None, address
    assert check_url("https://example.com/x", allow_private=False) == ("example.com", None)
    assert check_url("http://127.0.0.1:8/x", allow_private=True) == ("127.0.0.1", "127.0.0.1")
    for bad in ("file:///etc/passwd", "http://user:pw@example.com/", "http:///nohost", "http://127.0.0.1/"):
        with pytest.raises(TargetRefused):
            check_url(bad, allow_private=False)



async def test_createuser_from_the_command_line_emits_user_created(hooked: Instance, hapi: Api, admin: User,
                                                                   receiver: Receiver, database_url: str) -> None:
    """A command's Core loads the subscriptions too (server/cli.py): the running server
    delivers the `user.created` that `studyhall createuser` committed."""
    from tests.test_identity_keys import run_cli

    await subscribe(hapi, admin, receiver, ["user.created"])
    email = f"cli-{uuid.uuid4().hex[:8]}@example.com"
    code, out, err = await run_cli(database_url, "createuser", "--email", email, "--password", "correct horse battery",
                                   "--name", "From CLI", "--role", "mentor")
    assert code == 0, err
    await receiver.wait_for(lambda: any(r.payload["data"]["via"] == "cli" for r in receiver.delivered))
    (data,) = [r.payload["data"] for r in receiver.delivered if r.payload["data"]["via"] == "cli"]
    assert data["user"]["name"] == "From CLI" and data["user"]["role"] == "mentor" and "email" not in data["user"]


async def test_a_platform_api_upsert_that_creates_a_user_emits_user_created(hapi: Api, admin: User,
                                                                              receiver: Receiver) -> None:
    """`PUT /api/platform/users/{sub}` makes the user and queues `user.created` (via
    "platform") in one transaction; later upserts of that user only update it."""
    from tests.identity_platform import api_key

    endpoint = await subscribe(hapi, admin, receiver, ["user.created"])
    backend = await api_key(hapi, admin, endpoint["app_id"], ["users:write"])
    status, made = await backend.call("PUT", "/users/lms-42", json={"name": "Grace", "role": "student"})
    assert status == 201 and made["created"] is True, made
    for name in ("Grace H.", "Grace Hopper"):
        status, updated = await backend.call("PUT", "/users/lms-42", json={"name": name})
        assert status == 200 and updated["created"] is False, updated
    status, _ = await backend.call("PUT", "/users/lms-42", json={"role": "admin"})  # not the app's to grant
    assert status == 403
    await receiver.wait_for(lambda: receiver.delivered)
    await asyncio.sleep(1.0)  # several poll periods: an update would have been delivered by now
    [event] = [r.payload for r in receiver.delivered]
    assert event["type"] == "user.created"
    data = event["data"]
    assert data["via"] == "platform" and data["subject"] == "lms-42" and data["app_id"] == endpoint["app_id"]
    assert data["user"]["id"] == made["user"]["id"] and data["user"]["name"] == "Grace"
    assert data["user"]["role"] == "student" and not receiver.refused
