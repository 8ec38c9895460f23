#!/usr/bin/env bash
# Checks the Kubernetes base in deploy/k8s, offline: renders it with kustomize (`kubectl
# kustomize`; Debian's package kubernetes-client when kubectl is missing), validates every
# rendered object against the OpenAPI schemas of Kubernetes $K8S_VERSION with the PyPI package
# kubernetes-validate in strict mode (unknown fields are errors), then checks what the schemas
# cannot say (the grace period against server.shutdown_timeout_secs, probes, Secret keys,
# settings against config.toml, the security context). Run from anywhere; exits non-zero on
# any failure.
#
# kubernetes-validate is installed in a virtualenv under ${CARGO_TARGET_DIR:-target}/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/lib.sh
. deploy/lib.sh

K8S_VERSION=1.30.0
KUBERNETES_VALIDATE_VERSION=1.37.0
BASE=deploy/k8s
VENV="${CARGO_TARGET_DIR:-target}/deploy-check/venv"


if ! command -v kubectl >/dev/null; then
    say "installing kubectl (Debian package kubernetes-client)"
    apt_install kubernetes-client
fi

venv_ready() {
    [ -x "$VENV/bin/kubernetes-validate" ] &&
        [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null)" = "$KUBERNETES_VALIDATE_VERSION" ]
}
if ! venv_ready; then
    say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION in $VENV"
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        apt_install python3-venv
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rendered="$work/rendered.yaml"

say "rendering $BASE ($(kubectl version --client 2>/dev/null | head -n 1))"
kubectl kustomize "$BASE" >"$rendered"

say "validating against Kubernetes $K8S_VERSION (kubernetes-validate $KUBERNETES_VALIDATE_VERSION, strict)"
"$VENV/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$K8S_VERSION" "$rendered"

say "checking the base against dispatchd's configuration"
"$VENV/bin/python" - "$rendered" config.toml "$BASE/README.md" <<'PY'
import re
import sys
import tomllib

import yaml

rendered, defaults_path, readme_path = sys.argv[1:4]
docs = [doc for doc in yaml.safe_load_all(open(rendered)) if doc]
with open(defaults_path, "rb") as f:
    defaults = tomllib.load(f)
failures = []
checks = 0


def check(ok, message):
    global checks
    checks += 1
    if not ok:
        failures.append(message)


def leaves(table, prefix=()):
    for key, value in table.items():
        if isinstance(value, dict):
            yield from leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def lookup(table, path):
    for key in path:
        if not isinstance(table, dict) or key not in table:
            return False, None
        table = table[key]
    return True, table


def merged(base, over):
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def quantity_bytes(text):
    units = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}
    number, unit = re.fullmatch(r"(\d+)([a-z]*)", text.strip().lower()).groups()
    # ingress-nginx passes proxy-body-size to nginx, where k and m are binary.
    unit = {"k": "ki", "m": "mi", "g": "gi"}.get(unit, unit)
    return int(number) * units[unit]


kinds = {}
for doc in docs:
    kinds.setdefault(doc["kind"], []).append(doc)
expected = {"ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress", "PodDisruptionBudget", "Service"}
check(set(kinds) == expected and all(len(v) == 1 for v in kinds.values()),
      f"expected one each of {sorted(expected)}, rendered {sorted((k, len(v)) for k, v in kinds.items())}")
one = {kind: items[0] for kind, items in kinds.items()}
deployment, service, ingress = one["Deployment"], one["Service"], one["Ingress"]
hpa, pdb, configmap = one["HorizontalPodAutoscaler"], one["PodDisruptionBudget"], one["ConfigMap"]
pod = deployment["spec"]["template"]["spec"]
pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
containers = pod["containers"]
check(len(containers) == 1, "the pod runs one container")
container = containers[0]

