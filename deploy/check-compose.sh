#!/usr/bin/env bash
# Checks deploy/compose.yaml and what it mounts, without a Docker engine, then runs the Nginx
# configuration for real in front of two dispatchd nodes:
#
#   1. the compose file, with Debian's docker-compose (1.29, which validates against the
#      Compose Specification's schema and needs no daemon for `config`), and what the file
#      means: two cluster nodes sharing one database, Redis and key; the rate-limit header the
#      nodes read is the one Nginx writes; Prometheus scrapes every node as job "dispatchd";
#      Grafana's provisioning gives the dashboard its data source; limits agree with config.toml;
#   2. deploy/prometheus/prometheus.yml (and rules.yml) with promtool;
#   3. deploy/nginx/dispatchd.conf with `nginx -t` (upstream names pointed at loopback).
#
# That configuration also runs for real in tests/js/proxy.test.mjs (part of `npm test` in
# scripts/test.sh): two real nodes in cluster mode behind a real Nginx, REST, rate limits and
# socket.io-client over long-polling and WebSocket.
#
# Run from the repository root: deploy/check-compose.sh. Installs what is missing from Debian
# packages (as root, or with sudo). Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

have docker-compose || { say "installing docker-compose"; apt_install docker-compose; }
have nginx || { say "installing nginx"; apt_install nginx; }
have promtool || { say "installing promtool"; apt_install prometheus; }
# Debian's Python 3.11 with PyYAML (a dependency of docker-compose) reads the files below.
python=/usr/bin/python3
"$python" -c 'import tomllib, yaml' 2>/dev/null || apt_install python3-yaml
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

say "compose file (docker-compose $(docker-compose version --short))"
# The secret is required: without it the file must not resolve.
if env -u DISPATCHD_JWT_SECRET docker-compose -f deploy/compose.yaml config -q 2>"$scratch/err"; then
    die "deploy/compose.yaml resolves without DISPATCHD_JWT_SECRET"
fi
grep -q "DISPATCHD_JWT_SECRET" "$scratch/err" || die "no clear error without DISPATCHD_JWT_SECRET: $(cat "$scratch/err")"
DISPATCHD_JWT_SECRET=check-compose-secret-of-at-least-32-bytes \
    docker-compose -f deploy/compose.yaml config >"$scratch/compose.yaml"
"$python" - "$scratch/compose.yaml" <<'PY'
import json, re, sys, tomllib
from pathlib import Path

import yaml

root = Path.cwd()
compose = yaml.safe_load(open(sys.argv[1]))
services = compose["services"]
defaults = tomllib.loads((root / "config.toml").read_text())
nginx = (root / "deploy/nginx/dispatchd.conf").read_text()
problems = []

def check(condition, message):
    if not condition:
        problems.append(message)

def mounted(service, source):
    """Where `source` (a repository path) is mounted in `service`, or None."""
    for volume in services[service].get("volumes", []):
        host, _, rest = volume.partition(":")
        if Path(host) == root / source:
            return rest.split(":")[0]
    return None

nodes = sorted(name for name in services if name.startswith("dispatchd"))
check(len(nodes) == 2, f"two dispatchd services expected, found {nodes}")
envs = [services[n].get("environment", {}) for n in nodes]
for name, env in zip(nodes, envs):
    build = services[name].get("build", {})
    check(Path(build.get("context", "")) == root and build.get("dockerfile") == "Dockerfile", f"{name} is not built from the Dockerfile")
    check(env.get("DISPATCHD__CLUSTER__ENABLED") == "true", f"{name}: DISPATCHD__CLUSTER__ENABLED is not true")
    depends = services[name].get("depends_on", {})
    check(depends.get("postgres", {}).get("condition") == "service_healthy", f"{name} does not wait for postgres to be healthy")
    check(depends.get("redis", {}).get("condition") == "service_started", f"{name} does not wait for redis")
for key in ("DISPATCHD__DATABASE__URL", "DISPATCHD__REDIS__URL", "DISPATCHD__AUTH__JWT_SECRET", "DISPATCHD__RATE_LIMIT__CLIENT_IP_HEADER"):
    values = {env.get(key) for env in envs}
    check(len(values) == 1 and None not in values, f"the nodes must share {key}: {values}")
