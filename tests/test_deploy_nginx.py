"""Studyhall behind nginx, as deploy/nginx ships it: two `studyhall serve` processes
(PostgreSQL and Redis as the other cluster tests), TLS ended by nginx, the official
socket.io-client over websocket and over long-polling, the widget in Chromium, and a
drain (SIGTERM to one instance while clients send) that loses and repeats nothing.

The stack is started once for the module; the drain test stops an instance, so it is last.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from storage.db import Database
from storage.embedded import free_port
from tests.client import Api, User
from tests.deploy_stack import Nginx
from tests.pagekit import CHROMIUM_ARGS, browser  # noqa: F401
from tests.services import DatabasePool, Postgres, RedisServer
from tests.test_deploy_files import INSTALL_PREFIX, docker_cmd, docker_healthcheck, docker_install
from tests.test_hardening_lifecycle import Serve, command_env, health, public_tempdir, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).parent / "js" / "deploy_clients.mjs"
SHUTDOWN_BOUND_SECONDS = 5.0  # STUDYHALL_SHUTDOWN_SECONDS is 3 here


@dataclass
class ImageServe(Serve):
    """An instance installed by the Dockerfile's install step and started with its CMD."""

    argv: list[str] = field(default_factory=list)

    def start(self, wait: bool = False) -> ImageServe:
        self.process = subprocess.Popen(
            self.argv, env=command_env(self.data_dir, self.port, **self.env_extra),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=self.data_dir.parent,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self


def install_as_the_image_does(prefix: Path) -> dict[str, str]:
    """Run the Dockerfile's build step (deploy/install.sh) into `prefix`; returns the
    environment to run what it installed with. The image's install also fetches the
    dependencies; here they are the test environment's, handed over on PYTHONPATH
    (PIP_NO_DEPS), so the step takes seconds and needs no index."""
    site = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": site}
    script = docker_install()[1]  # ["sh", "deploy/install.sh", PREFIX, SRC]
    install = {**env, "PYTHON": sys.executable, "PIP_NO_DEPS": "1", "PIP_NO_BUILD_ISOLATION": "1"}
    done = subprocess.run(["sh", str(ROOT / script), str(prefix), str(ROOT)], env=install,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    where = subprocess.run([str(prefix / "bin" / "python"), "-c", "import server; print(server.__file__)"],
                           env=env, capture_output=True, text=True, cwd=prefix)
    assert where.stdout.startswith(str(prefix)), f"the installed copy is not the one run: {where.stdout}{where.stderr}"
    return {"PYTHONPATH": site}


@dataclass
class Stack:
    nginx: Nginx
    one: Serve
    two: Serve
    database_url: str
    prefix: Path
    installed: Path

    def addresses(self, port: int, count: int, taken: set[str]) -> list[str]:
        """`count` client addresses that nginx's hash sends to the instance on `port`."""
        found: list[str] = []
        for n in range(1, 250):
            address = f"198.51.100.{n}"
            if address in taken:
                continue
            if self.nginx.instance_for(address) == port:
                found.append(address)
                taken.add(address)
                if len(found) == count:
                    return found
        raise AssertionError(f"no {count} addresses hash to port {port}")


def serve_env(database_url: str, redis_url: str, channel: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url, "REDIS_URL": redis_url, "STUDYHALL_REDIS_CHANNEL": channel,
        "STUDYHALL_HOST": "127.0.0.1",
        # nginx connects from loopback: believe its X-Forwarded-For (what the docs tell operators).
        "STUDYHALL_TRUSTED_PROXIES": "127.0.0.1",
        "STUDYHALL_SHUTDOWN_SECONDS": "3", "STUDYHALL_PRESENCE_GRACE": "0.3",
        "STUDYHALL_RATE_LIMIT": "1000", "STUDYHALL_RATE_BURST": "1000",
        "STUDYHALL_USER_RATE_LIMIT": "1000", "STUDYHALL_USER_RATE_BURST": "1000",
        "STUDYHALL_REGISTER_LIMIT_10MIN": "100000", "STUDYHALL_REGISTER_LIMIT_DAY": "100000",
        "STUDYHALL_GUEST_LIMIT_10MIN": "100000", "STUDYHALL_GUEST_LIMIT_DAY": "100000",
        "STUDYHALL_LOGIN_LIMIT_10MIN": "100000",
    }


@pytest.fixture(scope="module")
def stack(postgres: Postgres, database_pool: DatabasePool, redis_server: RedisServer | None) -> Iterator[Stack]:
    name = asyncio.run(database_pool.take())
    redis_url = os.environ.get("TEST_REDIS_URL") or redis_server.url  # type: ignore[union-attr]
    base = public_tempdir("studyhall-test-deploy-")
    env = serve_env(postgres.url(name), redis_url, f"deploy-{uuid.uuid4().hex[:8]}")
    two = Serve(base / "unused-two", env_extra=env).start(wait=False)
    one: Serve | None = None
    nginx: Nginx | None = None
    try:
        # Instance one as the image runs it: installed by its build step, started by its CMD.
        installed = base / INSTALL_PREFIX.strip("/").replace("/", "-")
        cmd = docker_cmd()
        one = ImageServe(base / "unused-one", env_extra={**env, **install_as_the_image_does(installed)},
                         argv=[str(installed / "bin" / cmd[0]), *cmd[1:]]).start()
        nginx = Nginx(Path(tempfile.mkdtemp(prefix="studyhall-test-nginx-")), [one.port, two.port])
        _wait_started(one)
        _wait_started(two)
        nginx.start()
        yield Stack(nginx, one, two, postgres.url(name), base, installed)
    finally:
        if nginx is not None:
            nginx.stop()
            shutil.rmtree(nginx.prefix, ignore_errors=True)
        for serve in (one, two):
            if serve is not None and serve.process and serve.process.poll() is None:
                serve.process.kill()
                serve.process.wait()
        shutil.rmtree(base, ignore_errors=True)
        asyncio.run(database_pool.give_back(name))


def _wait_started(serve: Serve) -> None:
    assert serve.process is not None
    wait_until(lambda: serve.announced or serve.process.poll() is not None, 90, "Studyhall on")  # type: ignore[union-attr]
    assert serve.process.poll() is None, serve.log
    wait_until(lambda: health(serve.url) == 200, 60, "/api/health to answer 200")


async def _group(stack: Stack, names: list[str]) -> tuple[list[User], str]:
    """Users registered on instance two directly, in one group conversation."""
    async with aiohttp.ClientSession() as http:
        api = Api(http, stack.two.url)
        users = [await api.register(n) for n in names]
        sock = await api.socket(users[0])
        conv = (await sock.ok("conversation:create", {"kind": "group", "member_ids": [u.id for u in users[1:]]}))["conversation"]
        await api.close_sockets()
    return users, conv["id"]


async def _run_clients(config: dict[str, Any], on_acked: Any = None) -> dict[str, Any]:
    node = shutil.which("node")
    assert node, "Node.js is required (the README's test command installs the npm packages)"
    proc = await asyncio.create_subprocess_exec(
        node, str(SCRIPT), json.dumps(config), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        limit=2**24,  # the last line holds every client's view
    )
    assert proc.stdout is not None and proc.stderr is not None
    done: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(90):
            async for raw in proc.stdout:
                line = json.loads(raw)
                if line["type"] == "acked" and on_acked is not None:
                    await on_acked(line["total"])
                elif line["type"] == "done":
                    done = line
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
    err = (await proc.stderr.read()).decode()
    assert proc.returncode == 0 and done is not None, err[-3000:]
    return done


async def _truth(stack: Stack, cid: str) -> list[tuple[int, str, str]]:
    """(seq, id, client_id) of every message the database holds in the conversation."""
    db = await Database.connect(stack.database_url, min_size=1, max_size=1)
    try:
        async with db.connection() as conn:
            rows = await conn.fetch(
                "SELECT seq, id, client_id FROM messages WHERE conversation_id = $1 ORDER BY seq", uuid.UUID(cid))
    finally:
        await db.close()
    return [(r["seq"], str(r["id"]), r["client_id"]) for r in rows]


def _check_exactly_once(result: dict[str, Any], truth: list[tuple[int, str, str]], expected_ids: set[str]) -> None:
    """The database holds each client_id once with seqs 1..N; every ack names a stored
    message; every client saw exactly the database's messages, none delivered twice."""
    by_seq = {seq: mid for seq, mid, _ in truth}
    assert sorted(by_seq) == list(range(1, len(truth) + 1)), "the database has gaps in seq"
    client_ids = [c for _, _, c in truth]
    assert len(client_ids) == len(set(client_ids)), "a retried message was stored twice"
    assert set(client_ids) == expected_ids, "a message was lost"
    for p in result["participants"]:
        for ack in p["acked"]:
            assert by_seq.get(ack["seq"]) == ack["id"], f"{p['name']}: acked {ack} is not what is stored"
        view = {int(seq): mid for seq, mid in p["view"].items()}
        assert view == by_seq, f"{p['name']} differs from the database"
        assert not p["duplicates"], f"{p['name']} got seqs twice: {p['duplicates'][:5]}"


def _socket_io_hits(stack: Stack, address: str, since: float = 0.0) -> list[Any]:
    return [h for h in stack.nginx.hits() if h.client == address and "/socket.io/" in h.request and h.at >= since]


async def test_socket_io_clients_over_websocket_and_polling_through_nginx(stack: Stack) -> None:
    """The official client, over each transport, on each instance, through nginx's TLS:
    every message reaches every member across instances, once and in order. Each polling
    client's requests all reach one instance (the sticky hash); both instances serve."""
    taken: set[str] = set()
    a_one, b_one = stack.addresses(stack.one.port, 2, taken)
    a_two, b_two = stack.addresses(stack.two.port, 2, taken)
    plan = [("ws1", a_one, ["websocket"]), ("poll1", b_one, ["polling"]),
            ("ws2", a_two, ["websocket"]), ("poll2", b_two, ["polling"])]
    users, cid = await _group(stack, [name for name, _, _ in plan])
    config = {"url": stack.nginx.url, "cid": cid, "count": 5, "pauseMs": 0, "participants": [
        {"name": name, "token": u.token, "xff": xff, "transports": transports}
        for (name, xff, transports), u in zip(plan, users)]}
    result = await _run_clients(config)

    expected = {f"{name}-{n}" for name, _, _ in plan for n in range(5)}
    _check_exactly_once(result, await _truth(stack, cid), expected)
    by_name = {p["name"]: p for p in result["participants"]}
    for name, _, transports in plan:
        assert by_name[name]["transport"] == transports[0]
        assert by_name[name]["connects"] == 1, f"{name} had to reconnect"
    for address, port in ((b_one, stack.one.port), (b_two, stack.two.port)):
        hits = _socket_io_hits(stack, address)
        assert len(hits) > 5, "the polling client made its requests through nginx"
        assert {h.upstream for h in hits} == {f"127.0.0.1:{port}"}, "polling requests went to two instances"
        # 499: the poll still held open when the script closed its socket at the end.
        assert all(h.status in (200, 499) for h in hits), [h for h in hits if h.status not in (200, 499)]


async def _polling_session(url: str, token: str, address: str, posts: int) -> list[int]:
    """A raw Engine.IO long-polling session: the handshake, then the Socket.IO connect and
    `sync` calls, each a POST naming the session (the statuses; answers are not read)."""
    base = f"{url}/socket.io/?EIO=4&transport=polling"
    statuses: list[int] = []
    connector = aiohttp.TCPConnector(ssl=False)
    async with aiohttp.ClientSession(headers={"X-Forwarded-For": address}, connector=connector) as http:
        async with http.get(base) as r:
            assert r.status == 200
            sid = json.loads((await r.text())[1:])["sid"]
        packets = ["40" + json.dumps({"token": token})] + [f'42{n}["sync",{{"since":{{}}}}]' for n in range(posts - 1)]
        for packet in packets:
            async with http.post(f"{base}&sid={sid}", data=packet) as r:
                statuses.append(r.status)
                await r.read()
    return statuses


async def test_long_polling_needs_the_sticky_hash(stack: Stack) -> None:
    """The same long-polling session through the shipped configuration works; through it
    with the `hash` line removed (round robin), the second request already reaches the
    instance that never heard of the session."""
    users, _ = await _group(stack, ["sticky-a", "sticky-b"])
    sticky = await _polling_session(stack.nginx.url, users[0].token, "198.51.100.250", 6)
    assert sticky == [200] * 6

    loose = Nginx(Path(tempfile.mkdtemp(prefix="studyhall-test-nginx-rr-")), [stack.one.port, stack.two.port], sticky=False)
    loose.start()
    try:
        statuses = await _polling_session(loose.url, users[0].token, "198.51.100.250", 6)
    finally:
        loose.stop()
        shutil.rmtree(loose.prefix, ignore_errors=True)
    assert 400 in statuses, f"without the hash, polling still worked: {statuses}"


async def test_tls_client_addresses_and_cached_widget(stack: Stack) -> None:
    """Port 80 sends to https; Studyhall sees the client's address (loopback-only /metrics
    is closed to a public client through nginx, open from loopback directly); the widget
    is cached by nginx, carries HSTS and a short browser lifetime, and a copy cached
    for a same-site visitor does not lose CORS for a cross-origin embed."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as http:
        async with http.get(f"http://127.0.0.1:{stack.nginx.http_port}/static/demo.html", allow_redirects=False) as r:
            assert r.status == 301
            assert r.headers["Location"].startswith("https://") and r.headers["Location"].endswith("/static/demo.html")

        public = {"X-Forwarded-For": "203.0.113.9"}
        async with http.get(f"{stack.nginx.url}/metrics", headers=public) as r:
            assert r.status == 404, "a public client read /metrics through nginx"
        async with http.get(f"{stack.one.url}/metrics") as r:
            assert r.status == 200

        path = f"/static/widget.js?v={uuid.uuid4().hex[:6]}"
        statuses = []
        for _ in range(2):
            async with http.get(stack.nginx.url + path, headers=public) as r:
                assert r.status == 200 and "javascript" in r.headers["Content-Type"]
                body = await r.read()
                statuses.append(r.headers["X-Cache-Status"])
                assert r.headers["Cache-Control"] == "max-age=300"
                assert r.headers["Strict-Transport-Security"].startswith("max-age=")
                assert "Access-Control-Allow-Origin" not in r.headers
        assert statuses == ["MISS", "HIT"]
        async with http.get(stack.nginx.url + path, headers={**public, "Origin": "https://lms.example.edu"}) as r:
            assert r.status == 200 and await r.read() == body
            assert r.headers["Access-Control-Allow-Origin"] == "*"
        async with http.get(f"{stack.nginx.url}/api/health", headers=public) as r:
            assert r.status == 200 and (await r.json())["redis"] == "ok"
            assert r.headers["Strict-Transport-Security"].startswith("max-age=")


@pytest.mark.browser
async def test_widget_in_chromium_through_nginx_talks_across_instances(stack: Stack, browser: Browser) -> None:  # noqa: F811
    """A guest's widget (polling, then upgraded to a websocket through nginx) on one
    instance asks for a person; an agent on the other instance claims the ticket and
    replies; each hears the other."""
    address = stack.addresses(stack.one.port, 1, {"198.51.100.250"})[0]
    async with aiohttp.ClientSession() as http:
        api = Api(http, stack.two.url)
        db = await Database.connect(stack.database_url, min_size=1, max_size=1)
        try:
            agent = await api.staff(db, "agent", "Alex")
        finally:
            await db.close()
        agent_sock = await api.socket(agent)
        context = await browser.new_context(ignore_https_errors=True, extra_http_headers={"X-Forwarded-For": address})
        page = await context.new_page()
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(stack.nginx.url + "/static/demo.html")
        w = page.locator("#studyhall-widget")
        await w.get_by_role("button", name="Ask the tutor").click()
        await expect(page.get_by_label("Your question")).to_be_enabled()
        await w.get_by_role("button", name="Talk to a person").click()
        ticket = await agent_sock.wait_for("ticket:new", timeout=15)
        tid = ticket["ticket"]["id"]
        cid = ticket["ticket"]["conversation_id"]
        await agent_sock.ok("ticket:claim", {"ticket_id": tid})
        await agent_sock.ok("message:send", {"conversation_id": cid, "content": "Hi, Alex here.", "client_id": "a1"})
        await expect(w.locator("li.msg-agent .msg-body")).to_have_text("Hi, Alex here.")
        box = page.get_by_label("Your question")
        await box.fill("Thanks, Alex!")
        await box.press("Enter")
        got = await agent_sock.wait_for("message:new", lambda d: d["message"]["content"] == "Thanks, Alex!", timeout=15)
        assert got["message"]["conversation_id"] == cid
        await context.close()
        await api.close_sockets()
    assert not errors, errors
    hits = _socket_io_hits(stack, address)
    assert {h.upstream for h in hits} == {f"127.0.0.1:{stack.one.port}"}, "the widget's requests left its instance"
    assert any("transport=websocket" in h.request and h.status == 101 for h in hits), "the widget never upgraded"


def test_the_images_healthcheck_passes_on_a_serving_instance_only(stack: Stack) -> None:
    """The Dockerfile's HEALTHCHECK command, run as the image would (its python, its
    STUDYHALL_PORT): 0 against a serving instance, not 0 where nothing listens."""
    command = docker_healthcheck()
    assert command[0] == "python"
    argv = [str(stack.installed / "bin" / "python"), *command[1:]]
    env = {**os.environ, "STUDYHALL_PORT": str(stack.one.port)}
    assert subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode == 0
    env["STUDYHALL_PORT"] = str(free_port())
    assert subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode != 0


async def test_drain_behind_nginx_loses_and_repeats_nothing(stack: Stack) -> None:
    """SIGTERM to instance one while six clients (websocket and polling, on both
    instances) send: it exits within the bound; its clients reconnect through nginx to
    instance two and send again what was not acked; the database holds every message
    once, and every client saw exactly the database's messages, once each."""
    taken = {"198.51.100.250"}
    on_one = stack.addresses(stack.one.port, 3, taken)
    on_two = stack.addresses(stack.two.port, 3, taken)
    plan = [("d-ws1", on_one[0], ["websocket"]), ("d-poll1", on_one[1], ["polling"]),
            ("d-up1", on_one[2], ["polling", "websocket"]),
            ("d-ws2", on_two[0], ["websocket"]), ("d-poll2", on_two[1], ["polling"]),
            ("d-up2", on_two[2], ["polling", "websocket"])]
    # Enough sends that the drained clients still have many left after the instance exits
    # (group commit made 25 finish within half a second of a quick drain).
    count = 40
    users, cid = await _group(stack, [name for name, _, _ in plan])
    config = {"url": stack.nginx.url, "cid": cid, "count": count, "pauseMs": 30, "participants": [
        {"name": name, "token": u.token, "xff": xff, "transports": transports}
        for (name, xff, transports), u in zip(plan, users)]}
    stopped: dict[str, Any] = {}

    def stop_and_time() -> tuple[int, float, float]:
        code, seconds = stack.one.stop(signal.SIGTERM, 30)
        return code, seconds, time.time()  # when instance one's process had exited

    async def drain_one_third_in(total: int) -> None:
        if total >= len(plan) * count // 3 and "task" not in stopped:
            stopped["task"] = asyncio.create_task(asyncio.to_thread(stop_and_time))

    result = await _run_clients(config, drain_one_third_in)
    assert "task" in stopped, "the clients finished before the drain began"
    code, seconds, exited_at = await stopped["task"]

    reconnects = {p["name"]: p["connects"] - 1 for p in result["participants"]}
    resent = sum(p["resent"] for p in result["participants"])
    # The figures, in CI's log (-rP): how long the drain took, who moved, how many sends went again.
    print(f"drain: SIGTERM to exit {seconds:.2f} s; reconnects {reconnects}; sends resent {resent}")
    assert code == 0, stack.one.log
    assert seconds < SHUTDOWN_BOUND_SECONDS, f"shutdown took {seconds:.1f} s\n{stack.one.log}"
    assert "shutdown: closing" in stack.one.log and "shutdown: done in" in stack.one.log, stack.one.log
    expected = {f"{name}-{n}" for name, _, _ in plan for n in range(count)}
    _check_exactly_once(result, await _truth(stack, cid), expected)
    by_name = {p["name"]: p for p in result["participants"]}
    for name, _, _ in plan[:3]:
        assert by_name[name]["connects"] >= 2, f"{name} (on the drained instance) did not reconnect"
    for name, _, _ in plan[3:]:
        assert by_name[name]["connects"] == 1, f"{name} (on the other instance) was disconnected"
    # After the drain, the drained instance's clients are served by instance two: every
    # request nginx finished after instance one's process exited (none can be its own).
    for _, address, _ in plan[:3]:
        later = [h for h in _socket_io_hits(stack, address) if h.at > exited_at + 0.05]
        assert later, f"{address}: no requests after the drain"
        assert all(h.upstream.endswith(f":{stack.two.port}") for h in later if h.status in (101, 200)), later
