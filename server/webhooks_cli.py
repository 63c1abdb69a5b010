"""`studyhall webhook ...`: endpoints, their deliveries, redelivery (docs/webhooks.md).

The same handlers as the admin routes (handlers/webhooks/endpoints.py); a running server
hears of a change through the database's notification.
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from handlers.settings import Settings
from server.cli_args import csv_list, uuid_arg
from server.identity_cli import RunAsync
from server.identity_cli import run_reporting as _run


def _endpoint_line(e: dict[str, Any]) -> str:
    state = "enabled" if e["enabled"] else f"DISABLED ({e['disabled_reason']})"
    return f"{e['id']}  app={e['app_id']}  {e['url']}  events={','.join(e['events'])}  {state}"


def cmd_create(args: argparse.Namespace, settings: Settings, *, run_async: RunAsync) -> int:
    from handlers.webhooks import endpoints

    events = csv_list(args.events)

    async def action(core: Any) -> int:
        result = await endpoints.create(core, None, app_id=args.app, url=args.url, events=events,
                                        description=args.description or "")
        print(f"created endpoint {_endpoint_line(result['endpoint'])}")
        print(f"signing secret (shown once; give it to the receiver): {result['secret']}")
        return 0

    return _run(settings, action, run_async)


def cmd_list(args: argparse.Namespace, settings: Settings, *, run_async: RunAsync) -> int:
    from handlers.webhooks import endpoints

    async def action(core: Any) -> int:
        listed = (await endpoints.list_endpoints(core, None, args.app))["endpoints"]
        print("\n".join(_endpoint_line(e) for e in listed) if listed else "no webhook endpoints")
        return 0

    return _run(settings, action, run_async)


def cmd_delete(args: argparse.Namespace, settings: Settings, *, run_async: RunAsync) -> int:
    from handlers.webhooks import endpoints

    async def action(core: Any) -> int:
        await endpoints.delete(core, None, args.endpoint)
        print(f"deleted endpoint {args.endpoint}")
        return 0

    return _run(settings, action, run_async)


def cmd_enable(args: argparse.Namespace, settings: Settings, *, run_async: RunAsync) -> int:
    from handlers.webhooks import endpoints

    async def action(core: Any) -> int:
        result = await endpoints.set_enabled(core, None, args.endpoint, args.webhook_command == "enable")
        print(_endpoint_line(result["endpoint"]))
        return 0

    return _run(settings, action, run_async)


def cmd_deliveries(args: argparse.Namespace, settings: Settings, *, run_async: RunAsync) -> int:
    from handlers.webhooks import endpoints

    async def action(core: Any) -> int:
        rows = (await endpoints.deliveries(core, None, args.endpoint, status=args.status, limit=args.limit))["deliveries"]
        if not rows:
            print("no deliveries")
        for d in rows:
            latency = f"{d['last_latency_ms']:.0f} ms" if d["last_latency_ms"] is not None else "-"
            print(f"{d['id']}  {d['webhook_id']}  {d['event_type']}  {d['status']}  attempts={d['attempts']}  "
                  f"code={d['last_status_code'] or '-'}  latency={latency}  created={d['created_at']:%Y-%m-%d %H:%M:%S}"
                  + (f"  error={d['last_error']}" if d["last_error"] and d["status"] != "succeeded" else ""))
        return 0

    return _run(settings, action, run_async)


def cmd_redeliver(args: argparse.Namespace, settings: Settings, *, run_async: RunAsync) -> int:
    from handlers.webhooks import endpoints

    async def action(core: Any) -> int:
        d = (await endpoints.redeliver(core, None, args.delivery))["delivery"]
        print(f"delivery {d['id']} ({d['webhook_id']}) queued again")
        return 0

    return _run(settings, action, run_async)


def add_commands(sub: Any, run_async: RunAsync) -> None:
    """Add `webhook create|list|delete|enable|disable|deliveries|redeliver`; server/cli.py
    hands in its runner, so this module does not import it back (tests/test_import_graph.py)."""
    hook = sub.add_parser("webhook", help="webhook endpoints of apps and their deliveries (docs/webhooks.md)")
    hook_sub = hook.add_subparsers(dest="webhook_command", required=True)
    create = hook_sub.add_parser("create", help="add an endpoint; prints its signing secret once")
    create.add_argument("--app", required=True, type=uuid_arg, help="the app id (studyhall app list)")
    create.add_argument("--url", required=True, help="http(s) URL that receives the POSTs")
    create.add_argument("--events", required=True, help="comma-separated event types, e.g. message.created,ticket.created")
    create.add_argument("--description")
    create.set_defaults(func=partial(cmd_create, run_async=run_async))
    listing = hook_sub.add_parser("list", help="list endpoints (with the reason a disabled one was disabled)")
    listing.add_argument("--app", type=uuid_arg)
    listing.set_defaults(func=partial(cmd_list, run_async=run_async))
    for name, func, what in (("delete", cmd_delete, "delete an endpoint and its deliveries"),
                             ("enable", cmd_enable, "enable an endpoint (its pending deliveries go out)"),
                             ("disable", cmd_enable, "disable an endpoint")):
        p = hook_sub.add_parser(name, help=what)
        p.add_argument("endpoint", type=uuid_arg)
        p.set_defaults(func=partial(func, run_async=run_async))
    deliveries = hook_sub.add_parser("deliveries", help="recent deliveries: status, response code, latency, attempts")
    deliveries.add_argument("endpoint", type=uuid_arg)
    deliveries.add_argument("--status", choices=["pending", "succeeded", "failed"])
    deliveries.add_argument("--limit", type=int, default=20)
    deliveries.set_defaults(func=partial(cmd_deliveries, run_async=run_async))
    redeliver = hook_sub.add_parser("redeliver", help="send a delivery again under the same webhook-id")
    redeliver.add_argument("delivery", type=uuid_arg)
    redeliver.set_defaults(func=partial(cmd_redeliver, run_async=run_async))