ids = [env.get("DISPATCHD__CLUSTER__NODE_ID") for env in envs]
check(None not in ids and len(set(ids)) == len(ids), f"each node needs its own DISPATCHD__CLUSTER__NODE_ID: {ids}")
check(all(e.get("DISPATCHD__DATABASE__URL", "").startswith("postgres://") for e in envs), "the nodes need Postgres")

# The header the nodes read must be one Nginx writes in every location, from $remote_addr.
header = envs[0].get("DISPATCHD__RATE_LIMIT__CLIENT_IP_HEADER", "")
writes = {"x-real-ip": r"proxy_set_header\s+X-Real-IP\s+\$remote_addr;",
          "x-forwarded-for": r"proxy_set_header\s+X-Forwarded-For\s+\$proxy_add_x_forwarded_for;"}
check(header in writes, f"DISPATCHD__RATE_LIMIT__CLIENT_IP_HEADER={header!r}: config.toml takes x-forwarded-for or x-real-ip")
locations = re.findall(r"location\s+[^{]*\{(.*?)\n    \}", nginx, re.S)
proxied = [body for body in locations if "proxy_pass" in body]
check(proxied, "deploy/nginx/dispatchd.conf proxies nothing")
for body in proxied:
    check(header in writes and re.search(writes[header], body), f"a proxied location of dispatchd.conf does not set {header} from the client address")
socket_io = next((body for body in proxied if "Upgrade" in body), "")
check(re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", socket_io) and re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade;", socket_io),
      "the /socket.io/ location does not pass WebSocket upgrades on")
check(re.search(r"^\s*(hash\s+\$remote_addr(\s+consistent)?|ip_hash)\s*;", nginx, re.M), "the upstream is not sticky by client address")

def size(text):
    number, unit = re.fullmatch(r"(\d+)([kKmM]?)", text).groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024 * 1024}[unit.lower()]

server_body = re.search(r"^    client_max_body_size\s+(\S+);", nginx, re.M)
check(server_body and size(server_body.group(1)) == defaults["server"]["body_limit_bytes"],
      f"client_max_body_size must be server.body_limit_bytes ({defaults['server']['body_limit_bytes']})")
polling_body = re.search(r"client_max_body_size\s+(\S+);", socket_io)
check(polling_body and size(polling_body.group(1)) >= defaults["realtime"]["max_polling_body_bytes"],
      "/socket.io/ must take long-polling bodies of realtime.max_polling_body_bytes")
read = re.search(r"proxy_read_timeout\s+(\d+)s;", socket_io)
heartbeat = (defaults["realtime"]["ping_interval_ms"] + defaults["realtime"]["ping_timeout_ms"]) / 1000
check(read and int(read.group(1)) > heartbeat, f"/socket.io/ proxy_read_timeout must exceed ping interval + timeout ({heartbeat:g} s)")
check(mounted("nginx", "deploy/nginx/dispatchd.conf") == "/etc/nginx/conf.d/default.conf", "nginx does not mount deploy/nginx/dispatchd.conf")
check(set(services["nginx"].get("depends_on", {})) >= set(nodes), "nginx starts before the nodes it resolves")

check(str(services["postgres"]["image"]).startswith("postgres:15"), "Postgres 15 expected")
check("healthcheck" in services["postgres"] and services["postgres"].get("volumes"), "postgres needs a healthcheck and a volume")
check(str(services["redis"]["image"]).startswith("redis:7"), "Redis 7 expected")

# Prometheus: every node, job "dispatchd", every 15 s, with the project's rules.
config_at = mounted("prometheus", "deploy/prometheus/prometheus.yml")
rules_at = mounted("prometheus", "deploy/prometheus/rules.yml")
check(config_at == "/etc/prometheus/prometheus.yml", "prometheus does not mount deploy/prometheus/prometheus.yml")
prometheus = yaml.safe_load((root / "deploy/prometheus/prometheus.yml").read_text())
check(rules_at and any(str(Path(config_at or "/").parent / rule) == rules_at for rule in prometheus.get("rule_files", [])),
      "prometheus.yml's rule_files does not name the mounted rules.yml")
