#!/usr/bin/env python3
"""Refresh the browser bundles vendored in server/vendor/<package>/ (the pages load them; no npm at run time).

    python3 server/vendor/update.py                       # every package, at the version in package-lock.json
    python3 server/vendor/update.py socket.io-client 4.8.5  # one package at another version (then also run
                                                          # `npm install socket.io-client@~4.8.5` so the
                                                          # lock and the JS test client follow)

Needs npm (only here, never at run time). For each package it runs `npm pack NAME@VERSION`,
checks the tarball against package-lock.json's integrity when the versions match, copies
the files the pages load (PACKAGES) and the licence, and records the version, the tarball's
integrity and each file's sha256 in VENDORED.json (tests/test_browser_assets.py checks the
served files against it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LOCK = REPO / "package-lock.json"
# package -> (licence, files from its tarball). markdown-it ships only a UMD build: the
# server wraps it as an ES module when serving it (server/pages.py), the file stays as is.
# DOMPurify is dual licensed (MPL-2.0 OR Apache-2.0): taken under Apache-2.0, as Studyhall is.
PACKAGES: dict[str, tuple[str, list[str]]] = {
    "socket.io-client": ("MIT", ["dist/socket.io.esm.min.js", "dist/socket.io.esm.min.js.map", "LICENSE"]),
    "markdown-it": ("MIT", ["dist/markdown-it.min.js", "dist/markdown-it.min.js.map", "LICENSE"]),
    "dompurify": ("Apache-2.0", ["dist/purify.es.mjs", "dist/purify.es.mjs.map", "LICENSE"]),
}


def locked(package: str) -> tuple[str, str]:
    entry = json.loads(LOCK.read_text())["packages"][f"node_modules/{package}"]
    return entry["version"], entry["integrity"]


def vendor(package: str, version: str | None) -> int:
    licence, files = PACKAGES[package]
    dest = HERE / package
    lock_version, lock_integrity = locked(package)
    version = version or lock_version
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["npm", "pack", "--silent", f"{package}@{version}", "--pack-destination", tmp],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        tarball = Path(tmp) / out
        data = tarball.read_bytes()
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        if version == lock_version and integrity != lock_integrity:
            print(f"{package}: integrity mismatch: npm gave {integrity}, package-lock.json has {lock_integrity}",
                  file=sys.stderr)
            return 1
        dest.mkdir(exist_ok=True)
        record: dict[str, object] = {
            "package": package,
            "version": version,
            "tarball_integrity": integrity,
            "license": licence,
            "updated_by": "python3 server/vendor/update.py",
            "files": {},
        }
        with tarfile.open(tarball) as tar:
            for name in files:
                member = tar.extractfile(f"package/{name}")
                assert member is not None, name
                content = member.read()
                target = dest / Path(name).name
                target.write_bytes(content)
                record["files"][target.name] = hashlib.sha256(content).hexdigest()  # type: ignore[index]
    (dest / "VENDORED.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{package} {version} -> {dest.relative_to(REPO)}")
    if version != lock_version:
        print(f"note: package-lock.json pins {lock_version}; run `npm install {package}@~{version}` too")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return vendor(argv[1], argv[2] if len(argv) > 2 else None)
    return max(vendor(package, None) for package in PACKAGES)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
