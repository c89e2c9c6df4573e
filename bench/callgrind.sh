#!/usr/bin/env bash
# Instructions per request of a server, counted by callgrind (user space only; the same for the
# same binary and inputs whatever else the machine is doing). docs/performance.md has the table.
#
#   bench/callgrind.sh PORT PATH -- COMMAND...
#   bench/callgrind.sh 18080 /api/health -- target/release/examples/bare_axum 127.0.0.1:18080
#   DATABASE_URL=sqlite:///tmp/h.db BIND_ADDR=127.0.0.1:18081 \
#     bench/callgrind.sh 18081 /api/v1/claims/trending -- target/release/hakikisha serve
#
# Starts COMMAND under callgrind, waits for http://127.0.0.1:PORT/PATH, warms up for 3 s, zeroes
# the counters, loads it with wrk for 10 s (1 thread, 8 connections), dumps, stops it and prints
# the instructions per request. Needs valgrind and wrk (Debian packages of those names).
set -euo pipefail
[ $# -ge 4 ] && [ "$3" = "--" ] || { sed -n '2,12p' "$0"; exit 2; }
port=$1 path=$2
shift 3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" --dump-instr=no "$@" \
  >"$out/server.log" 2>&1 &
pid=$!
url="http://127.0.0.1:$port$path"
for _ in $(seq 1 600); do curl -sf -o /dev/null "$url" && break; sleep 0.5; done
curl -sf -o /dev/null "$url" || { echo "$url did not answer; see the server log:"; cat "$out/server.log"; kill "$pid"; exit 1; }
wrk -t1 -c8 -d3s "$url" >/dev/null
callgrind_control -z "$pid" >/dev/null 2>&1
wrk -t1 -c8 -d10s "$url" >"$out/wrk.txt"
callgrind_control -d "$pid" >/dev/null 2>&1
kill "$pid"
wait "$pid" 2>/dev/null || true
requests=$(awk '/requests in/{print $1}' "$out/wrk.txt")
dump=$(ls "$out"/cg.*.1)
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",", "", $1); print $1}')
echo "$path: $requests requests, $total instructions, $((total / requests)) per request"
