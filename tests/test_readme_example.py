"""The README's "Integrate your platform" example is code that works: its Python backend,
run as written, signs an identity token this server accepts, and its webhook handler
accepts a delivery signed per Standard Webhooks and refuses a tampered one."""

from __future__ import annotations

import base64
import os
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks.webhooks import Webhook

from tests.client import Api
from tests.identity_platform import create_app, sign_in

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_python() -> str:
    """The Python block of the README's "Integrate your platform" section."""
    text = README.read_text()
    section = text[text.index("## Integrate your platform"):]
    section = section[:section.index("\n## ", 1)]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return block


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
