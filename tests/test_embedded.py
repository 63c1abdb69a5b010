"""The embedded PostgreSQL's memory: sized for serving, not PostgreSQL's start-anywhere 128MB."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import asyncpg
import pytest

from handlers.settings import Settings
from storage.embedded import EmbeddedPostgres, free_port, memory_limit, shared_buffers_for

GB = 2**30


def test_shared_buffers_is_a_quarter_of_memory_within_bounds() -> None:
    assert shared_buffers_for(2 * GB) == "512MB"
    assert shared_buffers_for(256 * 2**20) == "128MB"  # never below PostgreSQL's own default
    assert shared_buffers_for(64 * GB) == "4096MB"  # an embedded server does not take 16 GB


def test_memory_limit_follows_a_container_limit(tmp_path: Path) -> None:
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert memory_limit(tmp_path) == physical  # no cgroup files: the machine's RAM
    (tmp_path / "memory.max").write_text("max\n")  # cgroup v2 without a limit
    assert memory_limit(tmp_path) == physical
    (tmp_path / "memory.max").write_text(f"{GB}\n")
    assert memory_limit(tmp_path) == min(physical, GB)
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{GB // 2}\n")
    assert memory_limit(v1) == min(physical, GB // 2)


def test_setting_is_validated() -> None:
    assert Settings.from_env({"STUDYHALL_PG_SHARED_BUFFERS": "1GB"}).database.pg_shared_buffers == "1GB"
    assert Settings.from_env({}).database.pg_shared_buffers is None
    with pytest.raises(SystemExit, match="STUDYHALL_PG_SHARED_BUFFERS"):
        Settings.from_env({"STUDYHALL_PG_SHARED_BUFFERS": "1GB; DROP"})


async def _shared_buffers_mb(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:  # pg_settings gives shared_buffers in 8kB pages
        return int(await conn.fetchval("SELECT setting::bigint * 8 / 1024 FROM pg_settings WHERE name = 'shared_buffers'"))
    finally:
        await conn.close()


@pytest.mark.database
@pytest.mark.slow
async def test_embedded_server_runs_with_the_sized_shared_buffers() -> None:
    # As root the server runs as another user, who must reach the data (pytest's tmp_path is private).
    base = Path(tempfile.mkdtemp(prefix="studyhall-test-embedded-"))
    os.chmod(base, 0o755)
    default = EmbeddedPostgres(base / "default", port=free_port(), listen_tcp=True)
    try:
        url = await asyncio.to_thread(default.start)
        assert f"{await _shared_buffers_mb(url)}MB" == shared_buffers_for(memory_limit())
    finally:
        await asyncio.to_thread(default.destroy)

    chosen = EmbeddedPostgres(base / "chosen", port=free_port(), listen_tcp=True, shared_buffers="160MB")
    try:
        url = await asyncio.to_thread(chosen.start)
        assert await _shared_buffers_mb(url) == 160
    finally:
        await asyncio.to_thread(chosen.destroy)
        shutil.rmtree(base, ignore_errors=True)
