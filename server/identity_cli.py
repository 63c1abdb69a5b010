"""`studyhall app create` and `studyhall app list`: the apps that sign identity tokens.

server/cli.py adds these commands and hands them its runner (`run_async`), so this module
does not import server/cli.py back (tests/test_import_graph.py: no import cycles).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from handlers.settings import Settings
from server.cli_args import csv_list

# server/cli.py's `_run_async`: run a coroutine function on a command-line Core.
RunAsync = Callable[[Callable[[Any], Awaitable[int]], Settings], int]


def run_reporting(settings: Settings, action: Callable[[Any], Awaitable[int]], run_async: RunAsync) -> int:
    """Run `action(core)` with the CLI's runner; an ApiError is printed as `error: ...` with
    exit status 1 (the `app key` and `webhook` commands)."""
    from handlers.errors import ApiError

    async def run(core: Any) -> int:
        try:
            return await action(core)
        except ApiError as err:
            print(f"error: {err.message}", file=sys.stderr)
            return 1

    return run_async(run, settings)


def cmd_app_create(args: argparse.Namespace, settings: Settings, *, run_async: RunAsync) -> int:
    from pydantic import ValidationError

    from handlers.errors import ApiError
    from handlers.identity import apps
    from server.identity import NewAppBody
    from server.validation import validation_message

    try:
        public_key = Path(args.public_key_file).read_text() if args.public_key_file else None
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read {args.public_key_file}: {exc}", file=sys.stderr)
        return 1
    fields: dict[str, Any] = {
        "name": args.name, "issuer": args.issuer, "audience": args.audience,
        "hs256_secrets": args.hs256_secret or [], "public_key": public_key, "jwks_url": args.jwks_url,
        "algorithms": csv_list(args.algorithms) or None, "roles": csv_list(args.roles) or ["student"],
        "origins": args.origin or [], "require_identity": args.require_identity,
    }
    try:
        spec = NewAppBody.model_validate(fields).spec()
    except ValidationError as exc:
        print(f"error: {validation_message(exc)}", file=sys.stderr)
        return 1

    async def run(core: Any) -> int:
        try:
            result = await apps.create(core, None, spec)
        except ApiError as err:
            print(f"error: {err.message}", file=sys.stderr)
            return 1
        app = result["app"]
        print(f"created app {app['name']} ({app['id']})")
        print(f"app id: {app['id']}")
        print(f"issuer: {app['issuer']}  audience: {app['audience']}  algorithms: {','.join(app['algorithms'])}")
        if "secret" in result:
            print(f"HS256 secret (shown once; give it to the platform's backend): {result['secret']}")
        return 0

    return run_async(run, settings)


def cmd_app_list(args: argparse.Namespace, settings: Settings, *, run_async: RunAsync) -> int:
    from handlers.identity import apps

    async def run(core: Any) -> int:
        listed = (await apps.list_apps(core, None))["apps"]
        if not listed:
            print("no apps")
        for app in listed:
            key = app["jwks_url"] or ("public key" if app["public_key"] else f"{app['hmac_secret_count']} HS secret(s)")
            print(f"{app['id']}  {app['name']}  iss={app['issuer']}  aud={app['audience']}  "
                  f"alg={','.join(app['algorithms'])}  roles={','.join(app['roles'])}  key={key}")
        return 0

    return run_async(run, settings)


def add_commands(sub: Any, run_async: RunAsync) -> Any:
    """Add `app create` and `app list` to the `studyhall` parser's subcommands; returns
    `app`'s subcommands (for `app key`, server/platform_cli.py)."""
    app = sub.add_parser("app", help="platforms that sign identity tokens for their users (docs/integration.md)")
    app_sub = app.add_subparsers(dest="app_command", required=True)
    create = app_sub.add_parser("create", help="register a platform; prints the app id (and a generated secret)")
    create.add_argument("--name", required=True)
    key = create.add_mutually_exclusive_group()
    key.add_argument("--hs256-secret", action="append",
                     help="a shared secret of 32+ bytes (repeat while rotating); none given: one is generated")
    key.add_argument("--public-key-file", help="PEM public key (RSA, EC or Ed25519) for RS256/ES256/EdDSA tokens")
    key.add_argument("--jwks-url", help="https URL of the platform's JWKS")
    create.add_argument("--issuer", required=True, help="the `iss` the platform puts in its tokens")
    create.add_argument("--audience", required=True, help="the `aud` the platform puts in its tokens")
    create.add_argument("--algorithms", help="allowlist, comma-separated (default: from the key)")
    create.add_argument("--roles", default="student", help="roles the app may grant: student,mentor,agent")
    create.add_argument("--origin", action="append", help="an origin the widget may be embedded on (repeat)")
    create.add_argument("--require-identity", action="store_true", help="widgets of this app need a signed identity")
    create.set_defaults(func=partial(cmd_app_create, run_async=run_async))
    app_sub.add_parser("list", help="list apps (never their secrets)").set_defaults(
        func=partial(cmd_app_list, run_async=run_async))
    return app_sub
