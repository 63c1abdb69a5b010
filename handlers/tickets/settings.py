"""The tickets feature's settings section (`Settings.tickets`), filled in by handlers/settings.py."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TicketSettings:
    """Support tickets: auto-assignment and the SLA watcher."""

    auto_assign: bool = False
    # Open tickets one agent may hold before auto-assignment passes them by.
    agent_limit: int = 5
    sla_check_seconds: float = 30.0
