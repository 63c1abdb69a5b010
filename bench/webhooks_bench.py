"""Webhook delivery throughput and lag, commit → the receiver's 2xx.

    .venv/bin/python bench/webhooks_bench.py [--rate 200] [--seconds 5] [--instances 1|2|both]
        [--verify]

Starts its own PostgreSQL (embedded), runs `studyhall serve` as separate processes and a
receiver in this process (aiohttp, answering 204; `--verify` also checks every signature
with the `standardwebhooks` library). An endpoint subscribed to message.created is added,
then events are committed straight into the outbox at `--rate` per second (one INSERT per
10 ms tick, as the message writer's batches do: one `webhook_message_batches` row of the
tick's messages, which the delivery loops expand, migration 0020): this measures the
delivery side alone;
what the outbox costs the message path is measured by `bench/threads_bench.py --webhook`.

Reports events/s delivered over the window, lag p50/p99 from commit (the row's
`created_at`, which is the body's `timestamp`) to the receiver's answer, duplicates (an
event delivered twice), what was still pending at the end, and the CPU milliseconds per
delivery of the servers and of this process (the receiver): on a shared machine these
move far less than the rates do.
Full run (docs/webhooks.md#performance): `--rate 1000 --seconds 10 --instances both`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import asyncpg
import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import cpu_seconds, quantile_ms, start_servers, stop_servers, wait_up  # noqa: E402
from storage.embedded import EmbeddedPostgres, free_port  # noqa: E402

SECRET = "whsec_" + "QmVuY2htYXJrIHNlY3JldCBrZXkgMTIzNDU2Nzg="
SERVER_ENV = {"STUDYHALL_WEBHOOK_ALLOW_PRIVATE_TARGETS": "1", "STUDYHALL_WEBHOOK_POLL_SECONDS": "0.5",
              "STUDYHALL_WEBHOOK_SUBSCRIPTIONS_REFRESH_SECONDS": "1"}


class Sink:
    """The receiving end: records the lag of each 2xx it answers."""

    def __init__(self, verify: bool = False) -> None:
        from standardwebhooks.webhooks import Webhook

        self.webhook = Webhook(SECRET) if verify else None
        self.lags: list[float] = []
        self.ids: Counter[str] = Counter()
        self.connections: set[int] = set()
        self.first: float | None = None
        self.last = 0.0
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.webhook is not None:
            self.webhook.verify(body, dict(request.headers))
        now = time.time()
        committed = datetime.fromisoformat(orjson.loads(body)["timestamp"]).timestamp()
        self.lags.append(now - committed)
        self.ids[request.headers["webhook-id"]] += 1
        self.connections.add(id(request.transport))  # how many the sender opened (keep-alive reuse)
        self.first = self.first or now
        self.last = now
        return web.Response(status=204)

    async def start(self) -> Sink:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class CpuCap:
    """A cgroup (v2 `cpu.max`, or v1 `cpu.cfs_quota_us`) holding a process to `percent` of
    one CPU: a receiver "elsewhere", that cannot take more than that from the server's cores.
    Needs a writable cgroup file system (root on this machine)."""

    PERIOD_US = 100_000

    def __init__(self, percent: float) -> None:
        self.quota_us = max(1000, int(self.PERIOD_US * percent / 100))
        self.path: Path | None = None

    def hold(self, pid: int) -> None:
        v2, v1 = Path("/sys/fs/cgroup/cgroup.controllers"), Path("/sys/fs/cgroup/cpu")
        base = Path("/sys/fs/cgroup") if v2.exists() else v1
        if not (base / "cgroup.procs").exists():
            raise SystemExit("--receiver-cpu needs a writable cgroup file system with the cpu controller")
        self.path = base / f"studyhall-bench-sink-{pid}"
        self.path.mkdir()
        if v2.exists():
            (self.path / "cpu.max").write_text(f"{self.quota_us} {self.PERIOD_US}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        (self.path / "cgroup.procs").write_text(str(pid))

    def release(self) -> None:
        if self.path is not None:
            try:
                self.path.rmdir()  # empty once the receiver has exited
            except OSError:
                pass


async def port_open(port: int, *, attempts: int, alive: Callable[[], bool]) -> bool:
    """Whether a receiver listens on loopback `port` within `attempts` tries 50 ms apart;
    False at once if its process died."""
    for _ in range(attempts):
        if not alive():
            return False
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return True
    return False


class SinkProcess:
    """A Sink in a process of its own (`--sink PORT`), so that receiving does not take the
    load generator's event loop; it prints its figures as JSON when told to stop.
    `nice`: run it at that niceness (19: it gets only the CPU nothing else wants);
    `cpu_percent`: cap it at that share of one CPU (`CpuCap`). Either stands for a receiver
    on a machine of its own, which a deployment has and this bench does not."""

    def __init__(self, nice: int | None = None, cpu_percent: float | None = None) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.result: dict[str, float] = {}
        self.nice = nice
        self.cap = CpuCap(cpu_percent) if cpu_percent else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> SinkProcess:
        nice = self.nice
        self.proc = subprocess.Popen([sys.executable, __file__, "--sink", str(self.port)], stdout=subprocess.PIPE,
                                     preexec_fn=(lambda: os.nice(nice)) if nice else None)
        if self.cap is not None:
            self.cap.hold(self.proc.pid)
        if not await port_open(self.port, attempts=100, alive=lambda: self.proc is not None and self.proc.poll() is None):
            raise RuntimeError("the webhook sink did not start")
        return self

    def stop(self) -> dict[str, float]:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        if self.cap is not None:
            self.cap.release()
        self.result = orjson.loads(out.splitlines()[-1])
        return self.result

    def describe(self) -> str:
        return (f"receiver capped at {self.cap.quota_us / 1000:g}% of a CPU" if self.cap
                else f"receiver at nice {self.nice}" if self.nice else "receiver on the same cores")


NGINX_CONF = """worker_processes 1;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    log_format hook "$connection $status";
    access_log {prefix}/access.log hook buffer=256k flush=1s;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 204; }}
    }}
}}
"""


class NginxSink:
    """A receiver that costs almost nothing: nginx answering 204 to every POST over plain
    HTTP on loopback (one worker, keep-alive, a buffered access log to count deliveries).
    It stands for a platform's receiver on a machine of its own better than a Python
    process does, which takes about 0.15 ms of the shared cores per delivery. It checks
    no signatures (the Python receiver, `SinkProcess`, can: `--verify`) and cannot see
    the commit time in the body, so it reports no lag. Same interface as `SinkProcess`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="studyhall-bench-nginx-"))
        os.chmod(self.prefix, 0o755)  # run as root, nginx's worker is another user
        self.proc: subprocess.Popen[bytes] | None = None
        self.result: dict[str, float] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> NginxSink:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        conf = self.prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=self.prefix, port=self.port))
        self.proc = subprocess.Popen([binary, "-p", str(self.prefix), "-e", str(self.prefix / "error.log"),
                                      "-c", str(conf), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        proc = self.proc
        if not await port_open(self.port, attempts=200, alive=lambda: proc.poll() is None):
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
            raise RuntimeError("nginx did not start")
        return self

    def _pids(self) -> list[int]:
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [self.proc.pid, *(int(p) for p in children.read_text().split())] if children.exists() else [self.proc.pid]

    def cpu(self) -> float:
        """CPU seconds of nginx's master and worker so far."""
        return cpu_seconds(*self._pids())

    def stop(self) -> dict[str, float]:
        assert self.proc is not None
        cpu = self.cpu()
        self.proc.send_signal(signal.SIGQUIT)  # graceful: the worker flushes its log buffer
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        lines = (self.prefix / "access.log").read_text().split("\n") if (self.prefix / "access.log").exists() else []
        hits = [line.split() for line in lines if line.strip()]
        self.result = {"delivered": sum(1 for h in hits if h[1] == "204"), "lag p50 ms": float("nan"),
                       "lag p99 ms": float("nan"), "cpu s": cpu, "connections": len({h[0] for h in hits})}
        shutil.rmtree(self.prefix, ignore_errors=True)
        return self.result

    def describe(self) -> str:
        return "nginx receiver (204, no signature check) on the same cores"


async def serve_sink(port: int) -> None:
    sink = Sink()
    sink.port = port
    await sink.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await sink.close()
    print(orjson.dumps({"delivered": len(sink.ids), "lag p50 ms": quantile_ms(sink.lags, 50),
                        "lag p99 ms": quantile_ms(sink.lags, 99), "cpu s": time.process_time(),
                        "connections": len(sink.connections)}).decode(), flush=True)


async def add_endpoint(database_url: str, url: str, events: tuple[str, ...] = ("message.created",)) -> str:
    """An app and an endpoint written straight to the database (the servers hear of it by NOTIFY)."""
    conn = await asyncpg.connect(database_url)
    try:
        app_id = await conn.fetchval(
            """INSERT INTO apps (name, algorithms, hmac_secrets, issuer, audience)
               VALUES ('bench', '{HS256}', ARRAY[md5(random()::text) || md5(random()::text)],
                       'https://bench-' || gen_random_uuid() || '.example', 'studyhall') RETURNING id""")
        return str(await conn.fetchval(
            "INSERT INTO webhook_endpoints (app_id, url, events, secret) VALUES ($1, $2, $3, $4) RETURNING id",
            app_id, url, list(events), SECRET))
    finally:
        await conn.close()


async def offer(database_url: str, endpoint_id: str, rate: float, seconds: float) -> int:
    """Commit `rate` events per second into the outbox for `seconds`; returns how many."""
    conn = await asyncpg.connect(database_url)
    sent, tick, start = 0, 0.01, time.monotonic()
    try:
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(rate * elapsed) - sent
            if due > 0:
                await conn.execute(
                    """INSERT INTO webhook_message_batches (endpoint_ids, messages)
                       SELECT ARRAY[$1::uuid], array_agg(ROW(gen_random_uuid(), gen_random_uuid(), n, NULL, 'user',
                              'bench', NULL, '{}'::jsonb, now(), 'direct', NULL)::webhook_message ORDER BY n)
                       FROM generate_series(1, $2) n""",
                    endpoint_id, due)
                sent += due
            await asyncio.sleep(tick)
    finally:
        await conn.close()
    return sent


async def run(database_url: str, instances: int, rate: float, seconds: float, verify: bool) -> dict[str, float]:
    sink = await Sink(verify).start()
    conn = await asyncpg.connect(database_url)
    await conn.execute("TRUNCATE webhook_deliveries, webhook_message_batches")
    await conn.execute("DELETE FROM webhook_endpoints")
    await conn.close()
    procs = start_servers(instances, database_url, None, SERVER_ENV)
    try:
        for _, url in procs:
            await wait_up(url)
        endpoint_id = await add_endpoint(database_url, sink.url)
        await asyncio.sleep(1.5)  # every instance hears of the endpoint
        pids = [p.pid for p, _ in procs]
        cpu_before, me_before = cpu_seconds(*pids), cpu_seconds("self")
        offered = await offer(database_url, endpoint_id, rate, seconds)
        deadline = time.monotonic() + 30
        while len(sink.ids) < offered and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        server_cpu, me_cpu = cpu_seconds(*pids) - cpu_before, cpu_seconds("self") - me_before
        conn = await asyncpg.connect(database_url)
        pending = await conn.fetchval(
            """SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending')
                      + (SELECT coalesce(sum(cardinality(messages)), 0) FROM webhook_message_batches)""")
        await conn.close()
    finally:
        stop_servers(procs)
        await sink.close()
    span = (sink.last - sink.first) if sink.first else 0.0
    return {
        "offered": offered, "delivered": len(sink.ids), "duplicates": sum(c - 1 for c in sink.ids.values()),
        "delivered/s": len(sink.ids) / span if span else 0.0,
        "lag p50 ms": quantile_ms(sink.lags, 50), "lag p99 ms": quantile_ms(sink.lags, 99), "pending": pending,
        # CPU per delivery: the servers (claiming, sending, recording), and this process
        # (mostly the receiver; the offering loop's INSERTs are a small part).
        "server cpu ms/delivery": 1000 * server_cpu / max(1, len(sink.ids)),
        "bench cpu ms/delivery": 1000 * me_cpu / max(1, len(sink.ids)),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200, help="events committed per second")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--instances", choices=["1", "2", "both"], default="1")
    parser.add_argument("--verify", action="store_true", help="verify every signature in the receiver")
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)  # run only a receiver (SinkProcess)
    args = parser.parse_args()
    if args.sink:
        await serve_sink(args.sink)
        return
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="studyhall-bench-pg-")), port=free_port())
    os.chmod(pg.data_dir, 0o755)
    database_url = await asyncio.to_thread(pg.start)
    rows = []
    try:
        from storage.migrate import migrate

        await migrate(database_url)
        for n in [1, 2] if args.instances == "both" else [int(args.instances)]:
            r = await run(database_url, n, args.rate, args.seconds, args.verify)
            rows.append((n, r))
            print(f"{n} instance(s): " + ", ".join(f"{k} {v:,.1f}" for k, v in r.items()), flush=True)
    finally:
        pg.destroy()
    print()
    print("| instances | offered events/s | delivered events/s | lag p50 / p99 ms | duplicates | pending at end "
          "| CPU ms per delivery: server / receiver |")
    print("|---|---|---|---|---|---|---|")
    for n, r in rows:
        print(f"| {n} | {args.rate:,.0f} | {r['delivered/s']:,.0f} | {r['lag p50 ms']:.1f} / {r['lag p99 ms']:.1f} "
              f"| {r['duplicates']:.0f} | {r['pending']:.0f} "
              f"| {r['server cpu ms/delivery']:.3f} / {r['bench cpu ms/delivery']:.3f} |")


if __name__ == "__main__":
    asyncio.run(main())
