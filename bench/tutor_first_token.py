"""The tutor's own time before the first streamed token, excluding the model.

    .venv/bin/python bench/tutor_first_token.py [--docs DIR] [--pages 300] [--questions 200]

Starts an embedded PostgreSQL, the fake OpenAI-compatible model (tests/fakellm.py, which
answers instantly), and one Studyhall instance in this process; ingests `--pages` pages of
PostgreSQL's manual; then a student asks `--questions` questions over Socket.IO, one at a
time (a new tutor conversation every 5, so history stays realistic).

Each answer's metadata carries the server-side timings, measured from the after-commit
hook (right after the student's message is committed and fanned out):
  prepare_ms            until the model request starts: load conversation, history and the
                        last decision, retrieval (embed + hybrid search), decide, prompt
                        building within the token budget, stream row;
  model_first_token_ms  from the request to the first token: the fake model, plus the
                        openai client and HTTP on localhost: "the model";
  first_delta_ms        until the first `message:delta` was emitted.
The tutor's own time is first_delta_ms - model_first_token_ms. The client-side column is
send → first delta received, which includes the model part and Socket.IO.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.retrieval_bench import DOCS, percentile  # noqa: E402
from handlers.settings import Settings  # noqa: E402
from rag.extract import extract_file  # noqa: E402
from rag.ingest import ingest_paths  # noqa: E402
from server.app import create_app  # noqa: E402
from server.keys import CORE  # noqa: E402
from storage.embedded import free_port  # noqa: E402
from tests.fakellm import FakeLLM  # noqa: E402
from tests.services import Postgres  # noqa: E402

_PURPOSE = re.compile(r"^[A-Z][A-Za-z_ ]+? — (?P<purpose>[a-z].+?)\s*$", re.MULTILINE)


def questions_from(files: list[Path]) -> list[str]:
    out = []
    for path in files:
        if path.name.startswith("sql-") and (m := _PURPOSE.search(extract_file(path).text[:2000])):
            out.append(f"How do I {m['purpose'].rstrip('.')}?")
    return out or ["How do I define a new table?"]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=Path, default=DOCS)
    parser.add_argument("--pages", type=int, default=300)
    parser.add_argument("--questions", type=int, default=200)
    args = parser.parse_args()
    files = sorted(args.docs.glob("sql-*.html"))[: args.pages // 2] + sorted(args.docs.glob("[!s]*.html"))[: args.pages // 2]
    asked = questions_from(files)

    pg = await asyncio.to_thread(Postgres.start)
    try:
        async with FakeLLM(reply="Use the command described in the passage [1].") as llm:
            port = free_port()
            settings = Settings().with_(database__url=pg.url(await pg.create_database()), http__port=port,
                                tutor__llm_base_url=llm.base_url, tutor__llm_api_key="bench", log__json=False,
                                gateway__rate_limit_per_second=1000, gateway__rate_limit_burst=1000,
                                gateway__user_rate_limit_per_second=1000, gateway__user_rate_limit_burst=1000)
            app = create_app(settings)
            runner = web.AppRunner(app, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            try:
                report = await ingest_paths(app[CORE].kb, files, show_progress=False)
                print(f"corpus: {report.added} pages, {report.chunks} chunks; {len(asked)} distinct questions")
                await run(f"http://127.0.0.1:{port}", asked, args.questions)
            finally:
                await runner.cleanup()
    finally:
        await asyncio.to_thread(pg.stop)


async def run(url: str, asked: list[str], count: int) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/api/auth/register", json={
            "email": f"bench-{uuid.uuid4().hex[:8]}@example.com", "password": "correct horse 1", "name": "Bench"}) as r:
            token = (await r.json())["token"]
    sio = socketio.AsyncClient(reconnection=False)
    first_delta: dict[str, float] = {}
    finals: dict[str, asyncio.Future[dict[str, Any]]] = {}

    @sio.on("message:delta")
    async def on_delta(data: dict[str, Any]) -> None:
        first_delta.setdefault(data["conversation_id"], time.perf_counter())

    @sio.on("message:new")
    async def on_new(data: dict[str, Any]) -> None:
        reply_to = data["message"]["metadata"].get("reply_to")
        if reply_to in finals and not finals[reply_to].done():
            finals[reply_to].set_result(data["message"])

    await sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    rows: list[dict[str, float]] = []
    conv: dict[str, Any] = {}
    warmup = 5
    for i in range(count + warmup):
        if i % 5 == 0:
            conv = (await sio.call("tutor:start", {"title": "bench"}))["conversation"]
        first_delta.pop(conv["id"], None)
        sent = time.perf_counter()
        ack = await sio.call("message:send", {"conversation_id": conv["id"], "content": asked[i % len(asked)], "client_id": uuid.uuid4().hex})
        fut = finals[ack["message"]["id"]] = asyncio.get_running_loop().create_future()
        message = await asyncio.wait_for(fut, 10)
        t = message["metadata"].get("timings") or {}
        if i >= warmup and t.get("first_delta_ms") is not None:
            rows.append({
                "own": t["first_delta_ms"] - t["model_first_token_ms"], "prepare": t["prepare_ms"],
                "model": t["model_first_token_ms"], "client": (first_delta[conv["id"]] - sent) * 1000,
            })
    await sio.disconnect()
    print(f"{len(rows)} answers (after {warmup} warm-up), ms:")
    for key, label in (("own", "tutor's own time to first delta (excl. model)"), ("prepare", "  of which before the model request"),
                       ("model", "model to first token (fake model + HTTP)"), ("client", "client: send -> first delta")):
        values = [r[key] for r in rows]
        print(f"  {label:<48} p50 {percentile(values, 50):6.1f}  p95 {percentile(values, 95):6.1f}  max {max(values):6.1f}")


if __name__ == "__main__":
    asyncio.run(main())