# The overlay: mounted where --config points, every key known, every value not a default.
args = container.get("args", [])
check("--config" in args, "the container passes --config")
config_path = args[args.index("--config") + 1] if "--config" in args else ""
mount_dir, _, config_file = config_path.rpartition("/")
volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
mounts = {mount["mountPath"].rstrip("/"): mount for mount in container.get("volumeMounts", [])}
mount = mounts.get(mount_dir)
check(mount is not None and "configMap" in volumes.get(mount["name"], {}),
      f"{config_path} is not in a mounted ConfigMap")
check(mount is not None and configmap["metadata"]["name"] == volumes[mount["name"]]["configMap"]["name"],
      "the config volume names the generated ConfigMap")
overlay = tomllib.loads(configmap["data"].get(config_file, ""))
for path, value in leaves(overlay):
    known, default = lookup(defaults, path)
    check(known, f"overlay key {'.'.join(path)} is not a setting of config.toml")
    check(not known or default != value, f"overlay key {'.'.join(path)} repeats its default")
effective = merged(defaults, overlay)

# The environment: every DISPATCHD__ variable names a setting; cluster mode with the pod's name.
env = {item["name"]: item for item in container.get("env", [])}
for name, item in env.items():
    if name.startswith("DISPATCHD__"):
        path = tuple(part.lower() for part in name[len("DISPATCHD__"):].split("__"))
        check(lookup(defaults, path)[0], f"{name} names no setting of config.toml")
