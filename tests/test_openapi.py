"""The OpenAPI description (server/openapi.py): it covers every route, it is built from the
models that validate requests, it is served with a reference page, and the running server
keeps to it: schemathesis sends generated requests (valid and invalid) to every operation,
signed in as an admin (or with an API key for /api/platform/), and checks that no answer
is a 5xx and that every status code and body is the documented one."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import ValidationError
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import GenerationConfig, ProjectConfig, ProjectsConfig, SchemathesisConfig

from handlers.settings import Settings
from server import platform_api, rooms, routes_accounts
from server.apidoc import api
from server.app import create_app
from server.keys import CORE
from server.openapi import UndocumentedRoute, build, documented_routes, excluded_reason
from storage import users
from storage.embedded import free_port
from tests.client import Api, Socket
from tests.services import Postgres

ALL_SCOPES = ["users:write", "documents:write", "sessions:write", "tickets:read", "tickets:write",
              "conversations:read", "messages:write"]
# Per operation and mode; a deeper one-off search: OPENAPI_MAX_EXAMPLES=200 pytest tests/test_openapi.py
MAX_EXAMPLES = int(os.environ.get("OPENAPI_MAX_EXAMPLES", "12"))
SEED = 20261201


def offline_settings(**overrides: Any) -> Settings:
    """Settings for an app that is built but never started (no database is opened)."""
    return Settings().with_(database__url="postgresql://unused@127.0.0.1:1/unused",
                            database__data_dir=Path(tempfile.gettempdir()) / "studyhall-test-unused", **overrides)


# --- the description covers every route, from the validating models -------------------------

def test_every_route_is_described_or_excluded_with_a_reason() -> None:
    app = create_app(offline_settings())
    description = build(app)
    paths = description["paths"]
    for route in app.router.routes():
        method, path = route.method.upper(), route.resource.canonical if route.resource else ""
        if excluded_reason(method, path) is not None:
            continue
        assert path in paths and method.lower() in paths[path], f"{method} {path} is not described"
        operation = paths[path][method.lower()]
        assert operation["responses"], f"{method} {path} has no responses"
        for status, response in operation["responses"].items():
            if int(status) >= 400 and (path, status) != ("/api/health", "503"):  # health: 503 with its own body
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    # The Socket.IO endpoint is one of the exclusions, and named as such.
    assert any(r.resource and r.resource.canonical.startswith("/socket.io") for r in app.router.routes())
    assert any(e["path"].startswith("/socket.io/") for e in description["x-excluded-routes"])


def test_a_route_without_a_declaration_fails_the_build() -> None:
    app = create_app(offline_settings())

    async def undeclared(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/api/undeclared", undeclared)
    with pytest.raises(UndocumentedRoute, match="GET /api/undeclared"):
        build(app)
    api("Now declared", ok=(204, None), auth="none", tag="test")(undeclared)
    assert "/api/undeclared" in build(app)["paths"]


def test_bodies_and_queries_come_from_the_code_that_checks_them() -> None:
    description = build(create_app(offline_settings()))
    schemas, paths = description["components"]["schemas"], description["paths"]
    # The request body is the model the handler validates with, its constraints included.
    create = paths["/api/live-sessions"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/CreateSession"}
    assert schemas["CreateSession"] == rooms.CreateSession.model_json_schema(
        ref_template="#/components/schemas/{model}", mode="validation")
    assert schemas["CreateSession"]["properties"]["max_participants"]["maximum"] == 10_000
    assert schemas["RegisterBody"]["properties"]["password"]["minLength"] == 8
    assert schemas["RegisterBody"] == routes_accounts.RegisterBody.model_json_schema(
        ref_template="#/components/schemas/{model}", mode="validation")
    # So is every route's: the component is the model's own JSON Schema.
    app = create_app(offline_settings())
    for method, path, doc in documented_routes(app):
        if doc.body is None:
            continue
        ref = paths[path][method.lower()]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        own = doc.body.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
        own.pop("$defs", None)
        assert schemas[ref.rsplit("/", 1)[1]] == own, (method, path)
    # A query parameter is the object the handler reads it through.
    listing = {p["name"]: p for p in paths["/api/live-sessions"]["get"]["parameters"]}
    assert listing["limit"]["schema"] == rooms.LIMIT.schema() == {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}
    assert listing["host_id"]["schema"]["format"] == "uuid"
    # Security: the session bearer token, and the platform API key.
    schemes = description["components"]["securitySchemes"]
    assert schemes["session"]["scheme"] == "bearer" and schemes["apiKey"]["bearerFormat"].startswith("sh_live_")
    assert paths["/api/platform/tickets"]["post"]["security"] == [{"apiKey": []}]
    assert paths["/api/me"]["get"]["security"] == [{"session": []}]
    assert paths["/api/auth/login"]["post"]["security"] == []
    # Errors are the protocol's error object, its codes from handlers/errors.py.
    assert "rate_limited" in schemas["ErrorDetail"]["properties"]["code"]["enum"]


@pytest.mark.parametrize("model", [rooms.CreateSession, platform_api.SessionBody])
def test_a_time_is_an_iso_string_never_a_number(model: Any) -> None:
    """Found by schemathesis: pydantic took `scheduled_start_time: 1.1` as 1970-01-01T00:00:01.1Z
    where the description says an ISO-8601 string."""
    base = {"title": "Office hours", "host_sub": "p-1", "max_participants": 5}
    assert model.model_validate({**base, "scheduled_start_time": "2030-01-01T10:00:00Z"}).scheduled_start_time.year == 2030
    for value in (1.1, 0, 1_900_000_000):
        with pytest.raises(ValidationError, match="ISO-8601"):
            model.model_validate({**base, "scheduled_start_time": value})


async def test_the_description_and_its_page_are_served(api: Api) -> None:
    status, description = await api.request("GET", "/api/openapi.json")
    assert status == 200 and description["openapi"] == "3.1.0"
    assert "/api/openapi.json" in description["paths"] and "/api/docs" in description["paths"]
    async with api.session.get(api.url + "/api/docs") as resp:
        page = await resp.text()
        assert resp.status == 200 and resp.content_type == "text/html"
        policy = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert '<script type="module" src="/static/js/api-docs.js"></script>' in page
    assert "<style" not in page and " style=" not in page and "onclick" not in page  # nothing inline (CSP)
    async with api.session.get(api.url + "/static/js/api-docs.js") as resp:
        assert resp.status == 200 and "/api/openapi.json" in await resp.text()


async def test_an_undescribed_method_is_405_with_the_described_ones_in_allow(api: Api) -> None:
    """A method a path does not have is the protocol's error with status 405 and an
    `Allow` header (RFC 9110) naming the methods the description lists for it."""
    status, description = await api.request("GET", "/api/openapi.json")
    assert status == 200
    for path, methods in description["paths"].items():
        url = api.url + path.replace("{id}", str(uuid.uuid4())).replace("{key_id}", str(uuid.uuid4())) \
            .replace("{user_id}", str(uuid.uuid4())).replace("{sub}", "p-1")
        async with api.session.patch(url) as resp:
            body = await resp.json()
            assert resp.status == 405 and body["error"]["code"] == "bad_request", (path, resp.status, body)
            allowed = {m.strip().lower() for m in resp.headers.get("Allow", "").split(",") if m.strip()}
        assert set(methods) <= allowed, (path, set(methods), allowed)


# --- schemathesis against a running server ---------------------------------------------------

class LiveServer:
    """The app on a loopback port, in its own thread and event loop: schemathesis calls it
    with blocking requests from the test's thread."""

    def __init__(self, postgres: Postgres) -> None:
        self.postgres = postgres
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="openapi-live-server", daemon=True)
        self.runner: web.AppRunner | None = None
        self.database = ""
        self.url = ""

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def start(self) -> LiveServer:
        self.thread.start()
        self.database = self.run(self.postgres.create_database())
        port = free_port()
        settings = Settings().with_(
            database__url=self.postgres.url(self.database), http__port=port,
            database__data_dir=Path(tempfile.gettempdir()) / "studyhall-test-unused", log__json=False,
            auth__guest_limit_10min=100_000, auth__guest_limit_day=100_000, auth__register_limit_10min=100_000,
            auth__register_limit_day=100_000, auth__login_limit_10min=100_000,
        )
        self.app = create_app(settings)

        async def serve() -> web.AppRunner:
            runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=1.0)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            return runner

        self.runner = self.run(serve())
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self.runner is not None:
            self.run(self.runner.cleanup())
        if self.database:
            self.run(self.postgres.drop_database(self.database))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class Seeded:
    """An admin token, an API key with every scope, and a few objects, so that listings
    answer real data that the response schemas are checked against."""

    def __init__(self, live: LiveServer) -> None:
        self.live = live
        self.http = requests.Session()
        self.admin = self._token("/api/auth/register", {"email": f"admin-{uuid.uuid4().hex[:8]}@example.com",
                                                        "password": "correct horse 1", "name": "Admin"})
        admin_id = self.me(self.admin)
        live.run(self._make_admin(admin_id))
        app = self.post("/api/apps", {"name": "Platform", "issuer": "https://platform.example", "audience": "studyhall",
                                     "roles": ["student", "mentor"]})
        self.app_id = app["app"]["id"]
        self.api_key = self.post(f"/api/apps/{self.app_id}/keys", {"name": "backend", "scopes": ALL_SCOPES})["secret"]
        document = self.post("/api/documents", {"title": "Photosynthesis", "content": "Plants turn light into sugar."})
        session = self.post("/api/live-sessions", {"title": "Office hours", "max_participants": 5})["live_session"]
        self.post(f"/api/live-sessions/{session['id']}/start", {})
        mentor = self.post("/api/platform/users/p-1", {"name": "Ada", "role": "mentor"}, key=True, method="PUT")
        self.post("/api/favorites", {"user_id": mentor["user"]["id"]})
        self.post("/api/platform/sessions", {"host_sub": "p-1", "title": "Platform session"}, key=True)
        conversation_id, ticket_id = live.run(self._conversations(mentor["user"]["id"]))
        # Real ids for the path parameters of these routes (GET and POST): their success
        # bodies are checked too, not only their 404s.
        conversation = {"id": conversation_id}
        self.pinned: dict[str, dict[str, str]] = {
            "/api/documents/{id}": {"id": document["document"]["id"]},
            "/api/live-sessions/{id}": {"id": session["id"]},
            "/api/apps/{id}": {"id": self.app_id},
            "/api/apps/{id}/keys": {"id": self.app_id},
            "/api/tickets/{id}": {"id": ticket_id},
            "/api/conversations/{id}/messages": conversation,
            "/api/tutor/{id}/decisions": conversation,
            "/api/platform/conversations/{id}/messages": conversation,
            "/api/platform/conversations/{id}/tickets": conversation,
        }

    async def _conversations(self, member_id: str) -> tuple[str, str]:
        """A direct conversation of the admin and the app's user, with a message; and a
        ticket on a tutor conversation of the admin's."""
        sock = await Socket(self.live.url, self.admin).connect()
        try:
            direct = await sock.ok("conversation:create", {"kind": "direct", "member_ids": [member_id]})
            conversation_id = str(direct["conversation"]["id"])
            await sock.ok("message:send", {"conversation_id": conversation_id, "content": "hello", "client_id": "c1"})
            tutor = await sock.ok("tutor:start", {"title": "Fractions"})
            ticket = await sock.ok("ticket:create", {"conversation_id": tutor["conversation"]["id"], "reason": "a call"})
        finally:
            await sock.disconnect()
        return conversation_id, str(ticket["ticket"]["id"])

    async def _make_admin(self, user_id: str) -> None:
        async with self.live.app[CORE].db.transaction() as conn:
            await users.set_role(conn, uuid.UUID(user_id), "admin")

    def _token(self, path: str, body: dict[str, Any]) -> str:
        resp = self.http.post(self.live.url + path, json=body, timeout=10)
        assert resp.status_code in (200, 201), resp.text
        return str(resp.json()["token"])

    def me(self, token: str) -> str:
        resp = self.http.get(self.live.url + "/api/me", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["user"]["id"])

    def post(self, path: str, body: dict[str, Any], key: bool = False, method: str = "POST") -> Any:
        token = self.api_key if key else self.admin
        resp = self.http.request(method, self.live.url + path, json=body, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code in (200, 201), (path, resp.status_code, resp.text)
        return resp.json()

    def headers_for(self, operation: Any) -> dict[str, str]:
        """The credentials an operation documents: the API key, a throwaway guest's token
        for logout (which revokes it), else the admin's session."""
        security = operation.definition.raw.get("security") or []
        if {"apiKey": []} in security:
            return {"Authorization": f"Bearer {self.api_key}"}
        if operation.path == "/api/auth/logout":
            return {"Authorization": f"Bearer {self._token('/api/auth/guest', {})}"}
        return {"Authorization": f"Bearer {self.admin}"}


@pytest.fixture(scope="module")
def live(postgres: Postgres) -> Iterator[LiveServer]:
    server = LiveServer(postgres).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def seeded(live: LiveServer) -> Seeded:
    return Seeded(live)


@pytest.fixture(scope="module")
def served_description(live: LiveServer, seeded: Seeded) -> Any:
    """The description as the server serves it, loaded by schemathesis."""
    resp = requests.get(live.url + "/api/openapi.json", timeout=10)
    assert resp.status_code == 200
    config = SchemathesisConfig(seed=SEED, projects=ProjectsConfig(default=ProjectConfig(
        base_url=live.url,
        generation=GenerationConfig(max_examples=MAX_EXAMPLES, deterministic=True, with_security_parameters=False),
    )))
    return schemathesis.openapi.from_dict(resp.json(), config=config)


# negative_data_rejection: a request the description calls invalid is refused with a 4xx.
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance,
          negative_data_rejection]


