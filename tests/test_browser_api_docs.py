"""The API reference page (/api/docs) in Chromium: it renders every operation of the served
description under the pages' Content-Security-Policy (nothing refused, no JS errors), and
its filter narrows the list."""

from __future__ import annotations

from typing import Any

from tests.client import Api, Instance
from tests.pagekit import assert_clean, browser, open_page, screenshot  # noqa: F401


async def test_the_reference_page_renders_the_description(browser: Any, server: Instance, api: Api) -> None:  # noqa: F811
    status, description = await api.request("GET", "/api/openapi.json")
    assert status == 200
    operations = sum(len(methods) for methods in description["paths"].values())
    page = await open_page(browser, f"{server.url}/api/docs")
    refused: list[str] = []
    page.on("console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None)
    await page.get_by_text(f"{operations} operations.").wait_for()
    assert await page.locator("details.api-op").count() == operations
    create = page.locator("details#post_api_live_sessions")
    await create.locator("summary").click()
    body = await create.inner_text()
    assert "max_participants" in body and "≤ 10000" in body and "201" in body and "ErrorBody" in body
    await page.get_by_label("Filter").fill("platform tickets")
    visible = page.locator("details.api-op:visible")
    assert 1 <= await visible.count() < operations
    assert all("/api/platform/" in t for t in await visible.locator(".api-path").all_inner_texts())
    await screenshot(page, "api-docs")
    assert_clean(page)
    assert refused == []
