"""The pages work right after `pip install` (no npm): the socket.io-client bundle they load
is vendored in the package (server/vendor/socket.io-client/) and served from there. When a
file they need cannot be loaded, the page says so on screen, naming it and the fix."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import expect

import server
from server import pages, routes_static
from tests.client import Instance
from tests.pagekit import REPO, browser, open_page  # noqa: F401

VENDOR_ROOT = Path(server.__file__).resolve().parent / "vendor"
VENDORED = VENDOR_ROOT / "socket.io-client"
# package -> (the files vendored, the licence text's telltale)
PACKAGES = {
    "socket.io-client": ({"socket.io.esm.min.js", "socket.io.esm.min.js.map", "LICENSE"}, "MIT License"),
    "markdown-it": ({"markdown-it.min.js", "markdown-it.min.js.map", "LICENSE"}, "Permission is hereby granted"),
    "dompurify": ({"purify.es.mjs", "purify.es.mjs.map", "LICENSE"}, "Apache License"),
}


def locked_version(package: str = "socket.io-client") -> str:
    lock = json.loads((REPO / "package-lock.json").read_text())
    return lock["packages"][f"node_modules/{package}"]["version"]


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_vendored_bundles_are_recorded_pinned_and_licensed(package: str) -> None:
    folder = VENDOR_ROOT / package
    files, licence = PACKAGES[package]
    record = json.loads((folder / "VENDORED.json").read_text())
    assert record["package"] == package
    # The bundle the pages use is the version package-lock.json pins (and tests/js uses).
    assert record["version"] == locked_version(package)
    lock = json.loads((REPO / "package-lock.json").read_text())
    assert record["tarball_integrity"] == lock["packages"][f"node_modules/{package}"]["integrity"]
    assert set(record["files"]) == files
    for name, digest in record["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    assert licence in (folder / "LICENSE").read_text()


def test_the_pages_import_the_vendored_bundles() -> None:
    # The pages import exactly these files; each points at the map shipped next to it.
    markdown = (REPO / "static" / "js" / "markdown.js").read_text()
    assert 'from "../../vendor/markdown-it.esm.js"' in markdown and 'from "../../vendor/purify.es.mjs"' in markdown
    assert 'from "../../vendor/socket.io.esm.min.js"' in (REPO / "static" / "js" / "client.js").read_text()
    assert (VENDORED / "socket.io.esm.min.js").read_text().rstrip().endswith(
        "//# sourceMappingURL=socket.io.esm.min.js.map")


async def test_pages_get_the_vendored_bundle_without_node_modules(server: Instance) -> None:
    # Nothing is looked up in node_modules any more: the server serves the package's copy.
    assert pages.VENDOR_ROOT == VENDOR_ROOT
    assert "node_modules" not in Path(pages.__file__).read_text()
    async with aiohttp.ClientSession() as http:
        for name, served in pages.VENDOR_FILES.items():
            record = json.loads((VENDOR_ROOT / served.package / "VENDORED.json").read_text())
            async with http.get(f"{server.url}/vendor/{name}") as res:
                assert res.status == 200, name
                assert res.content_type == served.content_type
                body = await res.read()
            original = (VENDOR_ROOT / served.package / served.file).read_bytes()
            assert hashlib.sha256(original).hexdigest() == record["files"][served.file]
            if served.wrap_umd:
                # npm's UMD file, byte for byte, between the two lines that make it a module.
                assert body == pages.UMD_HEAD + original + pages.UMD_TAIL
            else:
                assert body == original
        async with http.get(f"{server.url}/vendor/LICENSE") as res:
            assert res.status == 404  # only the files the pages load


async def test_a_missing_bundle_is_a_404_naming_the_fix(server: Instance, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "VENDOR_ROOT", tmp_path)
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/vendor/socket.io.esm.min.js") as res:
        assert res.status == 404
        error = (await res.json())["error"]
    assert error["code"] == "not_found"
    assert "socket.io.esm.min.js is missing" in error["message"] and "server/vendor/update.py" in error["message"]


@pytest.mark.parametrize("page_name", ["threads", "rooms", "console"])
async def test_page_says_on_screen_which_file_is_missing(browser, server: Instance, tmp_path: Path,  # noqa: F811
                                                         monkeypatch: pytest.MonkeyPatch, page_name: str) -> None:
    monkeypatch.setattr(pages, "VENDOR_ROOT", tmp_path)  # the bundle cannot be loaded
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
    monkeypatch.setattr(pages, "VENDOR_ROOT", tmp_path)
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
    assert {f for package in PACKAGES for f in (VENDOR_ROOT / package).iterdir()} <= covered


def test_the_pages_are_package_data() -> None:
    """The pages ship inside the `server` package (server/static links to static/), so a
    plain `pip install .` serves them, not only an editable install: package-data covers
    every file of static/, and the app serves from that link by default."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["server"]
    package = Path(server.__file__).parent
    assert (package / "static").resolve() == (REPO / "static").resolve()
    covered = {p.resolve() for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    pages = {p.resolve() for p in (REPO / "static").rglob("*") if p.is_file()}
    assert pages and pages <= covered, sorted(str(p) for p in pages - covered)
    assert package / "static" == routes_static.PACKAGE_STATIC


@pytest.mark.slow
def test_a_built_wheel_carries_the_pages_and_the_bundle(tmp_path: Path) -> None:
    """`pip wheel .` (what a non-editable install builds): the pages, the bundle and the
    migrations are inside it."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path), str(REPO)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("studyhall-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    pages = {f"server/static/{p.relative_to(REPO / 'static').as_posix()}" for p in (REPO / "static").rglob("*")
             if p.is_file()}
    assert pages <= names, sorted(pages - names)
    assert {f"server/vendor/{package}/{p.name}" for package in PACKAGES for p in (VENDOR_ROOT / package).iterdir()} <= names
    assert any(n.startswith("storage/migrations/") for n in names)
