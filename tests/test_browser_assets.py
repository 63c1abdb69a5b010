"""The pages work right after `pip install` (no npm): the socket.io-client bundle they load
is vendored in the package (server/vendor/socket.io-client/) and served from there. When a
file they need cannot be loaded, the page says so on screen, naming it and the fix."""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import expect

import server
from server import pages
from tests.client import Instance
from tests.pagekit import REPO, browser, open_page  # noqa: F401

VENDORED = Path(server.__file__).resolve().parent / "vendor" / "socket.io-client"


def locked_version() -> str:
    lock = json.loads((REPO / "package-lock.json").read_text())
    return lock["packages"]["node_modules/socket.io-client"]["version"]


def test_vendored_bundle_is_recorded_pinned_and_licensed() -> None:
    record = json.loads((VENDORED / "VENDORED.json").read_text())
    assert record["package"] == "socket.io-client"
    # The bundle the pages use is the version the JS test client (tests/js, npm) uses.
    assert record["version"] == locked_version()
    assert set(record["files"]) == {"socket.io.esm.min.js", "socket.io.esm.min.js.map", "LICENSE"}
    for name, digest in record["files"].items():
        assert hashlib.sha256((VENDORED / name).read_bytes()).hexdigest() == digest, name
    assert "MIT License" in (VENDORED / "LICENSE").read_text()
    # The pages import exactly this file; it points at the map shipped next to it.
    assert 'from "../../vendor/socket.io.esm.min.js"' in (REPO / "static" / "js" / "client.js").read_text()
    assert (VENDORED / "socket.io.esm.min.js").read_text().rstrip().endswith(
        "//# sourceMappingURL=socket.io.esm.min.js.map")


async def test_pages_get_the_vendored_bundle_without_node_modules(server: Instance) -> None:
    # Nothing is looked up in node_modules any more: the server serves the package's copy.
    assert pages.VENDOR_DIR == VENDORED
    assert "node_modules" not in Path(pages.__file__).read_text()
    record = json.loads((VENDORED / "VENDORED.json").read_text())
    async with aiohttp.ClientSession() as http:
        served = (("socket.io.esm.min.js", "text/javascript"), ("socket.io.esm.min.js.map", "application/json"))
        for name, kind in served:
            async with http.get(f"{server.url}/vendor/{name}") as res:
                assert res.status == 200, name
                assert res.content_type == kind
                assert hashlib.sha256(await res.read()).hexdigest() == record["files"][name]
        async with http.get(f"{server.url}/vendor/LICENSE") as res:
            assert res.status == 404  # only the files the pages load


async def test_a_missing_bundle_is_a_404_naming_the_fix(server: Instance, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "VENDOR_DIR", tmp_path)
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/vendor/socket.io.esm.min.js") as res:
        assert res.status == 404
        error = (await res.json())["error"]
    assert error["code"] == "not_found"
    assert "socket.io.esm.min.js is missing" in error["message"] and "server/vendor/update.py" in error["message"]


@pytest.mark.parametrize("page_name", ["threads", "rooms", "console"])
async def test_page_says_on_screen_which_file_is_missing(browser, server: Instance, tmp_path: Path,  # noqa: F811
                                                         monkeypatch: pytest.MonkeyPatch, page_name: str) -> None:
    monkeypatch.setattr(pages, "VENDOR_DIR", tmp_path)  # the bundle cannot be loaded
    page = await open_page(browser, f"{server.url}/static/{page_name}.html")
    alert = page.locator(".asset-error[role=alert]")
    await expect(alert).to_be_visible()
    await expect(alert).to_contain_text("This page cannot start")
    await expect(alert).to_contain_text("Missing: /vendor/socket.io.esm.min.js (HTTP 404)")
    await expect(alert).to_contain_text("python3 server/vendor/update.py")
    await expect(alert).not_to_contain_text("static/")
    await expect(page.get_by_text("Loading…")).to_have_count(0)


async def test_widget_says_on_screen_which_file_is_missing(browser, server: Instance, tmp_path: Path,  # noqa: F811
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "VENDOR_DIR", tmp_path)
    page = await open_page(browser, f"{server.url}/static/demo.html")
    alert = page.locator("#studyhall-widget-error [role=alert]")
    await expect(alert).to_be_visible()
    await expect(alert).to_contain_text("The Studyhall tutor could not start")
    await expect(alert).to_contain_text(f"{server.url}/vendor/socket.io.esm.min.js (HTTP 404)")


async def test_no_message_when_everything_loads(browser, server: Instance, db: Any) -> None:  # noqa: F811
    page = await open_page(browser, f"{server.url}/static/threads.html")
    await expect(page.get_by_label("Email")).to_be_visible()
    await expect(page.locator(".asset-error")).to_have_count(0)


async def test_page_names_a_missing_module_of_its_own(browser, start_instance: Any,  # noqa: F811
                                                      tmp_path: Path) -> None:
    static = tmp_path / "static"
    shutil.copytree(REPO / "static", static)
    (static / "js" / "dom.js").unlink()  # imported by the page's module, not by the page itself
    instance = await start_instance(http__static_dir=static)
    page = await open_page(browser, f"{instance.url}/static/rooms.html")
    alert = page.locator(".asset-error[role=alert]")
    await expect(alert).to_contain_text("Missing: /static/js/dom.js (HTTP 404)")
    await expect(alert).to_contain_text("git checkout -- static/")
    await expect(alert).not_to_contain_text("/vendor/")


def test_the_bundle_is_package_data() -> None:
    """A plain (non-editable) `pip install .` carries the bundle: pyproject's package-data for
    `server` covers every vendored file (checked by hand with `pip wheel --no-deps .`)."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["server"]
    package = Path(server.__file__).resolve().parent
    covered = {p for pattern in patterns for p in package.glob(pattern)}
    assert set(VENDORED.iterdir()) <= covered
