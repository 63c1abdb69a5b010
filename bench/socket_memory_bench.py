"""Memory per idle Socket.IO connection: RSS growth of one server process per open socket.

    .venv/bin/python bench/socket_memory_bench.py [--sockets 10000] [--workers 4] [--settle 25]
        [--servers studyhall,studyhall-deflate,node]

For each server: `studyhall serve` with default settings, the same with
STUDYHALL_WS_DEFLATE=1, and Node's socket.io 4.8 relay (bench/node_relay.mjs, its defaults).
Clients are the raw websocket clients of bench/rooms_client.py (`raw-deflate`: they offer
permessage-deflate as browsers do, and compress and inflate every frame when the server
agrees), in `--workers` processes; Studyhall's are authenticated guests, 100 sockets per
guest (STUDYHALL_MAX_SOCKETS_PER_USER=0 lifts the per-user cap).

PostgreSQL runs without fsync here (memory does not depend on the disk; every connect
writes a row). Method: 200 sockets connect first and stay (warm-up: code paths, pools, caches), the
server's RSS (VmRSS from /proc) is read, then `--sockets` more connect. RSS is read again
right after, and after `--settle` seconds, longer than the 20 s ping interval, so every
socket has exchanged a ping and, with deflate, holds its compressor and decompressor.
Reported: (RSS after settle − RSS before) / sockets, in KiB. RSS counts what the process
touched, allocator slack included: the figure is what an operator's memory graph shows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import start_servers, stop_servers, wait_up  # noqa: E402
from bench.rooms_bench import Workers  # noqa: E402
from storage.embedded import EmbeddedPostgres, free_port  # noqa: E402
from tests.services import ThrowawayPostgres  # noqa: E402

WARMUP = 200
SOCKETS_PER_GUEST = 100
NO_SESSION = {"id": "", "conversation_id": ""}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def raise_fd_limit() -> None:
    """Servers and workers inherit this process's limit: 10,000 sockets need more than 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 11_000:
        print(f"note: the open-file limit is {hard}; 10,000 sockets need about 11,000 in the server", flush=True)


async def guest_tokens(url: str, n: int) -> list[str]:
    sem = asyncio.Semaphore(10)
    async with aiohttp.ClientSession() as s:
        async def one(i: int) -> str:
            async with sem, s.post(url + "/api/auth/guest", json={"name": f"Idle {i}"}) as r:
                return str((await r.json())["token"])
        return list(await asyncio.gather(*(one(i) for i in range(n))))


def start_node() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(["node", str(ROOT / "bench" / "node_relay.mjs"), str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"listening"
    return proc, f"http://127.0.0.1:{port}"


async def measure(name: str, proc: subprocess.Popen[bytes], url: str, args: argparse.Namespace, tokens: list[str]) -> dict[str, Any]:
    """Connect, read RSS, then kill the server before the clients go: 10,000 orderly
    disconnects (each one a database write in Studyhall) would take minutes and measure nothing."""
    pid = proc.pid

    def creds(n: int) -> list[tuple[str, str]]:
        return [(url, tokens[i % len(tokens)]) for i in range(n)]  # sockets in flight: different users

    warm = Workers("raw-deflate", 1, creds(WARMUP), NO_SESSION)
    main_workers: Workers | None = None
    try:
        r = await warm.all("connect", {"concurrency": 50})
        assert r[0]["connected"] == WARMUP, r
        await asyncio.sleep(3)
        before = rss_kib(pid)
        main_workers = Workers("raw-deflate", args.workers, creds(args.sockets), NO_SESSION)
        t0 = time.monotonic()
        r = await main_workers.all("connect", {"concurrency": args.concurrency, "timeout": 120.0})
        connected = sum(x["connected"] for x in r)
        connect_s = time.monotonic() - t0
        after_connect = rss_kib(pid)
        await asyncio.sleep(args.settle)
        after_settle = rss_kib(pid)
        r = await main_workers.all("stats", {})
        lost = sum(x["counts"].get("connections lost", 0) for x in r)
    finally:
        proc.kill()
        proc.wait()
        if main_workers is not None:
            await main_workers.close()
        await warm.close()
    failed = args.sockets - connected
    row = {"server": name, "sockets": connected, "failed": failed, "lost": lost, "connect s": connect_s,
           "rss before MiB": before / 1024, "rss after MiB": after_settle / 1024,
           "KiB/socket at connect": (after_connect - before) / max(1, connected),
           "KiB/socket": (after_settle - before) / max(1, connected)}
    print(f"  {name}: {connected} sockets in {connect_s:.1f} s ({failed} failed to connect, closed), lost {lost}; RSS {before / 1024:.0f} → "
          f"{after_connect / 1024:.0f} (connected) → {after_settle / 1024:.0f} MiB after {args.settle:g} s; "
          f"{row['KiB/socket at connect']:.1f} KiB/socket at connect, {row['KiB/socket']:.1f} KiB/socket settled", flush=True)
    return row


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--settle", type=float, default=25.0)
    parser.add_argument("--concurrency", type=int, default=25, help="connects in flight per worker")
    parser.add_argument("--servers", default="studyhall,studyhall-deflate,node")
    args = parser.parse_args()
    raise_fd_limit()

    rows = []
    pg: EmbeddedPostgres | None = None
    try:
        for name in args.servers.split(","):
            print(f"{name}: {args.sockets} idle sockets", flush=True)
            if name == "node":
                proc, url = start_node()
                try:
                    await wait_up_node(url)
                    rows.append(await measure(name, proc, url, args, ["-"]))
                finally:
                    proc.terminate()
                    proc.wait()
                continue
            if pg is None:
                # Without fsync: what a socket costs in memory does not depend on the disk, and
                # each connect writes to the database (presence, connections), which on a busy
                # disk would make 10,000 connects take most of an hour.
                pg = ThrowawayPostgres(Path(tempfile.mkdtemp(prefix="studyhall-bench-pg-")), port=free_port(), listen_tcp=True)
                os.chmod(pg.data_dir, 0o755)
                database_url = await asyncio.to_thread(pg.start)
            deflate = "1" if name == "studyhall-deflate" else "0"
            procs = start_servers(1, database_url, None, {"STUDYHALL_WS_DEFLATE": deflate, "STUDYHALL_MAX_SOCKETS_PER_USER": "0"})
            try:
                url = procs[0][1]
                await wait_up(url, attempts=1200)
                tokens = await guest_tokens(url, (args.sockets + WARMUP) // SOCKETS_PER_GUEST + 1)
                rows.append(await measure(name, procs[0][0], url, args, tokens))
            finally:
                stop_servers(procs)
    finally:
        if pg is not None:
            pg.destroy()

    print()
    print("| server | idle sockets | RSS before → after (MiB) | KiB per socket, connected | KiB per socket, after a ping | connect time | lost |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['sockets']:,} | {r['rss before MiB']:.0f} → {r['rss after MiB']:.0f} "
              f"| {r['KiB/socket at connect']:.1f} | {r['KiB/socket']:.1f} | {r['connect s']:.1f} s | {r['lost']} |")


async def wait_up_node(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(100):
            try:
                async with s.get(url + "/socket.io/?EIO=4&transport=polling") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the Node relay did not start")


if __name__ == "__main__":
    asyncio.run(main())
