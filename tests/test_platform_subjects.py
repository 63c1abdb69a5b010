"""A platform speaks for its users two ways, a signed identity token and an API key's
upsert, and both go through one mapping (handlers/identity/subjects.py): either one makes
the user the other finds, the last one's name and role win, and what one leaves out
(email, avatar, courses) keeps what the other stored. Real server and PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

from tests.client import Api
from tests.identity_platform import api_key, hs256_platform, sign_in


async def stored(db: Any, user_id: str) -> dict[str, Any]:
    async with db.connection() as conn:
        row = await conn.fetchrow(
            "SELECT u.name, u.role, i.email, i.avatar_url, i.courses FROM identities i JOIN users u ON u.id = i.user_id "
            "WHERE u.id = $1", uuid.UUID(user_id))
    return dict(row)


async def test_tokens_and_upserts_update_one_user_keeping_what_the_other_said(api: Api, db: Any) -> None:
    admin = await api.staff(db, "admin")
    platform = await hs256_platform(api, admin, roles=["student", "mentor"])
    backend = await api_key(api, admin, platform.app_id, ["users:write"])

    status, body = await sign_in(api, platform.sign(sub="s-1", name="Ada", role="mentor", email="ada@p.example",
                                                    avatar_url="https://cdn.example/a.png", courses=["bio-101"]))
    assert status == 200, body
    user_id = body["user"]["id"]
    assert await stored(db, user_id) == {"name": "Ada", "role": "mentor", "email": "ada@p.example",
                                         "avatar_url": "https://cdn.example/a.png", "courses": ["bio-101"]}

    # The upsert finds the token's user; it says only the role and a new email.
    status, body = await backend.call("PUT", "/users/s-1", json={"role": "student", "email": "ada@new.example"})
    assert status == 200 and body["created"] is False and body["user"]["id"] == user_id, body
    assert body["user"] == {"id": user_id, "name": "Ada", "role": "student"}
    assert await stored(db, user_id) == {"name": "Ada", "role": "student", "email": "ada@new.example",
                                         "avatar_url": "https://cdn.example/a.png", "courses": ["bio-101"]}

    # A token that leaves email, avatar and courses out keeps them; its name and role win.
    status, body = await sign_in(api, platform.sign(sub="s-1", name="Ada L", role="mentor"))
    assert status == 200 and body["user"] == {"id": user_id, "name": "Ada L", "role": "mentor"}, body
    assert await stored(db, user_id) == {"name": "Ada L", "role": "mentor", "email": "ada@new.example",
                                         "avatar_url": "https://cdn.example/a.png", "courses": ["bio-101"]}

    # The upsert makes a user the token then finds; a new user without a name is "User".
    status, made = await backend.call("PUT", "/users/s-2", json={})
    assert status == 201 and made["created"] is True and made["user"]["name"] == "User", made
    status, body = await sign_in(api, platform.sign(sub="s-2"))
    assert status == 200 and body["user"]["id"] == made["user"]["id"] and body["user"]["name"] == "User", body
    async with db.connection() as conn:
        made_users = await conn.fetchval("SELECT count(*) FROM identities WHERE app_id = $1",
                                         uuid.UUID(platform.app_id))
    assert made_users == 2
