"""Webhooks: signed HTTP callbacks to the platforms that embed Studyhall (docs/webhooks.md).

- `outbox`: which events anyone subscribes to (cached per instance) and `emit`, called in
  the transaction that makes a change;
- `targets`: the SSRF guard (at creation, and at delivery after DNS resolution);
- `endpoints`: the admin actions (create, list, delete, enable, deliveries, redeliver);
- `delivery`: the loop that claims due deliveries and sends them;
- `sender`: one attempt, signed, with what can be done once per endpoint done once;
- `pacing`: delivery yields to a saturated message pipeline, down to a floor rate.
"""

from __future__ import annotations

EVENTS = (
    "message.created",
    "conversation.created",
    "tutor.escalated",
    "ticket.created",
    "ticket.claimed",
    "ticket.transferred",
    "ticket.resolved",
    "ticket.sla_breached",
    "live_session.started",
    "live_session.ended",
    "user.created",
)
