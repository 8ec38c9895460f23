#!/usr/bin/env bash
# REST skeleton throughput and latency, measured with wrk against a release build:
#   GET /healthz      the middleware stack alone (request id, trace, metrics, envelope...)
#   GET /api/v1/me    plus access-token verification, the revocation check and one user read
# for each store: embedded SQLite; Postgres; Postgres with Redis (revocations checked in Redis).
# The server runs with its default configuration (JSON logs at info) except the rate limit,
# which is switched off so that it does not answer 429 to the load generator.
#
# Usage: bench/http-auth.sh [seconds] [connections]      (needs wrk: apt-get install wrk)
# Env:   BENCH_DATABASE_URL  Postgres URL allowed to create databases
#        BENCH_REDIS_URL     Redis URL
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN="${1:-10}"
CONNECTIONS="${2:-32}"
PG_ADMIN="${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
REDIS="${BENCH_REDIS_URL:-redis://127.0.0.1:6379}"
PORT=18181
URL="http://127.0.0.1:$PORT"
SECRET="bench-secret-bench-secret-bench-secret-00"

command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet
WORK="$(mktemp -d)"
SERVER=""
stop_server() { if [ -n "$SERVER" ]; then kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true; SERVER=""; fi; }
trap 'stop_server; psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS dispatchd_bench WITH (FORCE)" >/dev/null 2>&1; rm -rf "$WORK"' EXIT

start_server() { # env assignments for the server...
    env DISPATCHD__SERVER__ADDR="127.0.0.1:$PORT" DISPATCHD__RATE_LIMIT__ENABLED=false \
        DISPATCHD__DATABASE__SQLITE_PATH="$WORK/dispatchd.db" "$@" target/release/dispatchd >/dev/null 2>&1 &
    SERVER=$!
    for _ in $(seq 100); do curl -fs "$URL/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "server did not become ready" >&2; exit 1
}

token() {
    curl -fs "$URL/api/v1/auth/register" -H 'content-type: application/json' \
        -d "{\"name\":\"Bench\",\"phone\":\"+9198$(printf %08d $((RANDOM * RANDOM % 100000000)))\",\"password\":\"bench password\",\"role\":\"customer\"}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["access_token"])'
}

measure() { # label path [header]
    local label="$1" path="$2" out
    shift 2
    out="$(wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "$@" "$URL$path")"
    printf '| %-28s | %-12s | %9s | %8s | %8s | %8s |\n' "$label" "$path" \
        "$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")" \
        "$(awk '$1=="50%" {print $2}' <<<"$out")" "$(awk '$1=="90%" {print $2}' <<<"$out")" \
        "$(awk '$1=="99%" {print $2}' <<<"$out")"
}

run_store() { # label, then env assignments
    local label="$1"
    shift
    start_server "$@"
    local access
    access="$(token)"
    measure "$label" /healthz
    measure "$label" /api/v1/me -H "Authorization: Bearer $access"
    stop_server
}

echo "wrk -t1 -c$CONNECTIONS -d${SECONDS_PER_RUN}s, $(nproc) cores, $(date -u +%F)"
echo
echo "| store                        | path         |   req/s   |   p50    |   p90    |   p99    |"
echo "|------------------------------|--------------|-----------|----------|----------|----------|"
run_store "sqlite (embedded)"
psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS dispatchd_bench WITH (FORCE)" -c "CREATE DATABASE dispatchd_bench" >/dev/null
PG_URL="${PG_ADMIN%/*}/dispatchd_bench"
run_store "postgres" DISPATCHD__DATABASE__URL="$PG_URL" DISPATCHD__AUTH__JWT_SECRET="$SECRET"
run_store "postgres + redis" DISPATCHD__DATABASE__URL="$PG_URL" DISPATCHD__AUTH__JWT_SECRET="$SECRET" \
    DISPATCHD__REDIS__URL="$REDIS" DISPATCHD__REDIS__KEY_PREFIX="dispatchd-bench:"
