"""Per-client-address limits on the public sign-in routes: guest, register, login.

These routes need no account, and each call costs a database write (guest, register) or
an argon2 hash (~50 ms of CPU: register, login), so without a limit one client can fill
the users table or the CPU. Each route has a 10-minute window sized for a classroom behind
one school NAT, and guest and register a daily cap that keeps a script from making
thousands of accounts (numbers and reasoning: docs/security.md). Counters live in the
app's RateLimiter, so with Redis they hold across instances. A limit of 0 is off.
"""

from __future__ import annotations

from handlers.core import Core
from handlers.ratelimit import Rule
from handlers.settings import AuthSettings

TEN_MINUTES = 600
DAY = 86_400


def rules(settings: AuthSettings, route: str) -> tuple[Rule, ...]:
    """The rules for `route` ("guest", "register" or "login") under these settings (`settings.auth`)."""
    if route == "guest":
        message = "Too many guest sessions from your network; try again later."
        return (
            Rule("signin-guest-10min", settings.guest_limit_10min, TEN_MINUTES, message),
            Rule("signin-guest-day", settings.guest_limit_day, DAY, message),
        )
    if route == "register":
        message = "Too many sign-ups from your network; try again later."
        return (
            Rule("signin-register-10min", settings.register_limit_10min, TEN_MINUTES, message),
            Rule("signin-register-day", settings.register_limit_day, DAY, message),
        )
    if route == "login":
        return (Rule("signin-login-10min", settings.login_limit_10min, TEN_MINUTES,
                     "Too many sign-in attempts from your network; try again later."),)
    raise ValueError(f"unknown sign-in route {route!r}")


async def check(core: Core, route: str, ip: str | None) -> None:
    """Count one call of `route` from `ip`; raise `rate_limited` (with retry_after_ms) if over."""
    for rule in rules(core.settings.auth, route):
        await core.limiter.hit(rule, ip or "unknown")