def fuzz(operation: Any, mode: GenerationMode, seeded: Seeded, path_parameters: dict[str, str] | None = None) -> None:
    """MAX_EXAMPLES generated requests (derandomized: the same ones every run), each
    answer checked; hypothesis shrinks a failure to its smallest request."""

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink])
    def one(case: Any) -> None:
        case.call_and_validate(session=seeded.http, headers=seeded.headers_for(operation), checks=CHECKS, timeout=30)

    one()


@pytest.mark.slow
def test_the_server_keeps_to_its_description(served_description: Any, seeded: Seeded) -> None:
    """Every operation, valid and invalid requests: no 5xx, only documented statuses,
    bodies and content types. All operations run; the failures are reported together."""
    failures: list[str] = []
    operations = [result.ok() for result in served_description.get_all_operations()]
    assert len(operations) >= 50
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        runs: list[tuple[str, GenerationMode, dict[str, str] | None]] = [
            ("positive", GenerationMode.POSITIVE, None), ("negative", GenerationMode.NEGATIVE, None)]
        if operation.path in seeded.pinned and operation.method.upper() in ("GET", "POST"):
            runs.append(("positive, real ids", GenerationMode.POSITIVE, seeded.pinned[operation.path]))
        for name, mode, path_parameters in runs:
            try:
                fuzz(operation, mode, seeded, path_parameters)
            except Unsatisfiable:  # nothing to make invalid: no parameters and no body
                assert mode is GenerationMode.NEGATIVE, label
            except (Exception, BaseExceptionGroup) as exc:  # checks fail with a group of failures: report them
                failures.append(f"{label} [{name}]: {exc}")
    assert not failures, f"{len(failures)} operation(s) broke the description:\n\n" + "\n\n".join(failures)
