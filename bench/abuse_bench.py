"""What one client address can do to each public route, with the default limits.

    .venv/bin/python bench/abuse_bench.py [--limits default|off|both] [--seconds 3]
        [--hash-seconds 45] [--concurrency 8] [--max-requests 20000]

Starts its own embedded PostgreSQL and one `studyhall serve` on loopback, then from this
one process (one address, 127.0.0.1) hammers each public route in turn for `--seconds`
(`--hash-seconds` for register and login: each call hashes a password, a few per second
on a small machine, so a short run would never reach their limits; at most
`--max-requests` calls per route, `--concurrency` in flight), and prints per route:
calls sent, answered per second (the server did the work: 2xx, a login's 401, an event's
own error), refused per second (HTTP 429, or a `rate_limited` ack), and p50 latency.

  POST /api/auth/guest, /register (fresh emails), /login (an existing email, wrong
  password), GET /api/health, Socket.IO connect (+ disconnect) with a guest token, and
  the `history` event for a conversation that does not exist, on one socket.

`--limits off` sets the sign-in limits to 0 (the server as it was before them);
`both` runs the two one after the other on fresh databases. Everything else is at its
default, including the per-socket event limit (unlike the other benches, which lift it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import socketio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import SIGNIN_LIMITS, quantile_ms, start_servers, stop_servers, wait_up  # noqa: E402
from handlers.settings import Settings  # noqa: E402
from storage.embedded import EmbeddedPostgres, free_port  # noqa: E402

DEFAULTS = Settings()
# bench/harness.py lifts every limit for throughput runs: put them back to their defaults.
DEFAULT_ENV = {
    "STUDYHALL_RATE_LIMIT": str(DEFAULTS.gateway.rate_limit_per_second),
    "STUDYHALL_RATE_BURST": str(DEFAULTS.gateway.rate_limit_burst),
    "STUDYHALL_GUEST_LIMIT_10MIN": str(DEFAULTS.auth.guest_limit_10min),
    "STUDYHALL_GUEST_LIMIT_DAY": str(DEFAULTS.auth.guest_limit_day),
    "STUDYHALL_REGISTER_LIMIT_10MIN": str(DEFAULTS.auth.register_limit_10min),
    "STUDYHALL_REGISTER_LIMIT_DAY": str(DEFAULTS.auth.register_limit_day),
    "STUDYHALL_LOGIN_LIMIT_10MIN": str(DEFAULTS.auth.login_limit_10min),
}
assert set(SIGNIN_LIMITS) <= set(DEFAULT_ENV)
LIMITS_OFF_ENV = dict.fromkeys(SIGNIN_LIMITS, "0")

Outcome = str  # "answered" | "refused" | "failed"


@dataclass
class RouteResult:
    route: str
    seconds: float = 0.0
    answered: int = 0
    refused: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return self.answered + self.refused + self.failed


async def hammer(route: str, call: Callable[[], Awaitable[Outcome]], args: argparse.Namespace,
                 seconds: float | None = None) -> RouteResult:
    """Call `call` from `concurrency` workers until the time or the request budget is spent."""
    result = RouteResult(route)
    budget = args.max_requests
    deadline = time.perf_counter() + (seconds or args.seconds)

    async def worker() -> None:
        nonlocal budget
        while budget > 0 and time.perf_counter() < deadline:
            budget -= 1
            started = time.perf_counter()
            try:
                outcome = await call()
            except (aiohttp.ClientError, socketio.exceptions.SocketIOError, TimeoutError):
                outcome = "failed"
            result.latencies.append(time.perf_counter() - started)
            setattr(result, outcome, getattr(result, outcome) + 1)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def http_outcome(status: int, answered: tuple[int, ...]) -> Outcome:
    if status == 429:
        return "refused"
    return "answered" if status in answered else "failed"


async def run(url: str, args: argparse.Namespace) -> list[RouteResult]:
    results = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as http:
        # Made before the hammering, so that the routes' own limits do not stop the set-up.
        victim = {"email": f"victim-{uuid.uuid4().hex[:8]}@example.com", "password": "the-right-password"}
        async with http.post(url + "/api/auth/register", json={**victim, "name": "Victim"}) as r:
            assert r.status == 201, await r.text()
        async with http.post(url + "/api/auth/guest", json={"name": "Prober"}) as r:
            guest_token = (await r.json())["token"]

        async def post(path: str, body: dict[str, object], answered: tuple[int, ...]) -> Outcome:
            async with http.post(url + path, json=body) as resp:
                await resp.read()
                return http_outcome(resp.status, answered)

        async def get(path: str) -> Outcome:
            async with http.get(url + path) as resp:
                await resp.read()
                return http_outcome(resp.status, (200,))

        results.append(await hammer("POST /api/auth/guest", lambda: post("/api/auth/guest", {}, (201,)), args))
        results.append(await hammer("POST /api/auth/register", lambda: post(
            "/api/auth/register", {"email": f"b-{uuid.uuid4().hex}@example.com", "password": "bench-password",
                                   "name": "Bot"}, (201,)), args, args.hash_seconds))
        results.append(await hammer("POST /api/auth/login (wrong password)", lambda: post(
            "/api/auth/login", {"email": victim["email"], "password": "guess"}, (401,)), args, args.hash_seconds))
        results.append(await hammer("GET /api/health", lambda: get("/api/health"), args))

        async def connect() -> Outcome:
            client = socketio.AsyncClient(reconnection=False)
            try:
                await client.connect(url, auth={"token": guest_token}, transports=["websocket"], wait_timeout=5)
            except socketio.exceptions.ConnectionError as exc:
                data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
                return "refused" if data.get("code") == "rate_limited" else "failed"
            await client.disconnect()
            return "answered"

        results.append(await hammer("socket connect (guest token)", connect, args))

        sock = socketio.AsyncClient(reconnection=False)
        await sock.connect(url, auth={"token": guest_token}, transports=["websocket"], wait_timeout=5)
        unknown = str(uuid.uuid4())

        async def history() -> Outcome:
            ack = await sock.call("history", {"conversation_id": unknown}, timeout=10)
            if ack.get("ok") or ack["error"]["code"] in ("not_found", "forbidden"):
                return "answered"
            return "refused" if ack["error"]["code"] == "rate_limited" else "failed"

        results.append(await hammer("socket event history (unknown id)", history, args))
        await sock.disconnect()
    return results


def table(label: str, results: list[RouteResult]) -> str:
    lines = [f"### {label}", "",
             "| route | sent | answered/s | refused (429)/s | failed | p50 ms |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.route} | {r.sent:,} | {r.answered / r.seconds:,.1f} | {r.refused / r.seconds:,.1f} "
                     f"| {r.failed} | {quantile_ms(r.latencies, 50):.1f} |")
    return "\n".join(lines)


async def configuration(label: str, extra_env: dict[str, str], args: argparse.Namespace) -> str:
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="studyhall-abuse-pg-")), port=free_port(), listen_tcp=True)
    os.chmod(pg.data_dir, 0o755)
    database_url = await asyncio.to_thread(pg.start)
    procs = start_servers(1, database_url, None, {**DEFAULT_ENV, **extra_env})
    try:
        url = procs[0][1]
        await wait_up(url)
        print(f"{label}: hammering {url} for {args.seconds:g} s per route", file=sys.stderr, flush=True)
        return table(label, await run(url, args))
    finally:
        stop_servers(procs)
        await asyncio.to_thread(pg.destroy)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limits", choices=["default", "off", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--hash-seconds", type=float, default=45.0,
                        help="for register and login, which hash a password (argon2, slow): "
                             "long enough to pass their limits")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=20_000)
    args = parser.parse_args()
    tables = []
    if args.limits in ("off", "both"):
        tables.append(await configuration("Sign-in limits off (before)", LIMITS_OFF_ENV, args))
    if args.limits in ("default", "both"):
        tables.append(await configuration("Default limits", {}, args))
    print("\n\n".join(tables))


if __name__ == "__main__":
    asyncio.run(main())