check(env.get("DISPATCHD__CLUSTER__ENABLED", {}).get("value") == "true", "DISPATCHD__CLUSTER__ENABLED is \"true\"")
check(env.get("DISPATCHD__CLUSTER__NODE_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
      == "metadata.name", "DISPATCHD__CLUSTER__NODE_ID comes from metadata.name")

# Secrets: one Secret, only the keys README.md documents, the three the server needs required.
readme = open(readme_path).read()
section = readme.split("## Secret keys", 1)[1].split("\n## ", 1)[0] if "## Secret keys" in readme else ""
documented = set(re.findall(r"^\| `([A-Za-z0-9._-]+)` \|", section, re.M))
check(documented, "README.md documents the Secret's keys under \"## Secret keys\"")
used, required = set(), set()
for name, item in env.items():
    ref = item.get("valueFrom", {}).get("secretKeyRef")
    if ref:
        used.add(ref["key"])
        check(ref["name"] == "dispatchd", f"{name} reads Secret {ref['name']}, not dispatchd")
        check(ref["key"] in documented, f"{name} reads key {ref['key']}, not documented in README.md")
        if not ref.get("optional", False):
            required.add(ref["key"])
for volume in volumes.values():
    secret = volume.get("secret")
    if secret:
        check(secret["secretName"] == "dispatchd", f"volume {volume['name']} reads Secret {secret['secretName']}")
        for item in secret.get("items", []):
            used.add(item["key"])
            check(item["key"] in documented, f"volume {volume['name']} reads key {item['key']}, not documented")
check(required == {"jwt-secret", "database-url", "redis-url"}, f"required Secret keys are {sorted(required)}")
check(documented <= used, f"documented Secret keys nothing reads: {sorted(documented - used)}")

# Stopping: preStop sleep, then shutdown_timeout_secs for requests, then up to 5 s more.
shutdown = effective["server"]["shutdown_timeout_secs"]
pre_stop = container.get("lifecycle", {}).get("preStop", {})
command = pre_stop.get("exec", {}).get("command", [])
pause = int(command[1]) if command[:1] == ["sleep"] and len(command) == 2 else pre_stop.get("sleep", {}).get("seconds", 0)
check(pause > 0, "a preStop sleep lets endpoints forget the pod before SIGTERM")
grace = pod.get("terminationGracePeriodSeconds", 30)
check(grace > pause + shutdown + 5,
      f"terminationGracePeriodSeconds {grace} must exceed preStop {pause} + shutdown_timeout_secs {shutdown} + 5")

# Probes and ports.
port = int(effective["server"]["addr"].rsplit(":", 1)[1])
ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
check(ports.get("http") == port, f"container port http is server.addr's port {port}")
for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
    get = container.get(probe, {}).get("httpGet", {})
    check(get.get("path") == path, f"{probe} asks {get.get('path')}, not {path}")
    check(get.get("port") in ("http", port), f"{probe} asks port {get.get('port')}")
startup = container.get("startupProbe", {})
budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
check(budget >= 120, f"the startup probe allows {budget} s, too little for migrations")

# Non-root, read-only, no capabilities, RuntimeDefault seccomp; only emptyDirs written.
pod_security, security = pod.get("securityContext", {}), container.get("securityContext", {})
user = security.get("runAsUser", pod_security.get("runAsUser"))
check(security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, "runAsNonRoot is true")
check(user == 10001, f"runs as uid {user}, not 10001")
check(security.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem is true")
check(security.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation is false")
check("ALL" in security.get("capabilities", {}).get("drop", []), "all capabilities are dropped")
seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
check(seccomp.get("type") == "RuntimeDefault", "seccomp profile is RuntimeDefault")
for path, mount in mounts.items():
    if not mount.get("readOnly"):
        check("emptyDir" in volumes.get(mount["name"], {}), f"{path} is writable but not an emptyDir")

# Service, Ingress, autoscaler, disruption budget.
selects = lambda selector: all(pod_labels.get(k) == v for k, v in selector.items())
check(selects(service["spec"]["selector"]), "the Service selects the pods")
check(service["spec"].get("sessionAffinity") == "ClientIP", "the Service has sessionAffinity ClientIP")
service_ports = {p.get("name"): p for p in service["spec"]["ports"]}
check(all(p["targetPort"] in ports or p["targetPort"] == port for p in service_ports.values()),
      "the Service targets the container's port")
annotations = ingress["metadata"].get("annotations", {})
prefix = "nginx.ingress.kubernetes.io/"
check(annotations.get(prefix + "affinity") == "cookie", "the Ingress pins sessions with a cookie")
heartbeat = (effective["realtime"]["ping_interval_ms"] + effective["realtime"]["ping_timeout_ms"]) / 1000
for name in ("proxy-read-timeout", "proxy-send-timeout"):
    seconds = int(annotations.get(prefix + name, "60"))
    check(seconds > heartbeat, f"{name} {seconds} s is not above ping interval + timeout ({heartbeat:.0f} s)")
body = quantity_bytes(annotations.get(prefix + "proxy-body-size", "1m"))
largest = max(effective["realtime"]["max_polling_body_bytes"], effective["server"]["body_limit_bytes"])
check(body > largest, f"proxy-body-size {body} is not above what dispatchd accepts ({largest})")
if ingress["spec"].get("ingressClassName") == "nginx":
    check(effective["rate_limit"]["client_ip_header"] == "x-real-ip",
          "behind ingress-nginx rate_limit.client_ip_header should be x-real-ip")
for rule in ingress["spec"]["rules"]:
    for path in rule["http"]["paths"]:
        backend = path["backend"]["service"]
        check(backend["name"] == service["metadata"]["name"] and backend["port"].get("name") in service_ports,
              "the Ingress sends to the Service's port")
target = hpa["spec"]["scaleTargetRef"]
check(target["kind"] == "Deployment" and target["name"] == deployment["metadata"]["name"],
      "the autoscaler scales the Deployment")
check(hpa["spec"].get("minReplicas", 1) >= 2 and deployment["spec"].get("replicas", 1) >= 2, "at least 2 nodes")
check(selects(pdb["spec"]["selector"]["matchLabels"]), "the disruption budget selects the pods")

if failures:
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print(f"{len(failures)} of {checks} checks failed", file=sys.stderr)
    sys.exit(1)
print(f"all {checks} checks hold")
PY
say "deploy/k8s is valid for Kubernetes $K8S_VERSION"
