#!/usr/bin/env python3
"""Refresh the vendored socket.io-client browser bundle in server/vendor/socket.io-client/.

    python3 server/vendor/update.py            # the version pinned in package-lock.json
    python3 server/vendor/update.py 4.8.5      # another version (then also run
                                               # `npm install socket.io-client@~4.8.5` so the
                                               # JS test client in tests/js uses the same one)

Needs npm (only here, never at run time). It runs `npm pack socket.io-client@VERSION`,
checks the tarball against package-lock.json's integrity when the versions match, copies
the files the pages load (FILES) and the licence, and records the version, the tarball's
integrity and each file's sha256 in VENDORED.json (tests/test_vendor.py checks the served
files against it).
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
DEST = HERE / "socket.io-client"
REPO = HERE.parent.parent
LOCK = REPO / "package-lock.json"
FILES = ["dist/socket.io.esm.min.js", "dist/socket.io.esm.min.js.map", "LICENSE"]


def locked() -> tuple[str, str]:
    entry = json.loads(LOCK.read_text())["packages"]["node_modules/socket.io-client"]
    return entry["version"], entry["integrity"]


def main(argv: list[str]) -> int:
    lock_version, lock_integrity = locked()
    version = argv[1] if len(argv) > 1 else lock_version
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["npm", "pack", "--silent", f"socket.io-client@{version}", "--pack-destination", tmp],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        tarball = Path(tmp) / out
        data = tarball.read_bytes()
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        if version == lock_version and integrity != lock_integrity:
            print(f"integrity mismatch: npm gave {integrity}, package-lock.json has {lock_integrity}", file=sys.stderr)
            return 1
        DEST.mkdir(exist_ok=True)
        record: dict[str, object] = {
            "package": "socket.io-client",
            "version": version,
            "tarball_integrity": integrity,
            "license": "MIT",
            "updated_by": "python3 server/vendor/update.py",
            "files": {},
        }
        with tarfile.open(tarball) as tar:
            for name in FILES:
                member = tar.extractfile(f"package/{name}")
                assert member is not None, name
                content = member.read()
                target = DEST / Path(name).name
                target.write_bytes(content)
                record["files"][target.name] = hashlib.sha256(content).hexdigest()  # type: ignore[index]
    (DEST / "VENDORED.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"socket.io-client {version} -> {DEST.relative_to(REPO)}")
    if version != lock_version:
        print(f"note: package-lock.json pins {lock_version}; run `npm install socket.io-client@~{version}` too")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
