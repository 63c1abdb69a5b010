"""Fixtures: a real PostgreSQL and Redis for the session, a fresh database per test,
real servers on real ports, and real Socket.IO clients."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from argon2 import PasswordHasher

from handlers import auth
from handlers.settings import Settings
from server.app import create_app
from storage.db import Database
from storage.embedded import free_port
from tests.client import Api, Instance
from tests.services import DatabasePool, Postgres, RedisCluster, RedisServer

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    # A small shared_buffers: DROP DATABASE and checkpoints scan all of it (the default, a
    # quarter of memory, made each test's drop twice as slow).
    pg = Postgres.start(shared_buffers="128MB", durable=False)
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def database_pool(postgres: Postgres) -> Iterator[DatabasePool]:
    pool = DatabasePool(postgres)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | None]:
    """The session's shared Redis (tests that restart Redis start their own)."""
    if os.environ.get("TEST_REDIS_URL"):
        yield None
        return
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A real Redis Cluster on loopback (3 masters, no replicas) for the session; tests
    that restart a node start their own."""
    started = RedisCluster().start()
    yield started
    started.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer | None) -> str:
    return os.environ.get("TEST_REDIS_URL") or redis_server.url  # type: ignore[union-attr]


@pytest.fixture
async def database_url(postgres: Postgres, database_pool: DatabasePool) -> AsyncIterator[str]:
    """A fresh database cloned from the migrated template (cloned ahead: tests/services.py)."""
    name = await database_pool.take()
    yield postgres.url(name)
    await database_pool.give_back(name)


# argon2-cffi's recommended cost (what Studyhall uses) is ~50 ms of CPU on four threads per
# hash; the suite registers a few hundred users. Tests hash with the cheapest argon2id
# instead (same code paths, same verification) unless they ask for `real_password_hashing`
# (tests/test_accounts.py checks the stored hashes carry the real parameters).
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
CHEAP_DUMMY_HASH = CHEAP_HASHER.hash("studyhall-timing-equaliser")


@pytest.fixture
def real_password_hashing() -> None:
    """Use Studyhall's own argon2 parameters in this test."""


@pytest.fixture(autouse=True)
def cheap_password_hashing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if "real_password_hashing" in request.fixturenames:
        return
    monkeypatch.setattr(auth, "_hasher", CHEAP_HASHER)
    monkeypatch.setattr(auth, "_DUMMY_HASH", CHEAP_DUMMY_HASH)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await Database.connect(database_url, min_size=1, max_size=5)
    yield database
    await database.close()


@pytest.fixture
def base_settings(database_url: str) -> Settings:
    return Settings().with_(
        database__url=database_url,
        database__data_dir=Path(tempfile.gettempdir()) / "studyhall-test-unused",
        presence__grace_seconds=0.3,
        rooms__leave_grace_seconds=0.3,
        log__json=False,
        # The product's default embedder is the neural `onnx` one; the suite embeds with
        # `hashing` (fast, no model), except tests about the default (test_embeddings.py,
        # test_retrieval_db.py), which ask for it.
        knowledge__embedder="hashing",
        # Tests register many users from 127.0.0.1: sign-in limits well above any test's
        # needs (tests/test_hardening_auth.py sets the real defaults to prove them).
        auth__guest_limit_10min=100_000, auth__guest_limit_day=100_000,
        auth__register_limit_10min=100_000, auth__register_limit_day=100_000, auth__login_limit_10min=100_000,
    )


@pytest.fixture
async def start_instance(base_settings: Settings) -> AsyncIterator[Any]:
    """Start real servers on loopback ports: `await start_instance(**setting_overrides)`, each
    override a section or `section__setting` (`rooms__leave_grace_seconds=0.5`: Settings.with_)."""
    runners: list[web.AppRunner] = []

    async def start(**overrides: Any) -> Instance:
        settings = base_settings.with_(**{"http__port": free_port(), **overrides})
        app = create_app(settings)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", settings.http.port).start()
        runners.append(runner)
        return Instance(f"http://127.0.0.1:{settings.http.port}", app, runner)

    yield start
    for runner in reversed(runners):
        await _stop_instance(runner)


INSTANCE_STOP_SECONDS = 60.0


async def _stop_instance(runner: web.AppRunner) -> None:
    """Stop an instance, failing with every pending task's await chain if it takes over a
    minute (every shutdown step has its own timeout: a stop this slow is a bug to see, not
    a CI job hanging until it is killed)."""
    stopping = asyncio.ensure_future(runner.cleanup())
    done, _ = await asyncio.wait({stopping}, timeout=INSTANCE_STOP_SECONDS)
    if stopping in done:
        stopping.result()
        return
    chains = "\n".join(f"- {task.get_name()}: {_await_chain(task)}" for task in asyncio.all_tasks())
    stopping.cancel()
    pytest.fail(f"an instance took over {INSTANCE_STOP_SECONDS:.0f} s to stop; pending tasks:\n{chains}")


def _await_chain(task: asyncio.Task[Any]) -> str:
    """Where a task waits, innermost last: each coroutine's function and line."""
    links: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            links.append(f"{frame.f_code.co_qualname} ({Path(frame.f_code.co_filename).name}:{frame.f_lineno})")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " -> ".join(links) or repr(task)


@pytest.fixture
async def server(start_instance: Any) -> Instance:
    """One instance, no Redis."""
    return await start_instance()


@pytest.fixture
async def cluster(start_instance: Any, redis_url: str) -> list[Instance]:
    """Two instances sharing one Redis on a channel private to this test."""
    channel = f"studyhall-test-{uuid.uuid4().hex[:8]}"
    return [await start_instance(cluster__redis_url=redis_url, cluster__redis_channel=channel) for _ in range(2)]


@pytest.fixture
async def api(server: Instance) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        client = Api(session, server.url)
        yield client
        await client.close_sockets()


# ---- markers by what a test needs (registered in pyproject.toml) ---------------------------
# A test gets the marks of the fixtures it uses, directly or through other fixtures; one
# that uses none of these (and has no explicit mark) is `unit`. Tests that start services
# themselves (their own Redis, PostgreSQL or `studyhall serve`) say so with explicit marks.
FIXTURE_MARKS: dict[str, tuple[str, ...]] = {
    "browser": ("browser",),
    "redis_server": ("cluster",), "redis_url": ("cluster",), "cluster": ("cluster",), "redis_cluster": ("cluster",),
    "postgres": ("database",), "database_pool": ("database",), "database_url": ("database",), "db": ("database",),
    "base_settings": ("database",), "start_instance": ("database",), "server": ("database",),
    "api": ("database",),
    # Module fixtures that run `studyhall serve` / a crashable PostgreSQL of their own.
    "served": ("database", "slow"), "loaded": ("database", "slow"), "crash_pg": ("database", "slow"),
}
SERVICE_MARKS = ("database", "cluster", "browser")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        have = {mark.name for mark in item.iter_markers()}
        wanted = {name for fixture in getattr(item, "fixturenames", ()) for name in FIXTURE_MARKS.get(fixture, ())}
        for name in sorted(wanted - have):
            item.add_marker(name)
        if not (have | wanted) & set(SERVICE_MARKS):
            item.add_marker("unit")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true a skipped test is a failed test: CI must run everything."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which runs every test: {report.longrepr}"
