"""What a PostgreSQL crash costs: log output per failed request, and the time to recover.

Starts a PostgreSQL of its own and one Studyhall instance, sends a message over a socket,
SIGKILLs PostgreSQL, makes N failed requests (half `message:send` on the open socket, half
`GET /api/conversations`), starts PostgreSQL again and retries the send every 10 ms on
the same socket until it succeeds. Prints the answers seen, the log records and lines
written during the outage (aiohttp's access log excluded), and restart → first success.

    .venv/bin/python -m bench.db_outage_bench [--requests 100]

Runs against any checkout (it sets only environment variables every version has), so the same command
measures before and after a change.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import logging
import os
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import socketio
from aiohttp import web

from bench.harness import postmaster_pid
from handlers.settings import Settings
from server.app import create_app
from storage.embedded import EmbeddedPostgres, free_port
from storage.migrate import migrate


def _kill(pg: EmbeddedPostgres) -> None:
    pid = postmaster_pid(pg)
    os.kill(pid, signal.SIGKILL)
    while Path(f"/proc/{pid}").exists():  # gone, not even a zombie, before it may start again
        time.sleep(0.02)


def _restart(base: Path, port: int) -> EmbeddedPostgres:
    while True:
        pg = EmbeddedPostgres(base, port=port, listen_tcp=True, shared_buffers="128MB")
        try:
            pg.start()
            return pg
        except RuntimeError:
            time.sleep(0.1)


async def run(requests: int) -> dict[str, object]:
    base = Path(tempfile.mkdtemp(prefix="studyhall-bench-pgcrash-"))
    os.chmod(base, 0o755)
    port = free_port()
    pg = EmbeddedPostgres(base, port=port, listen_tcp=True, shared_buffers="128MB")
    pg.start()
    conn = await asyncpg.connect(pg.url("postgres"))
    await conn.execute("CREATE DATABASE bench")
    await conn.close()
    await migrate(pg.url("bench"))

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    handler.addFilter(lambda r: r.name != "aiohttp.access")
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)

    port = free_port()
    settings = Settings.from_env({"DATABASE_URL": pg.url("bench"), "STUDYHALL_DATA_DIR": str(base / "unused"),
                                  "STUDYHALL_PORT": str(port), "STUDYHALL_LOG_JSON": "0"})
    runner = web.AppRunner(create_app(settings), handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    result: dict[str, object] = {}
    try:
        async with aiohttp.ClientSession() as http:
            tokens = []
            for name in ("Ana", "Bob"):
                async with http.post(f"{url}/api/auth/register", json={
                    "email": f"{name}-{uuid.uuid4().hex[:6]}@example.com", "password": "correct horse 1", "name": name,
                }) as resp:
                    body = await resp.json()
                    tokens.append((body["token"], body["user"]["id"]))
            sock = socketio.AsyncClient(reconnection=False)
            await sock.connect(url, auth={"token": tokens[0][0]}, transports=["websocket"], wait_timeout=5)
            sid = sock.get_sid()
            created = await sock.call("conversation:create", {"kind": "direct", "member_ids": [tokens[1][1]]})
            conv = created["conversation"]

            def send(client_id: str) -> dict[str, str]:
                return {"conversation_id": conv["id"], "content": client_id, "client_id": client_id}

            await sock.call("message:send", send("c0"))
            headers = {"Authorization": f"Bearer {tokens[0][0]}"}

            await asyncio.to_thread(_kill, pg)
            out.truncate(0)
            out.seek(0)
            answers: collections.Counter[str] = collections.Counter()
            slowest = 0.0
            for i in range(requests):
                started = time.monotonic()
                if i % 2 == 0:
                    ack = await sock.call("message:send", send(f"d{i}"), timeout=120)
                    answers[f"ack {ack.get('error', {}).get('code', 'ok')}"] += 1
                else:
                    async with http.get(f"{url}/api/conversations", headers=headers) as resp:
                        answers[f"http {resp.status}"] += 1
                slowest = max(slowest, time.monotonic() - started)
            text = out.getvalue()
            result["failed_requests"] = requests
            result["answers"] = dict(answers)
            result["slowest_answer_ms"] = round(slowest * 1000)
            levels = ("INFO", "WARNING", "ERROR", "CRITICAL")
            result["log_records"] = sum(1 for line in text.splitlines() if line.split(" ", 1)[0] in levels)
            result["log_lines"] = len(text.splitlines())

            pg = await asyncio.to_thread(_restart, base, port)
            back = time.monotonic()
            attempts = 0
            while True:
                attempts += 1
                ack = await sock.call("message:send", send("c1"), timeout=120)
                if ack.get("ok") or time.monotonic() - back > 60:
                    break
                await asyncio.sleep(0.01)
            result["restart_to_first_send_ms"] = round((time.monotonic() - back) * 1000) if ack.get("ok") else None
            result["send_attempts_after_restart"] = attempts
            result["same_socket"] = sock.connected and sock.get_sid() == sid
            await sock.disconnect()
    finally:
        root.removeHandler(handler)
        await runner.cleanup()
        pg.destroy()
        shutil.rmtree(base, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.requests)), indent=2))


if __name__ == "__main__":
    main()
