"""Hardening of the HTTP edges: hostile requests never answer 500, errors reveal nothing
about which ids exist, pages carry their security headers, /metrics is not public, and
`sync` answers stay small enough to deliver.

Everything goes through real HTTP (aiohttp's client, or raw bytes on a socket for what
that client refuses to send), real Socket.IO clients and a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.keys import SIO
from tests.client import Api, Instance, User

# --- helpers -------------------------------------------------------------------------------

NEVER_A_UUID = "00000000-0000-4000-8000-000000000000"


async def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes as they are (aiohttp's client refuses non-ASCII headers); return the
    status and the body of the answer."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), payload


def head_of(method: str, target: bytes, headers: dict[bytes, bytes], body: bytes = b"") -> bytes:
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [k + b": " + v for k, v in headers.items()]
    lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def is_protocol_error(body: Any) -> bool:
    return (
        isinstance(body, dict) and isinstance(body.get("error"), dict)
        and isinstance(body["error"].get("code"), str) and isinstance(body["error"].get("message"), str)
    )


async def admin_and_guest(api: Api, db: Any) -> tuple[User, User]:
    return await api.staff(db, "admin"), await api.guest("Visitor")


# --- 1. the cases named in the issue ---------------------------------------------------------

async def test_multipart_without_boundary_is_bad_request(api: Api, db: Any) -> None:
    admin = await api.staff(db, "admin")
    for content_type in ("multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=\"\""):
        status, body = await api.request(
            "POST", "/api/documents", admin, data=b"--x\r\n\r\nhello\r\n--x--\r\n", headers={"Content-Type": content_type},
        )
        assert status == 400 and is_protocol_error(body) and body["error"]["code"] == "bad_request", (content_type, status, body)


async def test_non_ascii_authorization_is_unauthorized(server: Instance, api: Api) -> None:
    for token in (b"Bearer \xff\xfe\xfd", "Bearer caf\u00e9".encode(), b"Bearer \xed\xa0\x80abc"):
        status, payload = await raw_request(server.url, head_of("GET", b"/api/me", {b"Authorization": token}))
        assert status == 401, (token, status, payload)
        assert is_protocol_error(orjson.loads(payload)), payload


async def test_nul_in_upload_file_name_is_bad_request(api: Api, db: Any) -> None:
    admin = await api.staff(db, "admin")
    for disposition in (
        'form-data; name="file"; filename="notes\x00.md"',
        "form-data; name=\"file\"; filename*=UTF-8''notes%00.md",
    ):
        boundary = "b0undary"
        body = (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: text/markdown\r\n\r\n"
            f"# Notes\n\nSome text.\r\n--{boundary}--\r\n"
        ).encode()
        status, answer = await api.request(
            "POST", "/api/documents", admin, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert status == 400 and is_protocol_error(answer), (disposition, status, answer)


async def test_nul_in_multipart_field_is_bad_request(api: Api, db: Any) -> None:
    admin = await api.staff(db, "admin")
    form = aiohttp.FormData()
    form.add_field("title", "a\x00b")
    form.add_field("file", b"# Notes\n\nSome text.", filename="notes.md", content_type="text/markdown")
    status, answer = await api.request("POST", "/api/documents", admin, data=form)
    assert status == 400 and is_protocol_error(answer), (status, answer)


@pytest.mark.parametrize("target", [
    "/api/search?q=%00", "/api/search?q=x&course=%00", "/api/documents?course=a%00b",
    "/api/live-sessions?status=%00", "/api/tickets?status=%00", "/api/tickets?assigned=%00",
    "/api/search?q=%ED%A0%80", "/api/search?q=%FF%FE", "/api/live-sessions?status=%C0%80",
])
async def test_nul_or_bad_utf8_in_query_is_bad_request(api: Api, db: Any, target: str) -> None:
    admin = await api.staff(db, "admin")
    status, body = await api.request("GET", target, admin)
    assert status == 400 and is_protocol_error(body) and body["error"]["code"] == "bad_request", (status, body)


async def test_unstorable_json_values_are_bad_request(api: Api, db: Any) -> None:
    """What no field check catches (a NUL in text, a date PostgreSQL cannot hold) is the
    client's input: `bad_request`, never 500."""
    mentor = await api.staff(db, "mentor")
    cases = [
        ("/api/auth/guest", None, b'{"name": "a\\u0000b"}'),
        ("/api/live-sessions", mentor, b'{"title": "Late", "max_participants": 5, "scheduled_start_time": "0001-01-01T00:00:00+14:00"}'),
    ]
    for path, user, body in cases:
        status, answer = await api.request("POST", path, user, data=body, headers={"Content-Type": "application/json"})
        assert status == 400 and is_protocol_error(answer) and answer["error"]["code"] == "bad_request", (path, status, answer)


