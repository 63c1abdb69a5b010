"""A user the platform API deactivated: an upsert says so (and still updates them), they
host no new live session, identity sign-in refuses them, and reactivation undoes it all.
The deactivation comes with the identity look-up itself (`identities.get` joins it): no
sign-in, upsert or session asks for it again. Real server and PostgreSQL."""

from __future__ import annotations

from typing import Any

from handlers.identity import signin
from server.identity import IDENTITY
from server.keys import CORE
from tests.client import Api, Instance
from tests.identity_platform import api_key, hs256_platform, sign_in
from tests.statements import counting_core

SCOPES = ["users:write", "sessions:write"]


def refused(status: int, body: dict[str, Any], http: int, code: str) -> None:
    assert status == http and body["error"]["code"] == code, (status, body)


async def test_a_deactivated_user_is_reported_refused_and_reactivated(api: Api, db: Any) -> None:
    admin = await api.staff(db, "admin")
    platform = await hs256_platform(api, admin, roles=["student", "mentor"])
    backend = await api_key(api, admin, platform.app_id, SCOPES)
    status, body = await backend.call("PUT", "/users/mo", json={"name": "Mo", "role": "mentor"})
    assert status == 201 and body["deactivated"] is False, body

    status, body = await backend.call("POST", "/users/mo/deactivate")
    assert status == 200 and body["deactivated"] is True, body
    status, body = await backend.call("PUT", "/users/mo", json={"name": "Mo B", "role": "mentor"})
    assert status == 200 and body["deactivated"] is True and body["user"]["name"] == "Mo B", body
    status, body = await backend.call("POST", "/sessions", json={"host_sub": "mo", "title": "Office hours"})
    refused(status, body, 409, "conflict")
    status, body = await sign_in(api, platform.sign(sub="mo", name="Mo B", role="mentor"))
    refused(status, body, 401, "unauthorized")
    assert body["error"]["message"] == "This account is deactivated."

    status, body = await backend.call("POST", "/users/mo/reactivate")
    assert status == 200 and body["deactivated"] is False, body
    status, body = await backend.call("PUT", "/users/mo", json={"name": "Mo B", "role": "mentor"})
    assert status == 200 and body["deactivated"] is False, body
    status, body = await backend.call("POST", "/sessions", json={"host_sub": "mo", "title": "Office hours"})
    assert status == 201, body
    status, body = await sign_in(api, platform.sign(sub="mo", name="Mo B", role="mentor"))
    assert status == 200, body


async def test_sign_in_reads_the_deactivation_with_the_identity(api: Api, server: Instance, db: Any) -> None:
    admin = await api.staff(db, "admin")
    platform = await hs256_platform(api, admin)
    status, body = await sign_in(api, platform.sign(sub="known", name="Kay"))
    assert status == 200, body
    core = server.app[CORE]
    async with counting_core(core) as (counted, statements):
        result = await signin.sign_in(counted, server.app[IDENTITY], token=platform.sign(sub="known", name="Kay"),
                                      ip="127.0.0.1")
        sent = await statements.settled()
    assert str(result["user"]["id"]) == body["user"]["id"]
    reads = [s for s in sent if "deactivated_at" in s]
    assert len(reads) == 1 and "JOIN users" in reads[0], reads
