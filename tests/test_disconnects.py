"""Which open sockets close after a change to a user's sign-in (handlers/disconnects.py):
a logout closes that token's sockets only; a role change closes every socket of the user
(their tokens stay good, they reconnect with the new role); a guest carried over to a
signed-in user, by the identity token's claim or by the platform's link call, loses its
sockets with its tokens. Everyone else's stay open. Real server and Socket.IO clients."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.client import Api, Socket, User
from tests.identity_platform import api_key, hs256_platform, sign_in


async def closed(sock: Socket, timeout: float = 5) -> bool:
    for _ in range(int(timeout / 0.05)):
        if not sock.client.connected:
            return True
        await asyncio.sleep(0.05)
    return False


async def second_session(api: Api, user: User) -> User:
    status, body = await api.request("POST", "/api/auth/login", json={"email": user.email, "password": "correct horse 1"})
    assert status == 200, body
    return User(user.id, user.name, user.role, body["token"], user.email)


async def test_logout_closes_its_token_and_a_role_change_every_socket_of_the_user(api: Api, db: Any) -> None:
    admin = await api.staff(db, "admin")
    user = await api.register("Ria")
    other_session = await second_session(api, user)
    bystander = await api.register("By")
    first, second, third = await api.socket(user), await api.socket(other_session), await api.socket(other_session)
    watching = await api.socket(bystander)

    status, _ = await api.request("POST", "/api/auth/logout", user)
    assert status == 204
    assert await closed(first)
    await asyncio.sleep(0.3)
    assert second.client.connected and third.client.connected and watching.client.connected

    status, body = await api.request("PUT", f"/api/users/{user.id}/role", admin, json={"role": "mentor"})
    assert status == 200, body
    assert await closed(second) and await closed(third)
    await asyncio.sleep(0.3)
    assert watching.client.connected
    # The session lives on with the new role: the client reconnects with it.
    again = await api.socket(other_session)
    status, me = await api.request("GET", "/api/me", other_session)
    assert status == 200 and me["user"]["role"] == "mentor" and again.client.connected
    await api.close_sockets()


async def test_a_guest_carried_over_loses_its_sockets(api: Api, db: Any) -> None:
    admin = await api.staff(db, "admin")
    platform = await hs256_platform(api, admin)
    backend = await api_key(api, admin, platform.app_id, ["users:write"])
    by_claim, by_link, stays = await api.guest("A"), await api.guest("B"), await api.guest("C")
    claim_sock, link_sock, stays_sock = await api.socket(by_claim), await api.socket(by_link), await api.socket(stays)

    status, body = await sign_in(api, platform.sign(sub="g-1", guest_token=by_claim.token))
    assert status == 200, body
    assert await closed(claim_sock)
    assert link_sock.client.connected and stays_sock.client.connected

    status, body = await sign_in(api, platform.sign(sub="g-2"))
    assert status == 200, body
    status, body = await backend.call("POST", "/users/g-2/link-guest", json={"guest_token": by_link.token})
    assert status == 200, body
    assert await closed(link_sock)
    await asyncio.sleep(0.3)
    assert stays_sock.client.connected
    await api.close_sockets()
