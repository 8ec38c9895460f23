#!/usr/bin/env bash
# Live tracking through Socket.io: dispatchd against the same relay on Node socket.io
# (bench/baselines/node-relay), back to back, same generator, same machine.
#
#   bench/realtime.sh [PAIRS] [SECONDS] [IDLE_CONNECTIONS] [RATE]   (defaults 500 20 10000 1)
#
# RATE is fixes per second per pilot (at most 2: faster, 12 m steps would exceed a bike's
# plausible speed, and smaller ones are parked jitter).
#
# Needs Node.js and npm (apt-get install nodejs npm). Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS="${1:-500}"
SECONDS_="${2:-20}"
IDLE="${3:-10000}"
RATE="${4:-1}"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release --quiet --bin dispatchd -p dispatchd
cargo build --release --quiet -p dispatchd-bench --bin realtime-report
(cd bench/baselines/node-relay && npm ci --no-audit --no-fund --loglevel=error)
REPORT=target/release/realtime-report
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

# Waits for a JSON line holding $2 in file $1 and prints the value of that key.
wait_json() {
    for _ in $(seq 100); do
        value="$(grep -o "\"$2\":[^,}]*" "$1" 2>/dev/null | head -n 1 | cut -d: -f2- | tr -d '"' || true)"
        [ -n "$value" ] && { echo "$value"; return 0; }
        sleep 0.2
    done
    echo "no $2 in $1" >&2; return 1
}

start_dispatchd() {
    rm -rf "$WORK/data"
    export DISPATCHD__SERVER__ADDR=127.0.0.1:0 DISPATCHD__DATABASE__SQLITE_PATH="$WORK/data/dispatchd.db" \
        DISPATCHD__RATE_LIMIT__ENABLED=false DISPATCHD__LOG__LEVEL=warn,dispatchd::app=info
    target/release/dispatchd >"$WORK/dispatchd.log" 2>&1 &
    DPID=$!
    DADDR="$(wait_json "$WORK/dispatchd.log" addr)"
    DISPATCHD_ADMIN_PASSWORD="bench password 1" target/release/dispatchd admin create-user \
        --role dispatcher --phone +919999900001 --name Bench >/dev/null 2>&1
}

start_node() {
    PORT=0 node bench/baselines/node-relay/server.js >"$WORK/node.log" 2>&1 &
    NPID=$!
    NADDR="127.0.0.1:$(wait_json "$WORK/node.log" listening)"
}

echo "== track: $PAIRS pilots streaming $RATE fix/s, each watched by its customer, ${SECONDS_} s"
start_dispatchd
"$REPORT" track --target dispatchd --addr "$DADDR" --pairs "$PAIRS" --seconds "$SECONDS_" --rate "$RATE" --pid "$DPID" \
    --staff-phone +919999900001 --staff-password "bench password 1"
kill "$DPID"; wait "$DPID" || true
start_node
"$REPORT" track --target node --addr "$NADDR" --pairs "$PAIRS" --seconds "$SECONDS_" --rate "$RATE" --pid "$NPID" | tail -n 1
kill "$NPID"; wait "$NPID" || true

echo "== idle: $IDLE idle sockets on /pilot"
start_dispatchd
"$REPORT" idle --target dispatchd --addr "$DADDR" --connections "$IDLE" --pid "$DPID"
kill "$DPID"; wait "$DPID" || true
start_node
"$REPORT" idle --target node --addr "$NADDR" --connections "$IDLE" --pid "$NPID" | tail -n 1
kill "$NPID"; wait "$NPID" || true