async def test_static_errors_have_the_protocol_body(api: Api) -> None:
    for path in ("/static/js/", "/static/" + "x" * 300, "/static/nothing.html", "/static/%2e%2e/README.md", "/static/../server/app.py"):
        status, body = await api.request("GET", path)
        assert 400 <= status < 500 and is_protocol_error(body) and body["error"]["code"] == "not_found", (path, status, body)


# --- 1. every route, hostile variants --------------------------------------------------------

QUERY_NAMES = (
    "q", "k", "course", "status", "limit", "offset", "before_seq", "host_id", "assigned", "user_id", "since",
    "EIO", "transport", "sid",
)
QUERY_VALUES = ("a%00b", "%FF%FE", "-1", "99999999999999999999999999", "not-a-uuid", "2026-13-45T99:99:99")
PATH_VALUES = (NEVER_A_UUID, "not-a-uuid", "%00", "a%00b", "%FF%FE", "%ED%A0%80", "x" * 3000, "..%2F..%2Fetc%2Fpasswd")
STATIC_TAILS = ("/%00", "/a%00b.html", "/%FF", "/..%2F..%2FREADME.md", "/css/app.css%00", "/" + "x" * 3000, "/js/")
FIELDS = (
    "email", "password", "name", "role", "title", "content", "source", "language", "course", "user_id",
    "notify_when_online", "max_participants", "scheduled_start_time", "type", "is_featured", "member_ids",
    "since", "k", "q",
)
# Each is put in every field at once; the first few also in one field at a time.
PER_FIELD_VALUES = (b'"a\\u0000b"', b"123456789012345678901234567890", b"[]", b'"0001-01-01T00:00:00+14:00"')
HOSTILE_JSON_VALUES = (
    b"null", b"-1", b"123456789012345678901234567890", b"1e308", b'"a\\u0000b"', b'"\\ud800"', b"[]", b"{}",
    b'"not-a-uuid"', b'"' + b"x" * 20_000 + b'"', b'["\\u0000"]', b'"9999-12-31T23:59:59Z"', b'"0001-01-01T00:00:00+14:00"',
)
PLAIN_BODIES = (
    b"", b"not json", b"[]", b'"x"', b"null", b"1e999", b'{"a":', b'{"title":"\xff\xfe"}', b"\xff\xfe\x00",
    b'{"title":"\\ud800","content":"\\ud800"}', b'{"title":"a\\u0000b","content":"a\\u0000b"}', b"{" * 5000,
)
CONTENT_TYPES = (
    "application/json", "application/json; charset=latin-1", "text/plain", "application/x-www-form-urlencoded",
    "multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=zz",
    "multipart/mixed; boundary=zz", "application/octet-stream", "\u00e9/\u00e9",
)
MULTIPART_BODIES = (
    b"garbage",
    b"--zz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\x00.md\"\r\n\r\nhi\r\n--zz--\r\n",
    b"--zz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"\xff\xfe.md\"\r\n\r\nhi\r\n--zz--\r\n",
    b"--zz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.md\"\r\n\r\nhi\x00\xff\r\n--zz--\r\n",
    b"--zz\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nt\x00\r\n--zz\r\n"
    b"Content-Disposition: form-data; name=\"file\"; filename=\"a.md\"\r\n\r\nhi\r\n--zz--\r\n",
    b"--zz\r\nContent-Disposition: form-data; name=\"course\"\r\n\r\n\xed\xa0\x80\r\n--zz\r\n"
    b"Content-Disposition: form-data; name=\"file\"; filename=\"a.md\"\r\n\r\nhi\r\n--zz--\r\n",
    b"--zz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.pdf\"\r\n\r\n%PDF-1.4 broken\r\n--zz--\r\n",
    b"--zz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\r\n\x00\x01\x02\r\n--zz--\r\n",
    b"--zz\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--zz--\r\n",
    b"--zz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.md\"\r\n\r\nunterminated",
)
RAW_HEADERS = (
    {b"Authorization": b"Bearer \xff\xfe"},
    {b"Authorization": "Bearer caf\u00e9".encode()},
    {b"Authorization": b"Bearer " + b"a" * 8000},
    {b"Authorization": b"Basic \x01\x02"},
    {b"Authorization": b"bearer"},
    {b"Origin": b"http://\xff\xfe"},
    {b"Content-Type": b"\xff/\xfe"},
    {b"Content-Type": b"multipart/form-data; boundary=\xff"},
    {b"Accept-Encoding": b"\xff"},
    {b"X-Forwarded-For": b"\xff, not-an-ip, 999.999.1.1"},
    {b"Range": b"bytes=99999999999999999999-"},
    {b"If-Modified-Since": b"\xff"},
)


