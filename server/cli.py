"""The `studyhall` command: serve, migrate, createuser, ingest, reindex, eval, demo, app."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from handlers.settings import Settings
from server.cli_args import csv_list
from server.logs import setup_logging
from storage.records import Role

log = logging.getLogger("studyhall")


@asynccontextmanager
async def database_url(settings: Settings) -> AsyncIterator[str]:
    """The configured database, or the embedded one for the command's duration."""
    if settings.database.url:
        from server.lifecycle import check_database_url

        await check_database_url(settings.database.url)
        yield settings.database.url
        return
    from storage.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(Path(settings.database.data_dir), shared_buffers=settings.database.pg_shared_buffers)
    # Joins the server a running `serve` uses (and then leaves it running), or starts it.
    url = await asyncio.to_thread(embedded.start)
    try:
        yield url
    finally:
        await asyncio.to_thread(embedded.stop)


@asynccontextmanager
async def core_for_command(settings: Settings, *, webhooks: bool = False) -> AsyncIterator[Any]:
    """A Core without a web server, for commands that run handlers (createuser, ingest).

    `webhooks`: load which webhook events are subscribed, for a command whose changes emit
    them (`createuser`, `demo`: user.created, conversation.created), so they reach the
    outbox for a running server to deliver. Other commands (ingest, reindex, eval, app,
    webhook) emit none and skip the read; without it `core.webhooks` is None and `emit`
    writes nothing, so a command that comes to emit events must ask for it."""
    import uuid

    from handlers.core import Core
    from handlers.ratelimit import RateLimiter
    from handlers.webhooks.outbox import Subscriptions
    from storage.db import Database
    from storage.migrate import migrate

    class NoEvents:
        async def to_users(self, *a: Any, **k: Any) -> None: ...
        async def to_rooms(self, *a: Any, **k: Any) -> None: ...
        async def to_users_many(self, *a: Any, **k: Any) -> None: ...
        async def to_rooms_many(self, *a: Any, **k: Any) -> None: ...
        async def to_rooms_except_user(self, *a: Any, **k: Any) -> None: ...
        async def join_users_sockets(self, *a: Any, **k: Any) -> None: ...
        async def join_user_sockets(self, *a: Any, **k: Any) -> None: ...
        async def leave_user_sockets(self, *a: Any, **k: Any) -> None: ...
        async def disconnect_sids(self, *a: Any, **k: Any) -> None: ...
        async def disconnect_tokens(self, *a: Any, **k: Any) -> None: ...
        async def disconnect_user(self, *a: Any, **k: Any) -> None: ...

    async with database_url(settings) as url:
        await migrate(url)
        db = await Database.connect(url, min_size=1, max_size=4)
        limiter = RateLimiter(settings.cluster.redis_url, prefix=settings.cluster.redis_channel)
        try:
            core = Core(settings=settings, db=db, events=NoEvents(), instance_id=uuid.uuid4(), limiter=limiter)
            if webhooks:
                core.webhooks = subscriptions = Subscriptions(db)
                await subscriptions.refresh()
            yield core
        finally:
            await limiter.close()
            await db.close()


GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Tune the garbage collector for a long-running server (measured with
    bench/threads_bench.py; it is process-wide, so it is done here and not in the app).

    Everything alive once the server is built (modules, settings: ~130,000 objects) is
    frozen out of the collector's view; otherwise every full collection walks them all
    again (12 full collections in 40 s of load took up to 180 ms each, the server standing
    still). The youngest generation is collected every 50,000 allocations instead of 700:
    with the default, the collector ran ~50 times a second under load. Together: 2,830 ->
    3,200-3,800 messages/s, p99 at half rate 160-190 -> 34-50 ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from server.app import create_app
    from server.lifecycle import serve

    settings = settings.with_(http__host=args.host or settings.http.host, http__port=args.port or settings.http.port)
    app = create_app(settings)
    tune_gc()
    return asyncio.run(serve(app, settings))


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from storage.migrate import migrate

    async def run() -> list[int]:
        async with database_url(settings) as url:
            return await migrate(url)

    applied = asyncio.run(run())
    print(f"applied migrations: {applied}" if applied else "database is up to date")
    return 0


def read_password(args: argparse.Namespace) -> str:
    """The new account's password: --password (scripts; visible in the process list),
    one line of stdin with --password-stdin, or a prompt (twice) at a terminal."""
    if args.password is not None:
        return str(args.password)
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ValueError("no password: use --password-stdin to read it from stdin, or run at a terminal to be asked")
    import getpass

    first = getpass.getpass("Password: ")
    if getpass.getpass("Password (again): ") != first:
        raise ValueError("the passwords differ")
    return first


