#!/usr/bin/env bash
# Checks deploy/systemd/dispatchd.service with the dispatchd binary given as the argument:
#   * `systemd-analyze verify` on a copy whose ExecStart runs that binary (verify refuses a
#     unit whose binary is missing): any complaint about the unit fails, a misspelt directive
#     or a bad value too (systemd itself only logs those and carries on);
#   * `systemd-analyze security --offline`: the exposure score stays at most 2.0;
#   * TimeoutStopSec above server.shutdown_timeout_secs + 5 (config.toml), Type=exec;
#   * the binary accepts ExecStart's command line, and starts (`migrate`, on a throwaway SQLite
#     file) with the unit's Environment= settings and an empty --config file.
# systemd-analyze comes from the Debian package systemd, installed when missing.
#
#   deploy/check-systemd.sh target/release/dispatchd
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

UNIT=deploy/systemd/dispatchd.service
INSTALLED_BIN=/usr/local/bin/dispatchd
MAX_EXPOSURE=20 # systemd-analyze's score times ten: 2.0

fail() { printf 'FAIL %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || { echo "usage: $0 <path to the dispatchd binary>" >&2; exit 2; }
bin="$(realpath "$1")"
[ -f "$bin" ] && [ -x "$bin" ] || fail "$1 is not an executable file"

if ! command -v systemd-analyze >/dev/null; then
    say "installing systemd-analyze (Debian package systemd)"
    apt_install systemd
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
unit="$work/dispatchd.service"
# Only the ExecStart line changes; the comments keep the installed path.
sed "s|^ExecStart=$INSTALLED_BIN |ExecStart=$bin |" "$UNIT" >"$unit"
grep -q "^ExecStart=$bin " "$unit" || fail "$UNIT has no line ExecStart=$INSTALLED_BIN …"

say "systemd-analyze verify $UNIT ($(systemd-analyze --version | head -n 1))"
status=0
output="$(systemd-analyze verify --man=no "$unit" 2>&1)" || status=$?
# Lines about other units (the host's own) are shown, not held against this one.
ours="$(printf '%s\n' "$output" | grep -F -e "$unit" -e "dispatchd.service" || true)"
others="$(printf '%s\n' "$output" | grep -v -F -e "$unit" -e "dispatchd.service" | grep . || true)"
[ -z "$others" ] || printf 'note (not this unit): %s\n' "$others"
if [ "$status" -ne 0 ] || [ -n "$ours" ]; then
    printf '%s\n' "$ours" >&2
    fail "systemd-analyze verify: $UNIT has errors (exit status $status)"
fi

if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
    say "systemd-analyze security --offline (exposure at most $((MAX_EXPOSURE / 10)).$((MAX_EXPOSURE % 10)))"
    status=0
    report="$(systemd-analyze security --offline=yes --threshold="$MAX_EXPOSURE" --no-pager "$unit" 2>&1)" || status=$?
    printf '%s\n' "$report" | tail -n 1
    if [ "$status" -ne 0 ]; then
        printf '%s\n' "$report" | grep '✗' >&2 || true
        fail "the unit's exposure is above $((MAX_EXPOSURE / 10)).$((MAX_EXPOSURE % 10))"
    fi
else
    echo "note: this systemd-analyze has no security --offline (systemd < 250): exposure not scored"
fi

say "checking the unit against dispatchd"
setting() { sed -n "s/^$1=//p" "$unit" | tail -n 1; }
[ "$(setting Type)" = exec ] || fail "Type=$(setting Type): dispatchd does not speak sd_notify; use exec"
shutdown="$(awk '/^\[/ { section = $0 } section == "[server]" && $1 == "shutdown_timeout_secs" { print $3 }' config.toml)"
[ -n "$shutdown" ] || fail "server.shutdown_timeout_secs not found in config.toml"
stop="$(setting TimeoutStopSec)"
stop="${stop%s}"
[[ "$stop" =~ ^[0-9]+$ ]] || fail "TimeoutStopSec=$(setting TimeoutStopSec): give whole seconds"
[ "$stop" -gt $((shutdown + 5)) ] || fail "TimeoutStopSec=$stop must exceed shutdown_timeout_secs $shutdown + 5"
nofile="$(setting LimitNOFILE)"
[[ "$nofile" =~ ^[0-9]+$ ]] && [ "$nofile" -ge 65536 ] || fail "LimitNOFILE=$nofile: each socket is a descriptor"

# ExecStart's arguments, as the binary's command line parser sees them.
read -r -a exec_start <<<"$(setting ExecStart)"
"${exec_start[@]}" --help >/dev/null || fail "$bin refuses ExecStart's arguments: ${exec_start[*]:1}"

# The Environment= settings must be settings (an unknown key stops the server at start), with
# an empty --config file; the state directory's paths moved to a temporary one.
state="$work/state"
mkdir -p "$state"
environment=()
while IFS= read -r assignment; do
    environment+=("${assignment//\/var\/lib\/dispatchd/$state}")
done < <(sed -n 's/^Environment=//p' "$unit")
: >"$work/config.toml"
status=0
started="$(env -i PATH="$PATH" "${environment[@]}" "$bin" --config "$work/config.toml" migrate 2>&1)" || status=$?
if [ "$status" -ne 0 ]; then
    printf '%s\n' "$started" >&2
    fail "dispatchd does not start with the unit's Environment= settings (exit status $status)"
fi
say "$UNIT is valid"
