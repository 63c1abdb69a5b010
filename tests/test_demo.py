"""`studyhall demo` as a newcomer runs it: the real command as a subprocess, twice, beside a
running `studyhall serve` on the same embedded PostgreSQL, and against `DATABASE_URL`.

What it proves: the second run creates nothing and prints the same sign-ins; the printed
sign-ins log in over HTTP; the sample documents are searchable; the offline tutor (no
model) answers every example question on static/demo.html from the sample course, with
a citation; the scheduled room is listed; the printed pages answer.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import expect

from handlers.demo import DEMO_COURSE, ROOM_TITLE, WELCOME, sample_documents
from handlers.settings import Settings
from server.cli import page_base_url
from storage.db import Database
from tests.client import Socket
from tests.pagekit import assert_clean, browser, open_page, screenshot, sign_in  # noqa: F401
from tests.test_hardening_lifecycle import ROOT, Serve, public_tempdir, run_command

SIGN_IN = re.compile(r"^\s+(mentor|agent|student)\s+(\S+@\S+)\s+password: (\S+)$", re.MULTILINE)
PAGES = ("demo.html", "threads.html", "rooms.html", "console.html")
MODEL_SETTINGS = ("STUDYHALL_LLM_BASE_URL", "STUDYHALL_LLM_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_KEY")


def demo_page() -> tuple[str, list[str]]:
    """The course the demo page's widget asks about, and the questions the page suggests."""
    html = (ROOT / "static" / "demo.html").read_text()
    course = re.search(r'<script src="/static/widget.js"[^>]*data-course="([^"]+)"', html)
    examples = re.search(r'<ul class="examples">(.*?)</ul>', html, re.DOTALL)
    assert course and examples, "static/demo.html names its course and lists example questions"
    return course.group(1), [q.strip() for q in re.findall(r"<li>(.*?)</li>", examples.group(1), re.DOTALL)]


def sign_ins(output: str) -> dict[str, tuple[str, str]]:
    found = {role: (email, password) for role, email, password in SIGN_IN.findall(output)}
    assert set(found) == {"mentor", "agent", "student"}, output
    return found