jobs = [job for job in prometheus["scrape_configs"] if job["job_name"] == "dispatchd"]
check(len(jobs) == 1, "no scrape job named dispatchd (rules.yml and the dashboard select job=\"dispatchd\")")
if jobs:
    targets = {t for group in jobs[0].get("static_configs", []) for t in group["targets"]}
    check(targets == {f"{n}:8080" for n in nodes}, f"the dispatchd job scrapes {targets}, not every node")
    check(jobs[0].get("scrape_interval", prometheus.get("global", {}).get("scrape_interval")) == "15s", "scrape every 15 s")

# Grafana: a default Prometheus data source the dashboard's variable lands on, and the
# dashboard file where the provider looks.
provisioning = mounted("grafana", "deploy/grafana/provisioning")
check(provisioning == "/etc/grafana/provisioning", "grafana does not mount deploy/grafana/provisioning")
sources = [s for f in (root / "deploy/grafana/provisioning/datasources").glob("*.y*ml") for s in yaml.safe_load(f.read_text())["datasources"]]
default = [s for s in sources if s.get("type") == "prometheus" and s.get("isDefault")]
check(len(default) == 1, "provision one default Prometheus data source")
check(default and default[0].get("url") == "http://prometheus:9090", "the data source must point at the prometheus service")
providers = [p for f in (root / "deploy/grafana/provisioning/dashboards").glob("*.y*ml") for p in yaml.safe_load(f.read_text())["providers"]]
dashboard_at = mounted("grafana", "deploy/grafana/dispatchd.json")
check(dashboard_at and any(p.get("type") == "file" and str(Path(dashboard_at).parent) == p["options"]["path"].rstrip("/") for p in providers),
      "no dashboard provider loads the mounted deploy/grafana/dispatchd.json")
dashboard = json.loads((root / "deploy/grafana/dispatchd.json").read_text())
variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
uids = {s.get("uid") for s in sources}
def refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            yield node["datasource"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)
for ref in refs(dashboard):
    uid = ref.get("uid", "")
    variable = re.fullmatch(r"\$\{?(\w+)\}?", uid)
    if variable:
        v = variables.get(variable.group(1), {})
        check(v.get("type") == "datasource" and v.get("query") == "prometheus", f"dashboard variable {uid} is not a Prometheus data source")
    else:
        check(uid in uids, f"the dashboard names data source uid {uid!r}, which is not provisioned")
check("__inputs" not in dashboard, "the dashboard has __inputs: file provisioning does not fill them")

if problems:
    print("\n".join(f"FAIL: {p}" for p in problems), file=sys.stderr)
    sys.exit(1)
print(f"compose: {len(services)} services; nodes {', '.join(nodes)}; client address from {header}")
PY

say "Prometheus configuration (promtool)"
promtool check config deploy/prometheus/prometheus.yml

say "Nginx configuration (nginx -t)"
mkdir -p "$scratch/nginx"
sed -E 's/^(\s*server\s+)dispatchd-([0-9]+):8080/\1127.0.0.1:1808\2/; s/^(\s*listen\s+)80;/\1127.0.0.1:18080;/' \
    deploy/nginx/dispatchd.conf >"$scratch/nginx/dispatchd.conf"
grep -q 'dispatchd-[0-9]' "$scratch/nginx/dispatchd.conf" && die "upstream names left after rendering"
cat >"$scratch/nginx/nginx.conf" <<EOF
pid $scratch/nginx/nginx.pid;
error_log stderr;
events {}
http {
    client_body_temp_path $scratch/nginx/client_body;
    proxy_temp_path $scratch/nginx/proxy;
    fastcgi_temp_path $scratch/nginx/fastcgi;
    uwsgi_temp_path $scratch/nginx/uwsgi;
    scgi_temp_path $scratch/nginx/scgi;
    include $scratch/nginx/dispatchd.conf;
}
EOF
"$nginx_bin" -t -q -p "$scratch/nginx/" -c "$scratch/nginx/nginx.conf" -e stderr
echo "nginx -t: deploy/nginx/dispatchd.conf is valid"

say "compose checks passed"
