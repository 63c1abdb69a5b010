"""`studyhall app key create|list|revoke|rotate`: API keys of an app (handlers/platform/keys.py)."""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from handlers.settings import Settings
from server.cli_args import csv_list, uuid_arg
from server.identity_cli import RunAsync
from server.identity_cli import run_reporting as _run


def _describe(key: dict[str, Any]) -> str:
    used = key["last_used_at"].isoformat(timespec="seconds") if key["last_used_at"] else "never"
    expires = key["expires_at"].isoformat(timespec="seconds") if key["expires_at"] else "-"
    return (f"{key['id']}  {key['prefix']}…  {key['state']}  scopes={','.join(key['scopes'])}  "
            f"expires={expires}  last_used={used}  {key['name']}")


def cmd_key_create(args: argparse.Namespace, settings: Settings, *, run_async: RunAsync) -> int:
    from handlers.platform import keys

    scopes = csv_list(args.scopes)

    async def work(core: Any) -> int:
        result = await keys.create(core, None, args.app_id, name=args.name or "", scopes=scopes)
        print(f"created key {result['key']['id']} for app {args.app_id}")
        print(f"scopes: {','.join(result['key']['scopes'])}")
        print(f"API key (shown once; give it to the platform's backend): {result['secret']}")
        return 0

    return _run(settings, work, run_async)


def cmd_key_list(args: argparse.Namespace, settings: Settings, *, run_async: RunAsync) -> int:
    from handlers.platform import keys

    async def work(core: Any) -> int:
        listed = (await keys.list_keys(core, None, args.app_id))["keys"]
        if not listed:
            print("no keys")
        for key in listed:
            print(_describe(key))
        return 0

    return _run(settings, work, run_async)


def cmd_key_revoke(args: argparse.Namespace, settings: Settings, *, run_async: RunAsync) -> int:
    from handlers.platform import keys

    async def work(core: Any) -> int:
        key = (await keys.revoke(core, None, args.app_id, args.key_id))["key"]
        print(f"revoked {_describe(key)}")
        return 0

    return _run(settings, work, run_async)


def cmd_key_rotate(args: argparse.Namespace, settings: Settings, *, run_async: RunAsync) -> int:
    from handlers.platform import keys

    async def work(core: Any) -> int:
        result = await keys.rotate(core, None, args.app_id, args.key_id, overlap_hours=args.overlap_hours)
        print(f"new key {result['key']['id']}; the old key works until {result['old_key']['expires_at']}")
        print(f"API key (shown once; give it to the platform's backend): {result['secret']}")
        return 0

    return _run(settings, work, run_async)


def add_commands(app_sub: Any, run_async: RunAsync) -> None:
    """Add `key create|list|revoke|rotate` under `studyhall app`; server/cli.py hands in its
    runner, so this module does not import it back (tests/test_import_graph.py)."""
    from handlers.platform.keys import SCOPES

    key = app_sub.add_parser("key", help="API keys for a platform's backend (docs/integration.md)")
    key_sub = key.add_subparsers(dest="key_command", required=True)
    create = key_sub.add_parser("create", help="make a key; prints it once")
    create.add_argument("app_id", type=uuid_arg)
    create.add_argument("--scopes", required=True, help=f"comma-separated, among: {','.join(SCOPES)}")
    create.add_argument("--name", help="a label for people (which service holds the key)")
    create.set_defaults(func=partial(cmd_key_create, run_async=run_async))
    listing = key_sub.add_parser("list", help="list an app's keys (never the keys themselves)")
    listing.add_argument("app_id", type=uuid_arg)
    listing.set_defaults(func=partial(cmd_key_list, run_async=run_async))
    revoke = key_sub.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("app_id", type=uuid_arg)
    revoke.add_argument("key_id", type=uuid_arg)
    revoke.set_defaults(func=partial(cmd_key_revoke, run_async=run_async))
    rotate = key_sub.add_parser("rotate", help="a new key with the same scopes; the old one works for --overlap-hours")
    rotate.add_argument("app_id", type=uuid_arg)
    rotate.add_argument("key_id", type=uuid_arg)
    rotate.add_argument("--overlap-hours", type=float, help="how long the old key keeps working (default 24; 0: stop now)")
    rotate.set_defaults(func=partial(cmd_key_rotate, run_async=run_async))
