#!/usr/bin/env bash
# A real Prometheus scraping a running dispatchd: the server given as the argument starts on a
# SQLite file of its own and a Prometheus (Debian's package prometheus) scrapes it every second
# as job "dispatchd" with deploy/prometheus/rules.yml loaded. Once scraped, the server serves a
# little traffic (sign-ups, quotes, an order that no pilot takes, a 404). Every recording rule
# must then return what that traffic means (requests and orders per second above 0, no 5xx, a
# p95, orders ending for want of a pilot), every alerting rule must evaluate without error, and
# none may fire (DispatchdNoPilotFoundSpike needs 10 minutes of it: it does not).
#
#   deploy/check-prometheus.sh target/debug/dispatchd
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

bin="$(realpath "${1:?usage: deploy/check-prometheus.sh <dispatchd binary>}")"
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
command -v prometheus >/dev/null || die "prometheus not found (Debian package prometheus)"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

scratch="$(mktemp -d)"
pids=()
finish() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$scratch"
}
trap finish EXIT

node_port="$(free_port)"
say "dispatchd on 127.0.0.1:$node_port"
env -i PATH="$PATH" \
    DISPATCHD__SERVER__ADDR="127.0.0.1:$node_port" \
    DISPATCHD__DATABASE__SQLITE_PATH="$scratch/dispatchd.db" \
    DISPATCHD__ORDERS__MAX_SEARCH_SECS=1 \
    DISPATCHD__JOBS__POLL_INTERVAL_MS=200 \
    "$bin" serve >"$scratch/dispatchd.log" 2>&1 &
pids+=($!)
node="http://127.0.0.1:$node_port"
for _ in $(seq 100); do curl -fsS "$node/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "$node/healthz" >/dev/null || { cat "$scratch/dispatchd.log" >&2; die "dispatchd did not start"; }

prom_port="$(free_port)"
cat >"$scratch/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/deploy/prometheus/rules.yml
scrape_configs:
  - job_name: dispatchd
    static_configs:
      - targets: ["127.0.0.1:$node_port"]
EOF
say "prometheus on 127.0.0.1:$prom_port, scraping every second"
prometheus --config.file="$scratch/prometheus.yml" --storage.tsdb.path="$scratch/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" >"$scratch/prometheus.log" 2>&1 &
pids+=($!)

python3 - "http://127.0.0.1:$prom_port" "$PWD/deploy/prometheus/rules.yml" "$node" <<'PY' || { tail -20 "$scratch/prometheus.log" >&2; exit 1; }
import json, math, random, re, sys, time, urllib.error, urllib.parse, urllib.request
prometheus, rules_file, base = sys.argv[1], sys.argv[2], sys.argv[3]
recorded = re.findall(r"^\s*- record:\s*(\S+)", open(rules_file).read(), re.M)
alerts = re.findall(r"^\s*- alert:\s*(\S+)", open(rules_file).read(), re.M)
assert recorded and alerts, "rules.yml names no rules"
def get(path):
    with urllib.request.urlopen(prometheus + path, timeout=5) as reply:
        return json.load(reply)["data"]
def query(expression):
    return get("/api/v1/query?query=" + urllib.parse.quote(expression))["result"]
def until(what, found, within=60):
    deadline, error = time.time() + within, None
    while time.time() < deadline:
        try:
            if found():
                return
        except (OSError, IndexError, KeyError, ValueError) as failed:
            error = failed
        time.sleep(1)
    sys.exit(f"FAIL: {what} after {within} s" + (f" (last: {error!r})" if error else ""))

until("no scrape of the node", lambda: query('up{job="dispatchd"}')[0]["value"][1] == "1")
print("  scraped; now the traffic: sign-ups, quotes, an order no pilot takes, a 404")
def call(method, path, body=None, token=None):
    request = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode())
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as refused:
        return refused.code, None
phone = "+9198%08d" % random.randrange(10**8)
status, grant = call("POST", "/api/v1/auth/register", {"name": "Prometheus Drill", "phone": phone, "password": "a long secret", "role": "customer"})
assert status == 201, status
token = grant["data"]["access_token"]
trip = {"pickup": {"lat": 12.9716, "lng": 77.5946, "address": "MG Road"}, "drop": {"lat": 12.9352, "lng": 77.6245, "address": "Koramangala"}, "vehicle_type": "bike"}
quote = {"pickup": {"lat": 12.9716, "lng": 77.5946}, "drop": {"lat": 12.9352, "lng": 77.6245}, "vehicle_type": "bike"}
for _ in range(5):
    status, _ = call("POST", "/api/v1/quotes", quote, token)
    assert status in (200, 201), status
# Two orders a few scrapes apart: a counter's series appears with its first increment, which
# rate() cannot see; the second one it sees (created, and cancelled for want of a pilot).
for _ in range(2):
    status, order = call("POST", "/api/v1/orders", dict(trip, payment_method="cash"), token)
    assert status == 201, (status, order)
    time.sleep(3)
assert call("GET", "/api/v1/no-such-endpoint")[0] == 404
print("order", order["data"]["id"])

# The rates move once the traffic is in two scrapes; the order is cancelled (no pilot) after
# orders.max_search_secs.
expected = {
    "dispatchd:http_requests:rate5m": lambda value: value > 0,
    "dispatchd:http_5xx:ratio5m": lambda value: value == 0,
    "dispatchd:http_latency_seconds:p95_5m": lambda value: 0 < value < 10,
    "dispatchd:orders_created:rate5m": lambda value: value > 0,
    "dispatchd:no_pilot_found:ratio15m": lambda value: value > 0,
}
unchecked = set(recorded) - set(expected)
if unchecked:
    sys.exit(f"FAIL: recording rules this check does not know: {sorted(unchecked)}")
values = {}
def all_as_expected():
    for name in recorded:
        values[name] = float(query(name)[0]["value"][1])
    return all(expected[name](values[name]) for name in recorded)
until(f"recording rules not as expected ({values})", all_as_expected, within=90)
for name in recorded:
    print(f"  {name} = {values[name]:.4g}")
groups = get("/api/v1/rules")["groups"]
seen = {rule["name"]: rule for group in groups for rule in group["rules"]}
for name in recorded + alerts:
    rule = seen.get(name) or sys.exit(f"FAIL: Prometheus did not load {name}")
    if rule.get("health") != "ok":
        sys.exit(f"FAIL: {name} does not evaluate: {rule.get('lastError')}")
firing = [name for name in alerts if seen[name].get("state") == "firing"]
if firing:
    sys.exit(f"FAIL: alerts firing on a healthy node: {firing}")
print(f"  {len(recorded)} recording rules with data, {len(alerts)} alerts evaluating, none firing")
PY
say "a real Prometheus reads every recording rule from a running dispatchd"