# Any JSON value: NULs, lone surrogates (escaped by json.dumps), integers far past 64 bits,
# infinities, deep nesting. Drawn once, deterministically (`derandomize`), and bounded.
_JSON_SCALARS = (
    st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False) | st.text(alphabet=st.characters(codec=None), max_size=40)
)
_JSON = st.recursive(_JSON_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_FIELD_VALUES = st.text(max_size=60) | st.integers(min_value=-(10**40), max_value=10**40) | _JSON
_OVERRIDES = st.dictionaries(st.sampled_from(FIELDS), _FIELD_VALUES, min_size=1, max_size=4)


def generated_overrides(count: int) -> list[dict[str, Any]]:
    """Up to `count` distinct sets of field values from hypothesis (any text, with NULs and
    lone surrogates; integers far past 64 bits; any JSON), the same on every run. Each is
    laid over a valid body, so most reach the code behind the type checks."""
    drawn: dict[str, dict[str, Any]] = {}

    @settings(max_examples=count * 3, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(_OVERRIDES)
    def draw(fields: dict[str, Any]) -> None:
        drawn.setdefault(json.dumps(fields, sort_keys=True), fields)

    draw()
    return list(drawn.values())[:count]


GENERATED_OVERRIDES = generated_overrides(40)


def _fill_path(canonical: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, canonical)


def _valid_body(user_id: str) -> dict[str, Any]:
    """A body that most JSON routes would accept: each hostile variant changes one field."""
    return {
        "email": f"fuzz-{uuid.uuid4().hex[:8]}@example.com", "password": "correct horse 1", "name": "Fuzz",
        "role": "student", "title": "Fuzz", "content": "Some fuzz content.", "source": "fuzz", "language": "en",
        "course": "fuzz-101", "user_id": user_id, "notify_when_online": True, "max_participants": 5,
        "scheduled_start_time": "2030-01-01T10:00:00Z", "type": "lecture", "is_featured": False,
        "member_ids": [user_id], "since": {}, "k": 5, "q": "fuzz",
    }


def _json_with(fields: tuple[str, ...], raw_value: bytes, user_id: str) -> bytes:
    """A valid-ish body with `raw_value` (JSON text, possibly invalid) in the given fields."""
    base = _valid_body(user_id)
    for field in fields:
        base[field] = "__HOLE__"
    return orjson.dumps(base).replace(b'"__HOLE__"', raw_value)


class Prober:
    """Sends requests with a bounded concurrency and records every 5xx or non-protocol error."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.failures: list[str] = []
        self.count = 0
        self.gate = asyncio.Semaphore(8)

    def _check(self, what: str, path: str, status: int, body: Any) -> None:
        self.count += 1
        if status >= 500:
            self.failures.append(f"{status} {what} {path[:200]}: {str(body)[:200]}")
        elif (status >= 400 and status != 416 and not path.startswith("/socket.io/") and body is not None
              and not is_protocol_error(body)):
            # 416: a file's Range cannot be served, HTTP's own answer on file downloads.
            self.failures.append(f"{status} without the protocol's error body: {what} {path[:200]}: {str(body)[:200]}")

    async def send(self, method: str, path: str, token: str | None, *, body: bytes | None = None,
                   content_type: str | None = None, what: str = "") -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        async with self.gate:
            async with self.session.request(method, self.url + path, data=body, headers=headers,
                                            skip_auto_headers=("Content-Type",), allow_redirects=False) as resp:
                raw = await resp.read()
        parsed: Any = None
        if method != "HEAD" and raw:
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                parsed = raw[:200] if resp.status >= 400 else None
        self._check(f"{method}{' ' + what if what else ''}", path, resp.status, parsed)

    async def send_raw(self, method: str, target: bytes, headers: dict[bytes, bytes], body: bytes = b"") -> None:
        async with self.gate:
            status, payload = await raw_request(self.url, head_of(method, target, headers, body), body)
        parsed: Any = None
        if payload and status >= 400:
            try:
                parsed = orjson.loads(payload)
            except orjson.JSONDecodeError:
                # aiohttp's own HTTP parser refuses some bytes before the app sees them: plain text 400.
                parsed = None if status == 400 else payload[:200]
        self._check(f"raw {method} {headers!r}"[:160], target.decode("latin-1"), status, parsed)


def _routes(server: Instance) -> list[tuple[str, str]]:
    seen = []
    for route in server.app.router.routes():
        canonical = route.resource.canonical if route.resource else None
        if canonical is None:
            continue
        seen.append((route.method, canonical))
    # Logging out revokes the token the other probes use: last.
    return sorted(set(seen), key=lambda r: (r[1] == "/api/auth/logout", r))


async def _probe_route(p: Prober, method: str, canonical: str, token: str | None, user_id: str, *, deep: bool) -> None:
    """Hostile paths and headers for every route; with `deep`, hostile query strings (GET
    routes) and bodies and content types (routes that take a body) as well."""
    sends = []
    if canonical.startswith("/static"):
        paths = ["/static" + tail for tail in STATIC_TAILS]
        target = "/static/index.html"
    elif "{" in canonical:
        paths = [_fill_path(canonical, v) for v in PATH_VALUES]
        target = _fill_path(canonical, NEVER_A_UUID)
    else:
        paths = [canonical]
        target = canonical
    for path in paths:
        sends.append(p.send(method, path, token))
    auth = {b"Authorization": b"Bearer " + token.encode()} if token else {}
    for headers in RAW_HEADERS:
        sends.append(p.send_raw(method, target.encode(), {**auth, **headers}))
    sends.append(p.send_raw(method, target.encode() + b"?q=\xff\xfe&course=\x7f", auth))
    if deep and method == "GET":
        for name in QUERY_NAMES:
            for value in QUERY_VALUES:
                sends.append(p.send(method, f"{target}?{name}={value}", token))
    if deep and method in ("POST", "PUT", "DELETE", "PATCH"):
        for body in PLAIN_BODIES:
            sends.append(p.send(method, target, token, body=body, content_type="application/json", what=repr(body[:40])))
        for fields in GENERATED_OVERRIDES:
            body = json.dumps({**_valid_body(user_id), **fields}, allow_nan=True).encode()
            sends.append(p.send(method, target, token, body=body, content_type="application/json", what=repr(fields)[:100]))
        for raw_value in HOSTILE_JSON_VALUES:
            body = _json_with(FIELDS, raw_value, user_id)
            sends.append(p.send(method, target, token, body=body, content_type="application/json",
                                what=f"all fields={raw_value[:40]!r}"))
        for field in FIELDS:
            for raw_value in PER_FIELD_VALUES:
                body = _json_with((field,), raw_value, user_id)
                sends.append(p.send(method, target, token, body=body, content_type="application/json",
                                    what=f"{field}={raw_value[:40]!r}"))
        bodies = (b"", b'{"title":"t","content":"c"}', *MULTIPART_BODIES)
        for content_type in CONTENT_TYPES:
            for body in bodies if content_type.startswith("multipart/form-data") else bodies[:3]:
                sends.append(p.send(method, target, token, body=body, content_type=content_type,
                                    what=f"{content_type} {body[:40]!r}"))
    await asyncio.gather(*sends)


@pytest.mark.slow
async def test_no_route_answers_500_to_hostile_requests(server: Instance, api: Api, db: Any) -> None:
    admin, guest = await admin_and_guest(api, db)
    async with aiohttp.ClientSession() as session:
        prober = Prober(session, server.url)
        routes = _routes(server)
        assert len(routes) > 40  # every feature's routes are registered
        for who in (admin, guest, None):
            for method, canonical in routes:
                await _probe_route(prober, method, canonical, who.token if who else None, admin.id, deep=who is not None)
    print(f"{prober.count} hostile requests, {len(prober.failures)} bad answers")
    assert prober.count > 7_000, prober.count
    assert not prober.failures, f"{len(prober.failures)} bad answers of {prober.count}:\n" + "\n".join(prober.failures[:300])


# --- 2. errors reveal nothing about which ids exist ------------------------------------------

async def test_edit_and_delete_answer_alike_for_unseen_and_missing_messages(api: Api) -> None:
    """A message in someone else's conversation and an id that is no message: one answer."""
    a, b, outsider = await api.register("A"), await api.register("B"), await api.register("Outsider")
    sa, so = await api.socket(a), await api.socket(outsider)
    conv = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]
    msg = (await sa.ok("message:send", {"conversation_id": conv["id"], "content": "private", "client_id": "p1"}))["message"]
    for event, extra in (("message:edit", {"content": "mine now"}), ("message:delete", {})):
        hidden = await so.call(event, {"message_id": msg["id"], **extra})
        missing = await so.call(event, {"message_id": str(uuid.uuid4()), **extra})
        assert hidden == missing and hidden["error"]["code"] == "not_found", (event, hidden, missing)
    # A member who is not the sender may see it, so is told why: that is no disclosure.
    sb = await api.socket(b)
    assert (await sb.call("message:edit", {"message_id": msg["id"], "content": "x"}))["error"]["code"] == "forbidden"


async def test_conversation_create_does_not_confirm_which_ids_are_users(api: Api) -> None:
    """A guest's id (guests cannot be added) and an id that is no user: one answer."""
    student, guest = await api.register("Student"), await api.guest("Visitor")
    sock = await api.socket(student)
    for kind in ("direct", "group"):
        of_guest = await sock.call("conversation:create", {"kind": kind, "member_ids": [guest.id]})
        of_nobody = await sock.call("conversation:create", {"kind": kind, "member_ids": [str(uuid.uuid4())]})
        assert of_guest == of_nobody and of_guest["error"]["code"] == "bad_request", (of_guest, of_nobody)
    other = await api.register("Other")
    assert (await sock.ok("conversation:create", {"kind": "direct", "member_ids": [other.id]}))["conversation"]


async def test_favorites_only_for_users_you_may_see(api: Api, db: Any) -> None:
    """Favoriting shows presence: a private user you share nothing with and an id that is no
    user get the same answer; people you share a conversation with, mentors, agents and
    hosts of live sessions may be favorited."""
    watcher = await api.guest("Watcher")
    private, friend, mentor = await api.register("Private"), await api.register("Friend"), await api.staff(db, "mentor")
    host = await api.register("Host")  # a student made mentor later hosts; their session makes them visible

    async def favorite(user_id: str) -> tuple[int, Any]:
        return await api.request("POST", "/api/favorites", watcher, json={"user_id": user_id, "notify_when_online": True})

    hidden, missing = await favorite(private.id), await favorite(str(uuid.uuid4()))
    assert hidden == missing and hidden[0] == 404 and hidden[1]["error"]["code"] == "not_found", (hidden, missing)
    assert (await favorite(host.id)) == missing
    status, body = await api.request("GET", "/api/favorites", watcher)
    assert body["favorites"] == []

    assert (await favorite(mentor.id))[0] == 201
    async with db.transaction() as conn:
        await conn.execute("UPDATE users SET role = 'mentor' WHERE id = $1", uuid.UUID(host.id))
    status, _ = await api.request("POST", "/api/live-sessions", host, json={"title": "Office hours", "max_participants": 5})
    assert status == 201
    async with db.transaction() as conn:
        await conn.execute("UPDATE users SET role = 'student' WHERE id = $1", uuid.UUID(host.id))
    assert (await favorite(host.id))[0] == 201  # hosts a session anyone can list
    sf = await api.socket(friend)
    await sf.ok("conversation:create", {"kind": "direct", "member_ids": [private.id]})
    status, _ = await api.request("POST", "/api/favorites", friend, json={"user_id": private.id, "notify_when_online": True})
    assert status == 201  # they share a conversation


# --- 4. /metrics is not public -------------------------------------------------------------

async def test_metrics_open_to_allowed_addresses_and_the_token_only(start_instance: Any) -> None:
    async def get(instance: Instance, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as session:
            async with session.get(instance.url + "/metrics", headers=headers) as resp:
                text = await resp.text()
                return resp.status, orjson.loads(text) if resp.content_type == "application/json" else text

    default = await start_instance()  # allow list: loopback only, no token
    status, text = await get(default)
    assert status == 200 and "studyhall_http_request_seconds" in text
    by_cidr = await start_instance(http__metrics_allow="10.0.0.0/8, 127.0.0.0/8")
    assert (await get(by_cidr))[0] == 200

    closed = await start_instance(http__metrics_allow="10.0.0.0/8,fd00::/8", http__metrics_token="s3cret-metrics-token")
    refused = await get(closed)
    unknown_path = await api_get(closed, "/no-such-thing")
    assert refused[0] == 404 and refused == unknown_path, (refused, unknown_path)
    assert (await get(closed, "wrong-token")) == refused
    status, text = await get(closed, "s3cret-metrics-token")
    assert status == 200 and "studyhall_http_request_seconds" in text

    no_token = await start_instance(http__metrics_allow="")
    assert (await get(no_token))[0] == 404 and (await get(no_token, "anything"))[0] == 404


async def api_get(instance: Instance, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(instance.url + path) as resp:
            return resp.status, await resp.json()


def test_hardening_settings_from_env() -> None:
    from handlers.settings import Settings

    assert Settings.from_env({"STUDYHALL_METRICS_ALLOW": "10.0.0.0/8, ::1"}).http.metrics_allow == "10.0.0.0/8, ::1"
    assert Settings.from_env({}).http.metrics_allow == "127.0.0.1/32,::1/128"
    with pytest.raises(SystemExit, match="STUDYHALL_METRICS_ALLOW"):
        Settings.from_env({"STUDYHALL_METRICS_ALLOW": "10.0.0.0/8,not-a-network"})
    assert Settings.from_env({}).http.metrics_token is None
    assert Settings.from_env({"STUDYHALL_METRICS_TOKEN": "t0ken"}).http.metrics_token == "t0ken"
    assert Settings.from_env({}).threads.sync_max_bytes == 1024 * 1024
    assert Settings.from_env({"STUDYHALL_SYNC_MAX_BYTES": "300000"}).threads.sync_max_bytes == 300_000
    assert Settings.from_env({"STUDYHALL_SYNC_MAX_BYTES": "10"}).threads.sync_max_bytes == 64 * 1024  # at least 64 KiB


# --- 5. sync answers are bounded by size and page to the end -------------------------------

async def test_sync_catches_up_a_big_backlog_in_bounded_pages(start_instance: Any, db: Any) -> None:
    """300 messages of 15 KB in two conversations, a 200 KB bound: repeated `sync` calls
    on one connection catch up everything, in order, once each, every answer within the
    bound, and the socket is never closed as a slow consumer."""
    from storage import messages

    bound = 200_000
    instance = await start_instance(threads__sync_max_bytes=bound)
    async with aiohttp.ClientSession() as session:
        api = Api(session, instance.url)
        try:
            a, b, c = await api.register("A"), await api.register("B"), await api.register("C")
            sa = await api.socket(a)
            direct = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]["id"]
            group = (await sa.ok("conversation:create", {"kind": "group", "member_ids": [b.id, c.id]}))["conversation"]["id"]
            # Text that JSON escapes (quotes, newlines) as well as plain words, 15 KB a message.
            body = ('He said "look at line\\n' + "x" * 70 + '"\n') * 160
            async with db.transaction() as conn:
                for i in range(150):
                    await messages.insert_batch(conn, [
                        messages.NewMessage(uuid.UUID(cid), uuid.UUID(a.id), "user", f"{i} {body}"[:15_000], f"m{cid}{i}")
                        for cid in (direct, group)
                    ])
            sb = await api.socket(b)
            held = {direct: 0, group: 0}
            got: dict[str, list[int]] = {direct: [], group: []}
            sizes = []
            for _ in range(100):
                ack = await sb.ok("sync", {"since": held}, timeout=30)
                sizes.append(len(orjson.dumps(ack)))
                for cid, part in ack["conversations"].items():
                    seqs = [m["seq"] for m in part["messages"]]
                    assert seqs == list(range(held[cid] + 1, held[cid] + 1 + len(seqs))), (cid, held[cid], seqs)
                    got[cid] += seqs
                    held[cid] = seqs[-1] if seqs else held[cid]
                if all(part["complete"] for part in ack["conversations"].values()):
                    break
            assert got == {direct: list(range(1, 151)), group: list(range(1, 151))}
            assert max(sizes) <= bound + 2_000, sizes  # the conversation wrappers on top
            assert len(sizes) >= 300 * 15_000 // bound, sizes
            assert sb.client.connected
            assert instance.app[SIO].manager.outbox.slow_consumers_closed == 0
        finally:
            await api.close_sockets()


async def test_sync_bound_keeps_one_message_and_reports_unreached_conversations(start_instance: Any, db: Any) -> None:
    """Even a bound smaller than one message returns one (each call makes progress); a
    conversation the answer did not reach is `complete: false` with no messages."""
    instance = await start_instance(threads__sync_max_bytes=1)
    async with aiohttp.ClientSession() as session:
        api = Api(session, instance.url)
        try:
            a, b = await api.register("A"), await api.register("B")
            sa = await api.socket(a)
            first = (await sa.ok("conversation:create", {"kind": "direct", "member_ids": [b.id]}))["conversation"]["id"]
            second = (await sa.ok("conversation:create", {"kind": "group", "member_ids": [b.id]}))["conversation"]["id"]
            for cid in (first, second):
                for i in range(2):
                    await sa.ok("message:send", {"conversation_id": cid, "content": f"hello {i}", "client_id": f"{cid}{i}"})
            ack = await sa.ok("sync", {"since": {first: 0, second: 0}})
            assert [m["seq"] for m in ack["conversations"][first]["messages"]] == [1]
            assert ack["conversations"][first]["complete"] is False
            assert ack["conversations"][second] == {"messages": [], "complete": False}
            ack = await sa.ok("sync", {"since": {first: 2, second: 2}})
            assert ack["conversations"][first] == {"messages": [], "complete": True}
        finally:
            await api.close_sockets()


# --- 3. security headers on pages and the API ----------------------------------------------

PAGES = ("/", "/static/demo.html", "/static/threads.html", "/static/rooms.html", "/static/console.html")


async def _headers(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers or {}) as resp:
            await resp.read()
            return resp.status, resp.headers


def _directives(policy: str) -> dict[str, str]:
    return {d.strip().split(" ", 1)[0]: d.strip().partition(" ")[2] for d in policy.split(";") if d.strip()}


async def test_security_headers_on_pages_and_api(api: Api, start_instance: Any) -> None:
    guest = await api.guest()
    for path in PAGES:
        status, h = await _headers(api.url + path)
        assert status == 200 and h["Content-Type"].startswith("text/html"), path
        assert h["X-Content-Type-Options"] == "nosniff" and h["Referrer-Policy"] == "no-referrer", path
        csp = _directives(h["Content-Security-Policy"])
        assert csp["default-src"] == "'self'" and csp["script-src"] == "'self'" and csp["style-src"] == "'self'", (path, csp)
        assert "'unsafe-inline'" not in h["Content-Security-Policy"] and csp["object-src"] == "'none'", (path, csp)
        assert csp["frame-ancestors"] == ("'self'" if path == "/static/console.html" else "*"), (path, csp)
        assert "X-Frame-Options" not in h
    for path, user in (("/api/health", None), ("/api/me", guest), ("/api/nothing-here", None), ("/static/js/dom.js", None)):
        status, h = await _headers(api.url + path, user.headers if user else None)
        assert h["X-Content-Type-Options"] == "nosniff", path
        if path.startswith("/api/"):
            assert h["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'", path

    listed = await start_instance(http__cors_origins="https://school.example, http://localhost:9999/")
    for path in PAGES:
        _, h = await _headers(listed.url + path)
        expected = "'self'" if path == "/static/console.html" else "'self' https://school.example http://localhost:9999"
        assert _directives(h["Content-Security-Policy"])["frame-ancestors"] == expected, (path, h["Content-Security-Policy"])
