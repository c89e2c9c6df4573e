#!/usr/bin/env bash
# The load benchmark: builds the release binaries, runs every scenario against the service and a
# bare axum baseline in one run, prints one table and writes it to bench/results/<date>.md.
#
#   bench/run.sh            # full run (100,000 claims; about 10 minutes)
#   bench/run.sh --quick    # smaller data and shorter scenarios (about 3 minutes)
#
# PostgreSQL + Redis scenarios run when HAKIKISHA_TEST_DATABASE_URL / HAKIKISHA_TEST_REDIS_URL
# (or BENCH_DATABASE_URL / BENCH_REDIS_URL) are set. Everything targets 127.0.0.1 and stops by
# itself. See docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
  echo "installing wrk"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --locked --bin hakikisha --example bare_axum --example loadgen
# 100,000 sockets on each side of the loopback, where the hard limit allows it.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "open-file limit: $(ulimit -n)"
exec python3 bench/bench.py "$@"
