"""What every benchmark needs: `studyhall serve` processes on free ports, a wait until they
answer, and the measuring tools (CPU time from /proc, latency quantiles, py-spy). Servers
run as separate processes so the load generator does not share their event loop (it still
shares the machine's cores)."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from storage.embedded import EmbeddedPostgres, free_port  # noqa: E402
from storage.migrate import migrate  # noqa: E402

# No rate limit: the benchmark is the only client and wants the server's own ceiling (it
# registers hundreds of users from 127.0.0.1, over the sign-in limits' defaults).
SIGNIN_LIMITS = ("STUDYHALL_GUEST_LIMIT_10MIN", "STUDYHALL_GUEST_LIMIT_DAY", "STUDYHALL_REGISTER_LIMIT_10MIN",
                 "STUDYHALL_REGISTER_LIMIT_DAY", "STUDYHALL_LOGIN_LIMIT_10MIN")
BENCH_ENV = {"STUDYHALL_RATE_LIMIT": "100000", "STUDYHALL_RATE_BURST": "100000", "STUDYHALL_USER_RATE_LIMIT": "100000",
             "STUDYHALL_USER_RATE_BURST": "100000", "STUDYHALL_LOG_LEVEL": "WARNING",
             **dict.fromkeys(SIGNIN_LIMITS, "0")}


def start_servers(
    n: int, database_url: str, redis_url: str | None, extra_env: dict[str, str] | None = None,
    command: list[str] | None = None,
) -> list[tuple[subprocess.Popen[bytes], str]]:
    """Start `n` instances (sharing `redis_url` when given); returns (process, base URL) pairs.
    `command`: what runs instead of `python -m server serve` (bench/latency_probe.py's wrapper)."""
    out = []
    for _ in range(n):
        port = free_port()
        env = {**os.environ, **BENCH_ENV, **(extra_env or {}), "DATABASE_URL": database_url, "STUDYHALL_PORT": str(port)}
        if redis_url:
            env["REDIS_URL"] = redis_url
        proc = subprocess.Popen(command or [sys.executable, "-m", "server", "serve"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=(None if os.environ.get("BENCH_SERVER_STDERR") else subprocess.DEVNULL))
        out.append((proc, f"http://127.0.0.1:{port}"))
    return out


@asynccontextmanager
async def migrated_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """An embedded PostgreSQL of the bench's own in a new directory, migrated; destroyed
    after the block (its `url()` and `pgdata` for what the bench needs)."""
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="studyhall-bench-pg-")), port=free_port())
    os.chmod(pg.data_dir, 0o755)
    await asyncio.to_thread(pg.start)
    try:
        await migrate(pg.url())
        yield pg
    finally:
        await asyncio.to_thread(pg.destroy)


async def wait_up(url: str, attempts: int = 300) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(attempts):
            try:
                async with s.get(url + "/api/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def stop_servers(procs: list[tuple[subprocess.Popen[bytes], str]]) -> None:
    for proc, _ in procs:
        proc.terminate()
    for proc, _ in procs:
        proc.wait()


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(*pids: int | str) -> float:
    """User+system CPU seconds of processes ("self" for this one), from /proc."""
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def tree_cpu_seconds(root: int) -> float:
    """User+system CPU seconds of `root` and its live children (PostgreSQL's backends)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == root or int(fields[1]) == root:
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def postmaster_pid(pg: EmbeddedPostgres) -> int:
    """The running PostgreSQL's postmaster (its backends are its children)."""
    return int((pg.pgdata / "postmaster.pid").read_text().split()[0])


def quantile_ms(seconds: list[float], q: int) -> float:
    """The q-th percentile of latencies in seconds, in ms (NaN under two samples)."""
    if len(seconds) < 2:
        return float("nan")
    return statistics.quantiles(seconds, n=100, method="inclusive")[q - 1] * 1000


def py_spy(pid: int, seconds: float, output: str) -> None:
    """Record `pid` with py-spy (next to this Python) for `seconds`, raw format, in the background."""
    subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
                      "--duration", str(max(1, int(seconds))), "--format", "raw", "--output", output],
                     stdout=subprocess.DEVNULL, stderr=(None if os.environ.get("BENCH_SERVER_STDERR") else subprocess.DEVNULL))