def strip_model_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The offline tutor: no model settings reach the subprocesses."""
    for name in MODEL_SETTINGS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    strip_model_settings(monkeypatch)


@dataclass
class Loaded:
    served: Serve
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def loaded() -> Iterator[Loaded]:
    """`studyhall serve` on a fresh data dir, and `studyhall demo` run twice beside it."""
    base = public_tempdir("studyhall-test-demo-")
    with pytest.MonkeyPatch.context() as monkeypatch:
        strip_model_settings(monkeypatch)
        server = Serve(base / "data").start()
        try:
            runs = [run_command(["demo"], server.data_dir, STUDYHALL_PORT=str(server.port)) for _ in range(2)]
            yield Loaded(server, *runs)
        finally:
            server.stop()
            shutil.rmtree(base, ignore_errors=True)


async def login(session: aiohttp.ClientSession, url: str, email: str, password: str) -> dict[str, Any]:
    async with session.post(f"{url}/api/auth/login", json={"email": email, "password": password}) as response:
        body = await response.json()
        assert response.status == 200, body
        return body


async def test_demo_twice_beside_serve_then_everything_it_prints_works(loaded: Loaded) -> None:
    served, first, second = loaded.served, loaded.first, loaded.second
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    documents = sample_documents()
    # 3 accounts, the documents, the room, the welcome message
    assert f"Loaded: {3 + len(documents) + 2} new item(s)" in first.stdout, first.stdout
    assert "Nothing new: the demo was already loaded." in second.stdout, second.stdout
    # The same output apart from its last line: sign-ins, room, pages.
    assert first.stdout.splitlines()[:-1] == second.stdout.splitlines()[:-1]
    accounts = sign_ins(first.stdout)
    assert all(email.endswith("@demo.studyhall.example") for email, _ in accounts.values())
    assert "demo accounts" in first.stdout.lower()

    course, questions = demo_page()
    assert course == DEMO_COURSE and len(questions) >= 3
    titles = {doc.title for doc in documents}
    async with aiohttp.ClientSession() as session:
        # The printed pages answer on the running server.
        for page in PAGES:
            assert f"{served.url}/static/{page}" in first.stdout
            async with session.get(f"{served.url}/static/{page}") as response:
                assert response.status == 200, page

        # Every printed sign-in works, with the role it is printed for.
        tokens = {}
        for role, (email, password) in accounts.items():
            body = await login(session, served.url, email, password)
            assert body["user"]["role"] == role
            tokens[role] = {"Authorization": f"Bearer {body['token']}"}

        # Nothing was made twice: one copy of each document, one demo room.
        async with session.get(
            f"{served.url}/api/documents", params={"course": course, "limit": "100"}, headers=tokens["mentor"]
        ) as response:
            stored = (await response.json())["documents"]
        assert sorted(d["title"] for d in stored) == sorted(titles)
        async with session.get(
            f"{served.url}/api/live-sessions", params={"status": "scheduled"}, headers=tokens["student"]
        ) as response:
            rooms = [r for r in (await response.json())["live_sessions"] if r["title"] == ROOM_TITLE]
        assert len(rooms) == 1 and rooms[0]["host"]["name"] == "Demo Mentor" and rooms[0]["is_featured"]
        assert ROOM_TITLE in first.stdout

        # The student's threads page opens on the mentor's welcome, once.
        async with session.get(f"{served.url}/api/conversations", headers=tokens["student"]) as response:
            convs = (await response.json())["conversations"]
        assert [(c["kind"], c["last_seq"], sorted(m["name"] for m in c["members"])) for c in convs] == [
            ("direct", 1, ["Demo Mentor", "Demo Student"])
        ]
        async with session.get(
            f"{served.url}/api/conversations/{convs[0]['id']}/messages", headers=tokens["student"]
        ) as response:
            history = (await response.json())["messages"]
        assert [(m["seq"], m["content"]) for m in history] == [(1, WELCOME)]

        # Searchable.
        async with session.get(
            f"{served.url}/api/search", params={"q": "chlorophyll", "course": course}, headers=tokens["student"]
        ) as response:
            results = (await response.json())["results"]
        assert results and results[0]["title"] == "Chloroplasts and chlorophyll"

    # The offline tutor answers each of the page's example questions from the sample course.
    sock = await Socket(served.url, tokens["student"]["Authorization"].split()[1]).connect()
    try:
        for question in questions:
            conv = (await sock.ok("tutor:start", {"course": course}))["conversation"]
            send = {"conversation_id": conv["id"], "content": question, "client_id": uuid.uuid4().hex}
            sent = (await sock.ok("message:send", send))["message"]
            reply = (await sock.wait_for(
                "message:new", lambda d, m=sent: d["message"]["metadata"].get("reply_to") == m["id"], timeout=15,
            ))["message"]
            meta = reply["metadata"]
            assert meta["model"] == "offline-extractive" and meta["decision"]["action"] == "answer", (question, reply)
            cited = [c["title"] for c in meta["citations"]]
            assert cited and set(cited) <= titles, (question, cited)
            assert f"[1] {cited[0]}" in reply["content"] and "> " in reply["content"], reply["content"]
    finally:
        await sock.disconnect()


async def test_newcomer_in_the_browser_asks_the_page_example_and_reads_the_welcome(browser, loaded: Loaded) -> None:  # noqa: F811
    """What the printed pages show: the demo page's tutor (a guest, no model) answers its
    first example question from the sample course with a citation; the student's threads
    page opens on the mentor's welcome."""
    served = loaded.served
    _, questions = demo_page()
    page = await open_page(browser, f"{served.url}/static/demo.html")
    w = page.locator("#studyhall-widget")
    await w.get_by_role("button", name="Ask the tutor").click()
    await expect(w.get_by_role("dialog", name="Photosynthesis tutor")).to_be_visible()
    box = page.get_by_label("Your question")
    await expect(box).to_be_enabled()
    await box.fill(questions[0])
    await box.press("Enter")
    answer = w.locator("li.msg-assistant[data-seq]")
    await expect(answer.locator(".msg-body")).to_contain_text("chloroplasts")
    await expect(answer.locator(".citations li").first).to_have_text("Photosynthesis: an overview")
    await screenshot(page, "demo-page-offline-answer")
    assert_clean(page)

    email, password = sign_ins(loaded.first.stdout)["student"]
    threads = await open_page(browser, f"{served.url}/static/threads.html")
    await sign_in(threads, email, password)
    await threads.locator("#conversations button.item", has_text="Demo Mentor").click()
    await expect(threads.locator("#messages > li[data-seq] .msg-body")).to_have_text([WELCOME])
    assert_clean(threads)


async def _counts(db: Database) -> dict[str, int]:
    tables = ("users", "documents", "chunks", "live_sessions", "conversations", "messages")
    async with db.connection() as conn:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in tables}


@pytest.mark.slow
async def test_demo_with_database_url_creates_nothing_the_second_time_even_at_once(
    no_model: None, database_url: str, db: Database, start_instance: Any, tmp_path: Path
) -> None:
    # Two runs at the same moment (two terminals, a script run twice): one waits for the other.
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: run_command(["demo"], tmp_path / "unused", DATABASE_URL=database_url), [1, 2]))
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    first = runs[0]
    assert sign_ins(runs[1].stdout) == sign_ins(first.stdout)
    after_first = await _counts(db)
    assert after_first["users"] == 3 and after_first["documents"] == len(sample_documents())
    assert after_first["live_sessions"] == 1 and after_first["conversations"] == 2 and after_first["messages"] == 1
    assert not (tmp_path / "unused").exists(), "no embedded PostgreSQL with DATABASE_URL"

    second = run_command(["demo"], tmp_path / "unused", DATABASE_URL=database_url)
    assert second.returncode == 0, second.stderr
    assert await _counts(db) == after_first
    assert sign_ins(second.stdout) == sign_ins(first.stdout)

    server = await start_instance()
    async with aiohttp.ClientSession() as session:
        for role, (email, password) in sign_ins(second.stdout).items():
            assert (await login(session, server.url, email, password))["user"]["role"] == role


def test_printed_pages_use_an_address_a_browser_on_this_machine_can_open() -> None:
    assert page_base_url(Settings().with_(http__host="0.0.0.0", http__port=9000)) == "http://127.0.0.1:9000"
    assert page_base_url(Settings().with_(http__host="::", http__port=9000)) == "http://127.0.0.1:9000"
    assert page_base_url(Settings().with_(http__host="10.0.0.5", http__port=80)) == "http://10.0.0.5:80"
    assert page_base_url(Settings().with_(http__host="::1", http__port=8080)) == "http://[::1]:8080"
