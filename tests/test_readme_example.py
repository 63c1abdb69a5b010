"""The README's "Integrate your platform" example is code that works: its Python and Node
backends, run as written, sign identity tokens this server accepts, and their webhook
handlers accept a delivery signed per Standard Webhooks and refuse a tampered one (the
Node one receives a real delivery from a running server)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks.webhooks import Webhook

from storage.embedded import free_port
from tests.client import Api
from tests.identity_platform import create_app, sign_in

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(language: str) -> str:
    """The one `language` block of the README's "Integrate your platform" section."""
    text = README.read_text()
    section = text[text.index("## Integrate your platform"):]
    section = section[:section.index("\n## ", 1)]
    (block,) = re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)
    return block


def readme_python() -> str:
    return readme_block("python")


async def test_the_readme_backend_signs_identity_and_verifies_webhooks(
    api: Api, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = await api.staff(db, "admin")
    status, created = await create_app(api, admin, issuer="https://lms.example.edu", audience="studyhall")
    assert status == 201, created
    webhook_secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    monkeypatch.setenv("STUDYHALL_APP_SECRET", created["secret"])
    monkeypatch.setenv("STUDYHALL_WEBHOOK_SECRET", webhook_secret)
    backend: dict[str, Any] = {"__name__": "readme_backend"}
    exec(compile(readme_python(), "README.md", "exec"), backend)  # the README's own code, run as written

    # Its identity token signs the platform's user in, under the name it gave.
    status, body = await sign_in(api, backend["identity_token"]("lms-user-42", "Ada Lovelace"))
    assert status == 200, body
    assert body["user"]["name"] == "Ada Lovelace" and body["token"]

    # Its webhook handler takes a signed delivery and refuses a tampered one.
    receiver = web.Application()
    receiver.router.add_post("/hooks/studyhall", backend["studyhall_hook"])
    async with TestClient(TestServer(receiver)) as client:
        payload = b'{"type":"ticket.created","timestamp":"2026-12-01T00:00:00Z","data":{"id":"t-1"}}'
        msg_id, now = f"msg_{uuid.uuid4().hex}", datetime.now(UTC)
        signature = Webhook(webhook_secret).sign(msg_id, now, payload.decode())
        headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": signature, "content-type": "application/json"}
        good = await client.post("/hooks/studyhall", data=payload, headers=headers)
        assert good.status == 204
        bad = await client.post("/hooks/studyhall", data=payload.replace(b"t-1", b"t-2"), headers=headers)
        assert bad.status == 400


# --- Node --------------------------------------------------------------------------------

NODE_MODULES = README.parent / "node_modules"
# The driver imports the README's module as written (which starts its express app on PORT)
# and prints one identity token for the platform's user.
NODE_DRIVER = """
import { identityToken } from "./backend.mjs";
console.log("TOKEN " + identityToken(process.argv[2], process.argv[3]));
"""


async def node_line(proc: asyncio.subprocess.Process, prefix: str, seen: list[str], timeout: float = 15) -> str:
    """The first stdout line (from the start) that starts with `prefix`."""
    async def scan() -> str:
        assert proc.stdout is not None
        while True:
            found = next((line for line in seen if line.startswith(prefix)), None)
            if found is not None:
                return found
            raw = await proc.stdout.readline()
            if not raw:
                assert proc.stderr is not None
                raise AssertionError(f"node exited: {(await proc.stderr.read()).decode()}")
            seen.append(raw.decode().rstrip("\n"))

    return await asyncio.wait_for(scan(), timeout)


async def test_the_readme_node_backend_signs_identity_and_verifies_a_real_delivery(
    start_instance: Any, db: Any, tmp_path: Path
) -> None:
    from tests.test_webhooks import FAST

    assert (NODE_MODULES / "jsonwebtoken").is_dir(), "run `npm ci` (tests/run.sh does)"
    server = await start_instance(webhooks=FAST)
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    (tmp_path / "backend.mjs").write_text(readme_block("js"))
    (tmp_path / "driver.mjs").write_text(NODE_DRIVER)
    port = free_port()
    async with aiohttp.ClientSession() as session:
        api = Api(session, server.url)
        admin = await api.staff(db, "admin")
        status, created = await create_app(api, admin, issuer="https://lms.example.edu", audience="studyhall")
        assert status == 201, created
        status, endpoint = await api.request(
            "POST", "/api/webhooks/endpoints", admin,
            json={"app_id": created["app"]["id"], "url": f"http://127.0.0.1:{port}/hooks/studyhall",
                  "events": ["user.created"]})
        assert status == 201, endpoint
        env = {**os.environ, "PORT": str(port), "STUDYHALL_APP_SECRET": created["secret"],
               "STUDYHALL_WEBHOOK_SECRET": endpoint["secret"]}
        proc = await asyncio.create_subprocess_exec(
            "node", "driver.mjs", "lms-node-7", "Grace Hopper", cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        seen: list[str] = []
        try:
            token = (await node_line(proc, "TOKEN ", seen)).removeprefix("TOKEN ")
            # The Node-signed token signs the platform's user in...
            status, body = await sign_in(api, token)
            assert status == 200, body
            assert body["user"]["name"] == "Grace Hopper"
            # ...which makes the user: Studyhall delivers user.created to the Node handler,
            # which verifies it with the standardwebhooks npm package and logs it.
            line = await node_line(proc, "user.created ", seen)
            data = json.loads(line.removeprefix("user.created "))
            assert data["user"]["id"] == body["user"]["id"] and data["subject"] == "lms-node-7"
            # A tampered delivery is refused.
            payload = '{"type":"user.created","timestamp":"2026-12-01T00:00:00Z","data":{}}'
            msg_id, now = f"msg_{uuid.uuid4().hex}", datetime.now(UTC)
            headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                       "webhook-signature": Webhook(endpoint["secret"]).sign(msg_id, now, payload),
                       "content-type": "application/json"}
            url = f"http://127.0.0.1:{port}/hooks/studyhall"
            async with session.post(url, data=payload, headers=headers) as good:
                assert good.status == 204
            async with session.post(url, data=payload.replace("{}", '{"x":1}'), headers=headers) as bad:
                assert bad.status == 400
        finally:
            proc.terminate()
            await proc.wait()