def cmd_createuser(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from handlers import auth
    from handlers.errors import ApiError
    from server.validation import NewAccount, validation_message

    try:
        account = NewAccount(email=args.email, password=read_password(args), name=args.name)
    except ValidationError as exc:
        print(f"error: {validation_message(exc)}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    async def run() -> dict[str, Any]:
        async with core_for_command(settings, webhooks=True) as core:
            return await auth.create_user(
                core, email=str(account.email), password=account.password, name=account.name, role=args.role
            )

    try:
        user = asyncio.run(run())
    except ApiError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 1
    print(f"created {user['role']} {user['name']} ({user['id']})")
    return 0


def _run_async(fn: Callable[[Any], Awaitable[int]], settings: Settings, *, webhooks: bool = False) -> int:
    async def run() -> int:
        async with core_for_command(settings, webhooks=webhooks) as core:
            return await fn(core)

    return asyncio.run(run())


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from handlers.knowledge import ingest_paths_command
    from server.factories import knowledge_base

    paths = [Path(p) for p in args.paths]
    return _run_async(lambda core: ingest_paths_command(knowledge_base(settings, core.db), paths, course=args.course,
                                                        base_url=args.base_url, exclude=args.exclude), settings)


def cmd_reindex(args: argparse.Namespace, settings: Settings) -> int:
    from handlers.knowledge import reindex_command
    from server.factories import knowledge_base

    return _run_async(lambda core: reindex_command(knowledge_base(settings, core.db)), settings)


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from handlers.evaluation import eval_command
    from handlers.knowledge import MAX_K
    from server.evaluation import parse_weights, read_questions
    from server.factories import knowledge_base

    try:
        questions = read_questions(Path(args.questions))
        ks = [int(k) for k in csv_list(args.k)]
        extra = [parse_weights(w, settings.retrieval.rrf_k) for w in args.weights]
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _run_async(lambda core: eval_command(knowledge_base(settings, core.db), questions, ks=ks, course=args.course,
                                                extra=extra, json_out=args.json, max_k=MAX_K), settings)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from handlers.demo import load_demo, render
    from server.factories import knowledge_base

    async def run(core: Any) -> int:
        report = await load_demo(core, knowledge_base(settings, core.db))
        print(render(report, page_base_url(settings)))
        return 0

    return _run_async(run, settings, webhooks=True)  # its users and thread: user.created, conversation.created


def page_base_url(settings: Settings) -> str:
    """Where `studyhall serve` with the same settings answers, for links a browser opens
    (a wildcard listen address is reached on loopback from this machine)."""
    host = "127.0.0.1" if settings.http.host in ("", "0.0.0.0", "::") else settings.http.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.http.port}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="studyhall", description="Realtime chat and AI tutoring server.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to listen on (STUDYHALL_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (STUDYHALL_PORT, default 8080)")
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    cu = sub.add_parser("createuser", help="create an account (the first admin, staff)")
    cu.add_argument("--email", required=True)
    secret = cu.add_mutually_exclusive_group()
    secret.add_argument(
        "--password", help="the password on the command line (for scripts; other users see it in the process list)"
    )
    secret.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    cu.add_argument("--name", required=True)
    cu.add_argument("--role", required=True, choices=[Role.ADMIN, Role.MENTOR, Role.AGENT, Role.STUDENT])
    cu.set_defaults(func=cmd_createuser)
    ing = sub.add_parser("ingest", help="add documents (files and folders) to the knowledge base",
                         description="Exit status: 0 all stored, 1 some files failed, 2 a path is missing or "
                                     "--base-url is not a URL, 3 a folder held files of unsupported types.")
    ing.add_argument("paths", nargs="+")
    ing.add_argument("--course", help="course the documents belong to")
    ing.add_argument("--base-url", help="public address of the folders given: a file's link (what citations "
                                        "show) is this URL plus its path inside the folder")
    ing.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                     help="skip files whose path inside the folder (or name) matches, e.g. '_sources/*'; repeatable")
    ing.set_defaults(func=cmd_ingest)
    sub.add_parser("reindex", help="re-embed chunks after a change of embedding model").set_defaults(func=cmd_reindex)
    ev = sub.add_parser("eval", help="measure retrieval on questions with known answers (docs/tutor.md)")
    ev.add_argument("questions", help="a JSON Lines file: one question and its expected document(s) per line")
    ev.add_argument("--json", metavar="OUT", help="also write the figures (and each question's outcome) to OUT as JSON")
    ev.add_argument("--k", default="1,5,10", help="recall cutoffs, comma-separated; MRR and nDCG at the largest "
                                                  "(default 1,5,10)")
    ev.add_argument("--course", help="search this course's documents (and general ones), as the tutor would")
    ev.add_argument("--weights", action="append", default=[], metavar="V:T",
                    help="also measure hybrid search with these vector:text weights (repeatable), e.g. 1:0.5")
    ev.set_defaults(func=cmd_eval)
    sub.add_parser(
        "demo", help="load a sample course with demo accounts and a live room, and print what to try (safe to rerun)"
    ).set_defaults(func=cmd_demo)
    from server.identity_cli import add_commands as add_identity_commands

    app_sub = add_identity_commands(sub, _run_async)  # app create, app list
    from server.platform_cli import add_commands as add_key_commands

    add_key_commands(app_sub, _run_async)  # app key create|list|revoke|rotate
    from server.webhooks_cli import add_commands as add_webhook_commands

    add_webhook_commands(sub, _run_async)  # webhook create, list, delete, enable, disable, deliveries, redeliver
    return parser


def main(argv: list[str] | None = None) -> int:
    from server.lifecycle import StartupError
    from storage.embedded import EmbeddedPostgresError

    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    setup_logging(settings.log.level, settings.log.json)
    try:
        return int(args.func(args, settings) or 0)
    except StartupError as exc:
        print(f"studyhall: {exc}", file=sys.stderr)
    except EmbeddedPostgresError as exc:
        first = str(exc).strip().splitlines()[0]
        log_file = Path(settings.database.data_dir) / "postgres.log"
        hints = [f"log: {log_file}"] if log_file.exists() else []
        hints += [] if "DATABASE_URL" in first else ["or set DATABASE_URL"]
        print(
            f"studyhall: the embedded PostgreSQL in STUDYHALL_DATA_DIR={settings.database.data_dir} could not be used: {first}"
            + (f" ({'; '.join(hints)})" if hints else ""),
            file=sys.stderr,
        )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
