#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests against a real
# PostgreSQL and a real Redis. Uses the ones answering on 127.0.0.1:5432 / :6379; otherwise
# installs them from Debian packages and starts them (without systemd). Then the Socket.io
# gateway against the official socket.io-client from npm and the pages in Chromium (tests/js;
# Node.js and Chromium from Debian packages when missing), and against the official Engine.IO
# and Socket.IO protocol suites (tests/protocol), and the Prometheus rules with promtool (Debian
# package prometheus when missing), and the deployment kit under deploy/ (the container's
# runtime stage, compose, Nginx, a real Prometheus scraping a node, Kubernetes schemas, the
# systemd unit). Exits non-zero on any failure.
#
#   DISPATCHD_TEST_DATABASE_URL  Postgres URL of a user that may create databases
#                                (default postgres://postgres@127.0.0.1:5432/postgres)
#   DISPATCHD_TEST_REDIS_URL     default redis://127.0.0.1:6379
set -euo pipefail
cd "$(dirname "$0")/.."

export DISPATCHD_TEST_DATABASE_URL="${DISPATCHD_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export DISPATCHD_TEST_REDIS_URL="${DISPATCHD_TEST_REDIS_URL:-redis://127.0.0.1:6379}"

say() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
# Runs "$@" until it succeeds, at most 60 times half a second apart.
wait_for() { for _ in $(seq 60); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done; return 1; }

postgres_answers() { psql "$DISPATCHD_TEST_DATABASE_URL" -tAc 'SELECT 1' >/dev/null 2>&1; }

ensure_postgres() {
    command -v psql >/dev/null || apt_install postgresql-client
    postgres_answers && return 0
    say "starting PostgreSQL"
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        apt_install postgresql
    fi
    local version
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for as_root su postgres -c "psql -tAc 'SELECT 1'" || { echo "PostgreSQL did not start" >&2; exit 1; }
    if ! postgres_answers; then
        # A fresh Debian cluster wants a password over TCP: give the test user one.
        as_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\""
        export DISPATCHD_TEST_DATABASE_URL="postgres://postgres:postgres@127.0.0.1:5432/postgres"
    fi
    wait_for postgres_answers || { echo "cannot connect to $DISPATCHD_TEST_DATABASE_URL" >&2; exit 1; }
}

redis_answers() { [ "$(redis-cli -u "$DISPATCHD_TEST_REDIS_URL" ping 2>/dev/null)" = "PONG" ]; }

ensure_redis() {
    command -v redis-cli >/dev/null || apt_install redis-tools
    # Some tests run a redis-server of their own, to kill and restart it.
    command -v redis-server >/dev/null || apt_install redis-server
    redis_answers && return 0
    say "starting Redis"
    as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    wait_for redis_answers || { echo "Redis did not start" >&2; exit 1; }
}

ensure_node() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        say "installing Node.js (for the socket.io-client tests)"
        apt_install nodejs npm
    fi
}

# Pages are tested in Debian's Chromium, driven by playwright-core (tests/js).
ensure_chromium() {
    command -v chromium >/dev/null && return 0
    say "installing Chromium (for the page tests)"
    apt_install chromium
}

# Prometheus rules are checked with Debian's promtool (package prometheus).
ensure_promtool() {
    command -v promtool >/dev/null && return 0
    say "installing promtool (for the alerting rules)"
    apt_install prometheus
}

# tests/js/proxy.test.mjs runs the project's Nginx configuration in front of two nodes.
ensure_nginx() {
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] && return 0
    say "installing nginx (for the proxy test)"
    apt_install nginx
}

drop_test_databases() {
    psql "$DISPATCHD_TEST_DATABASE_URL" -tAc \
        "SELECT datname FROM pg_database WHERE datname LIKE 'dispatchd\_test\_%'" 2>/dev/null |
        while read -r name; do
            [ -n "$name" ] && psql "$DISPATCHD_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" || true
        done
}

drop_test_redis_keys() {
    redis-cli -u "$DISPATCHD_TEST_REDIS_URL" --scan --pattern 'dispatchd-test:*' 2>/dev/null |
        xargs -r -n 500 redis-cli -u "$DISPATCHD_TEST_REDIS_URL" del >/dev/null 2>&1 || true
}

cleanup() {
    drop_test_databases
    drop_test_redis_keys
}

command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
ensure_postgres
ensure_redis
ensure_node
ensure_chromium
ensure_promtool
ensure_nginx
trap cleanup EXIT

say "Prometheus rules (promtool check and unit tests)"
promtool check rules deploy/prometheus/rules.yml
promtool test rules deploy/prometheus/rules_test.yml

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
say "cargo test"
cargo test --workspace --locked
say "cargo test: the patched engine's own tests (vendor/engineioxide)"
CARGO_TARGET_DIR="$(realpath -m "${CARGO_TARGET_DIR:-target}")/vendor" \
    cargo test --locked --manifest-path vendor/engineioxide/Cargo.toml --lib --features v3
say "socket.io-client tests (tests/js)"
bin="$(realpath "${CARGO_TARGET_DIR:-target}")/debug/dispatchd"
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error && DISPATCHD_BIN="$bin" npm test)
say "official Engine.IO / Socket.IO protocol suites (tests/protocol)"
DISPATCHD_BIN="$bin" scripts/protocol-suites.sh
say "deployment: the container image's stage, run as the image runs it (deploy/check-container.py)"
python3 deploy/check-container.py "$bin"
say "deployment: compose, Nginx and Prometheus configuration (deploy/check-compose.sh)"
deploy/check-compose.sh
say "deployment: a real Prometheus scraping a running node with the rules (deploy/check-prometheus.sh)"
deploy/check-prometheus.sh "$bin"
say "deployment: the Kubernetes base against the schemas (deploy/check-k8s.sh)"
deploy/check-k8s.sh
say "deployment: the systemd unit (deploy/check-systemd.sh)"
deploy/check-systemd.sh "$bin"
say "benchmark scenarios at tiny scale (so they cannot rot)"
bench/smoke.sh
