"""Per-user limits on what costs money or people's time: tutor questions (each one is a
paid model call), new tutor sessions, and escalations to a person (each one lands in every
agent's queue); plus a deployment-wide cap on tickets opened for guests, so a swarm of
fresh guest accounts cannot flood the agents.

Guests get stricter limits than signed-in users: a guest account costs nothing to make.
The counters are the shared `core.limiter` (Redis when configured, so a limit is one limit
across instances). A refusal is `rate_limited` with `retry_after_ms`.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from handlers.ratelimit import RateLimiter, Rule

QUESTION_MESSAGE = "Too many questions to the tutor in a short time; please wait a moment."
SESSION_MESSAGE = "Too many new tutor conversations; please continue an existing one or wait a moment."
ESCALATION_MESSAGE = "Too many requests for a person; please wait before asking again."
GUEST_TICKETS_MESSAGE = "Our support team is receiving many requests right now; please try again in a few minutes."


def parse_rates(spec: str, setting: str) -> tuple[tuple[int, int], ...]:
    """`"10/60,150/3600"` → ((10, 60), (150, 3600)); `"0"` or `""` → () (off)."""
    spec = (spec or "").strip()
    if spec in ("", "0"):
        return ()
    try:
        pairs = tuple((int(a), int(b)) for a, b in (part.strip().split("/") for part in spec.split(",")))
    except ValueError:
        raise ValueError(f"{setting} must look like 10/60,150/3600 (count/seconds) or 0, got {spec!r}") from None
    if any(count < 0 or seconds <= 0 for count, seconds in pairs):
        raise ValueError(f"{setting}: counts must be >= 0 and windows > 0 seconds, got {spec!r}")
    return tuple(sorted((p for p in pairs if p[0] > 0), key=lambda p: p[1]))


def spec_rules(name: str, spec: str, setting: str, message: str) -> tuple[Rule, ...]:
    return tuple(Rule(f"{name}-{seconds}", count, seconds, message) for count, seconds in parse_rates(spec, setting))


@dataclass(frozen=True)
class RoleRules:
    """One action's rules for signed-in users and for guests."""

    user: tuple[Rule, ...]
    guest: tuple[Rule, ...]

    def for_role(self, role: str) -> tuple[Rule, ...]:
        return self.guest if role == "guest" else self.user


@dataclass(frozen=True)
class TutorLimits:
    """The tutor's limits, built once at start from `settings.tutor` (server/factories.py)."""

    questions: RoleRules
    sessions: RoleRules
    escalations: RoleRules
    guest_tickets: tuple[Rule, ...]


async def _hit_all(limiter: RateLimiter, rules: tuple[Rule, ...], key: str) -> None:
    """Count one hit on each rule, shortest window first; the first one over refuses."""
    for rule in rules:
        await limiter.hit(rule, key)


class TutorGate:
    """`core.tutor_limits` (the `UsageLimits` port): the checks, each raising `rate_limited`."""

    def __init__(self, limiter: RateLimiter, limits: TutorLimits) -> None:
        self.limiter = limiter
        self.limits = limits

    async def question(self, user_id: UUID, role: str) -> None:
        """Before a question to the AI is committed: refused means not stored, not answered."""
        await _hit_all(self.limiter, self.limits.questions.for_role(role), str(user_id))

    async def session(self, user_id: UUID, role: str) -> None:
        """Before a new tutor conversation is created."""
        await _hit_all(self.limiter, self.limits.sessions.for_role(role), str(user_id))

    async def escalation(self, user_id: UUID, role: str, *, urgent: bool) -> None:
        """Before a new ticket is opened for the user (any path). A safety signal (urgent)
        skips the user's own limit, so a student in danger is never told to wait because of
        earlier requests; tickets for guests always count against the deployment-wide cap."""
        if not urgent:
            await _hit_all(self.limiter, self.limits.escalations.for_role(role), str(user_id))
        if role == "guest":
            await _hit_all(self.limiter, self.limits.guest_tickets, "all")

