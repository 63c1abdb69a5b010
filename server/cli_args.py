"""Argument types shared by the `studyhall` subcommands (server/cli.py and the `app`,
`app key` and `webhook` commands beside it), so each is parsed and refused one way."""

from __future__ import annotations

import argparse
from uuid import UUID


def uuid_arg(raw: str) -> UUID:
    """An id argument (`type=uuid_arg`); argparse prints the refusal and exits with 2."""
    try:
        return UUID(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an id (a UUID)") from None


def csv_list(raw: str | None) -> list[str]:
    """A comma-separated option as its items, trimmed, empty ones dropped (`a, b,,c`)."""
    return [item.strip() for item in (raw or "").split(",") if item.strip()]
