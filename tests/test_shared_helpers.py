"""The server/ helpers that several routes and commands share, one of each, and what
every caller gets from them: the bearer token (session routes, the platform API, /metrics)
read the same way, a sub that cannot exist refused as an unknown one on every platform
route, and the commands' id and comma-separated arguments parsed and refused one way.
Real servers over HTTP; the commands through their real parser."""

from __future__ import annotations

from typing import Any

import pytest

from server.cli import build_parser
from server.cli_args import csv_list
from tests.client import Api
from tests.identity_platform import api_key, hs256_platform

METRICS_TOKEN = "s3cret-metrics-token"


async def test_one_bearer_reading_for_sessions_keys_and_metrics(start_instance: Any, api: Api, db: Any) -> None:
    admin = await api.staff(db, "admin")
    platform = await hs256_platform(api, admin)
    backend = await api_key(api, admin, platform.app_id, ["conversations:read"])
    metrics = await start_instance(http__metrics_allow="10.0.0.0/8", http__metrics_token=METRICS_TOKEN)

    async def get(url: str, path: str, authorization: str | None) -> tuple[int, Any]:
        headers = {} if authorization is None else {"Authorization": authorization}
        async with api.session.get(url + path, headers=headers) as resp:
            return resp.status, await resp.text()

    for token, path, url in ((admin.token, "/api/me", api.url), (backend.secret, "/api/platform/conversations", api.url),
                             (METRICS_TOKEN, "/metrics", metrics.url)):
        # The scheme in any case, spaces around the token: the same token.
        for header in (f"Bearer {token}", f"bearer {token}", f"BEARER   {token}  "):
            status, body = await get(url, path, header)
            assert status == 200, (path, header, body)
        # No token, another scheme, the token alone, a non-ASCII header: refused as the route refuses.
        refused = 404 if path == "/metrics" else 401
        for header in (None, f"Basic {token}", token, "Bearer", f"Bearer {token}é"):
            status, body = await get(url, path, header)
            assert status == refused, (path, header, status, body)


async def test_a_sub_that_cannot_exist_is_not_found_on_every_platform_route(api: Api, db: Any) -> None:
    admin = await api.staff(db, "admin")
    platform = await hs256_platform(api, admin)
    backend = await api_key(api, admin, platform.app_id, ["users:write"])
    too_long = "s" * 256
    for method, path, body in (("PUT", f"/users/{too_long}", {}), ("POST", f"/users/{too_long}/deactivate", None),
                               ("POST", f"/users/{too_long}/link-guest", {"guest_token": "x"})):
        status, answer = await backend.call(method, path, json=body)
        assert status == 404 and answer["error"]["code"] == "not_found", (path, answer)
    status, answer = await backend.call("POST", "/users/nobody/link-guest", json={"guest_token": "x"})
    assert status == 404 and answer["error"]["message"] == "This app has no user with this sub.", answer


@pytest.mark.unit
@pytest.mark.parametrize("argv", [
    ["app", "key", "list", "not-an-id"],
    ["app", "key", "revoke", "6f7c1d2e-4b1a-5c53-9a7e-2f0c8e1d9b44", "nope"],
    ["webhook", "list", "--app", "nope"],
    ["webhook", "create", "--app", "nope", "--url", "https://x.example", "--events", "user.created"],
])
def test_every_command_refuses_a_malformed_id_alike(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert "is not an id (a UUID)" in capsys.readouterr().err


@pytest.mark.unit
def test_comma_separated_arguments() -> None:
    assert csv_list(" users:write, ,documents:write,") == ["users:write", "documents:write"]
    assert csv_list(None) == [] and csv_list("") == []
    args = build_parser().parse_args(["app", "key", "create", "6f7c1d2e-4b1a-5c53-9a7e-2f0c8e1d9b44",
                                      "--scopes", "users:write, messages:write"])
    assert str(args.app_id) == "6f7c1d2e-4b1a-5c53-9a7e-2f0c8e1d9b44"
    assert csv_list(args.scopes) == ["users:write", "messages:write"]
