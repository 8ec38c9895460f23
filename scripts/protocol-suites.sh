#!/usr/bin/env bash
# The official Engine.IO and Socket.IO protocol test suites (tests/protocol, adapted to
# dispatchd: see tests/protocol/README.md), each against a fresh dispatchd.
#
#   DISPATCHD_BIN=target/debug/dispatchd scripts/protocol-suites.sh [suite...]
#
#   DISPATCHD_BIN    the server binary to test (required). It is copied to a temp dir first,
#                    so a rebuild during the run does not change what is tested.
#   suites           engine.io and/or socket.io (default: both)
#   PROTOCOL_RUNS    how many times to run each suite in a row (default 1; 3 to look for
#                    flaky tests)
#
# Installs each suite's npm packages (npm ci, from its package-lock.json), starts one server
# per suite run (tests/protocol/launch.mjs: random port, embedded SQLite in a temp dir, the
# suites' reference settings), runs mocha, stops the server. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${DISPATCHD_BIN:-}" ]; then
    echo "DISPATCHD_BIN is not set: the dispatchd binary to test (e.g. target/debug/dispatchd)" >&2
    exit 2
fi
if [ ! -x "$DISPATCHD_BIN" ]; then
    echo "DISPATCHD_BIN=$DISPATCHD_BIN is not an executable file" >&2
    exit 2
fi
command -v node >/dev/null && command -v npm >/dev/null || {
    echo "node and npm are needed (Node.js 18 or later)" >&2
    exit 2
}

runs="${PROTOCOL_RUNS:-1}"
suites=("$@")
[ "${#suites[@]}" -gt 0 ] || suites=(engine.io socket.io)
for suite in "${suites[@]}"; do
    [ -f "tests/protocol/$suite/test-suite.js" ] || { echo "no such suite: $suite" >&2; exit 2; }
done

work="$(mktemp -d "${TMPDIR:-/tmp}/dispatchd-protocol-bin.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cp "$DISPATCHD_BIN" "$work/dispatchd"
bin="$work/dispatchd"

for suite in "${suites[@]}"; do
    (cd "tests/protocol/$suite" && npm ci --no-audit --no-fund --loglevel=error)
done

failed=()
for suite in "${suites[@]}"; do
    for run in $(seq "$runs"); do
        printf '\n==> %s protocol suite (run %s of %s)\n' "$suite" "$run" "$runs"
        started=$SECONDS
        if DISPATCHD_BIN="$bin" node tests/protocol/launch.mjs "tests/protocol/$suite"; then
            printf '==> %s: passed in %ss\n' "$suite" "$((SECONDS - started))"
        else
            printf '==> %s: FAILED in %ss\n' "$suite" "$((SECONDS - started))"
            failed+=("$suite#$run")
        fi
    done
done

if [ "${#failed[@]}" -gt 0 ]; then
    printf '\nprotocol suites failed: %s\n' "${failed[*]}" >&2
    exit 1
fi
printf '\nprotocol suites passed\n'
