#!/usr/bin/env bash
# Starts the given binary on a fresh SQLite database in a temp dir, waits for /health (at most
# 5 s), checks the bootstrapped admin can sign in, prints start-up time and idle RSS, stops it.
set -euo pipefail
bin=$(realpath "${1:-target/release/hakikisha}")
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

cd "$work"
start=$(date +%s%N)
BIND_ADDR="127.0.0.1:$port" METRICS_ADDR=off ADMIN_EMAIL=ops@example.com ADMIN_PASSWORD='smoke test pass 1' \
  "$bin" serve >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then break; fi
  sleep 0.05
done
curl -fsS "http://127.0.0.1:$port/health" >/dev/null || { echo "no /health within 5 s"; cat "$work/log"; exit 1; }
ready_ms=$(( ($(date +%s%N) - start) / 1000000 ))
curl -fsS -X POST "http://127.0.0.1:$port/api/v1/auth/login" -H 'content-type: application/json' \
  -d '{"login":"admin","password":"smoke test pass 1"}' | grep -q access_token || { echo "admin cannot sign in"; cat "$work/log"; exit 1; }
sleep 1
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
[ -f "$work/data/hakikisha.db" ] || { echo "data/hakikisha.db was not created"; exit 1; }
kill -TERM "$pid"
wait "$pid"
pid=
printf 'smoke: /health 200 after %d ms; idle RSS %d KiB; binary %d bytes; clean exit on SIGTERM\n' \
  "$ready_ms" "$rss_kib" "$(stat -c %s "$bin")"
