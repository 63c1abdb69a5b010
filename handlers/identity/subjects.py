"""A platform's user: (app, sub) → exactly one Studyhall user, made on first sight and
updated from what the platform says after. One function for both ways a platform speaks
for its users, so they cannot drift apart: a signed identity token at sign-in
(handlers/identity/signin.py) and an API key's upsert (handlers/platform/operations.py).

The platform is the source of truth for its users: its name and role replace the stored
ones (a role an admin set by hand included). What it leaves out (None) keeps the stored
value; a new user without a name is "User". The email is kept on the identity row only,
never used to find or link an existing account (no password, no email in `users`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from handlers.core import Core
from handlers.identity.verify import IdentityRefused
from handlers.webhooks import outbox as webhooks
from storage import identities, users
from storage.records import User

DEFAULT_NAME = "User"
DEACTIVATED = "This account is deactivated."


@dataclass(frozen=True)
class Profile:
    """What the platform says of its user; None: it did not say (keep what is stored)."""

    role: str
    name: str | None = None
    email: str | None = None
    avatar_url: str | None = None
    courses: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Subject:
    """The user a platform subject maps to, after this call's changes."""

    user: User
    created: bool
    role_changed: bool  # open sockets carry the old role: the caller closes them after commit
    deactivated: bool


async def map_subject(
    core: Core, conn: Any, app_id: UUID, sub: str, profile: Profile, *, via: str, refuse_deactivated: bool = False,
) -> Subject:
    """Make or update the user for (app, sub), inside the caller's transaction and under the
    subject's lock (two first sightings at once make one user). A new user's `user.created`
    is queued in the same transaction, with `via` saying how it came. `refuse_deactivated`:
    a deactivated user is refused (`IdentityRefused`) before anything is written."""
    await identities.lock_subject(conn, app_id, sub)
    known = await identities.get(conn, app_id, sub)
    if known is None:
        row = await users.insert_user(conn, email=None, name=profile.name or DEFAULT_NAME, role=profile.role,
                                      password_hash=None)
        assert row is not None  # no email: nothing to conflict with
        await identities.insert(conn, app_id=app_id, subject=sub, user_id=row.id, email=profile.email,
                                avatar_url=profile.avatar_url, courses=list(profile.courses or ()))
        await webhooks.emit(core, conn, "user.created", webhooks.user_data(row, via, app_id=app_id, subject=sub))
        return Subject(row, created=True, role_changed=False, deactivated=False)
    deactivated = known.deactivated_at is not None  # the lock keeps set_active out until commit
    if deactivated and refuse_deactivated:
        raise IdentityRefused("deactivated user", DEACTIVATED, app_id)
    name = profile.name or known.name
    email = profile.email if profile.email is not None else known.email
    avatar = profile.avatar_url if profile.avatar_url is not None else known.avatar_url
    courses = profile.courses if profile.courses is not None else known.courses
    if (name, profile.role) != (known.name, known.role):
        await identities.update_user(conn, known.user_id, name=name, role=profile.role)
    if (email, avatar, courses) != (known.email, known.avatar_url, known.courses):
        await identities.update_profile(conn, app_id=app_id, subject=sub, email=email, avatar_url=avatar,
                                        courses=list(courses))
    row = await users.get_user(conn, known.user_id)
    assert row is not None
    return Subject(row, created=False, role_changed=profile.role != known.role, deactivated=deactivated)
