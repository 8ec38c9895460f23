#!/usr/bin/env bash
# dispatchd against the Node socket.io baseline (bench/baselines/node-relay), back to back on
# this machine: builds the release binaries, installs the baseline's npm packages, and runs
# `dispatchd-bench compare` with the arguments given (default: ingest, track, connections at
# their default sizes; the baseline writes ingest's fixes to Redis GEO when Redis answers).
#
#   bench/compare.sh [SCENARIO…] [--duration S] [--pilots N] [--pairs P] [--rate R] [--connections N] …
#
# Needs Node.js and npm (apt-get install nodejs npm). Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --locked -p dispatchd --bin dispatchd
cargo build --release --quiet --locked -p dispatchd-bench --bin dispatchd-bench
(cd bench/baselines/node-relay && npm ci --no-audit --no-fund --loglevel=error)
redis=()
if [ "$(redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" ping 2>/dev/null)" = "PONG" ]; then
    redis=(--redis-url "${REDIS_URL:-redis://127.0.0.1:6379}")
fi
exec target/release/dispatchd-bench compare "${redis[@]}" "$@"
