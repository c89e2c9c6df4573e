#!/usr/bin/env bash
# Starts the given binary on a fresh SQLite database, resolves a claim whose text is markup,
# sends some traffic, then renders /admin in headless Chromium (scripts/browser_check.cjs).
#
#   scripts/browser_check.sh target/release/hakikisha OUT_DIR
#
# Needs Debian's chromium and playwright-core on NODE_PATH (.ci/run installs both).
set -euo pipefail
bin=$(realpath "${1:-target/release/hakikisha}")
out=$(mkdir -p "${2:-target/ci-logs}" && realpath "${2:-target/ci-logs}")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
base="http://127.0.0.1:$port"
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

cd "$work"
BIND_ADDR="127.0.0.1:$port" METRICS_ADDR=off ADMIN_EMAIL=ops@example.com ADMIN_USERNAME=ops \
  ADMIN_PASSWORD='browser check pass 1' "$bin" serve >"$out/browser-check-server.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -fsS "$base/readyz" >/dev/null 2>&1 && break; sleep 0.05; done

json() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
post() { curl -sS --fail-with-body -X POST "$base$1" -H 'content-type: application/json' ${3:+-H "authorization: Bearer $3"} -d "$2"; }

xss='<script>alert("xss")</script> The bridge was built in 1921'
admin=$(post /api/v1/auth/login '{"login":"ops","password":"browser check pass 1"}' | json access_token)
post /api/v1/auth/register '{"email":"reader@example.com","username":"reader","password":"correct horse 42"}' >/dev/null
reader=$(post /api/v1/auth/login '{"login":"reader","password":"correct horse 42"}' | json access_token)
claim=$(post /api/v1/claims "$(python3 -c 'import json,sys; print(json.dumps({"text": sys.argv[1], "category": "other"}))' "$xss")" "$reader" | json id)
post "/api/v1/claims/$claim/assign" '{}' "$admin" >/dev/null
post "/api/v1/claims/$claim/verdict" \
  '{"label":"false","explanation":"Records show 1931.","sources":[{"title":"Archive","url":"https://example.org/a"}]}' \
  "$admin" >/dev/null
for _ in $(seq 1 50); do curl -fsS "$base/api/v1/claims/$claim" >/dev/null; curl -fsS "$base/api/health" >/dev/null; done
# Two sampler ticks, so the overview and history have figures.
sleep 6

NODE_PATH="${NODE_PATH:-}" node "$here/browser_check.cjs" "$base" ops 'browser check pass 1' \
  "$out/dashboard.png" '<script>alert("xss")</script>'
