#!/usr/bin/env bash
# Checks deploy/ with the tools a machine here has: promtool (config, rules, the alert rules'
# unit tests), systemd-analyze (the unit), and parsers for the dashboard JSON, the compose file
# and the Kubernetes manifests (kubectl kustomize renders them when kubectl is installed).
# Docker itself is not run: building the image and starting the compose file need a daemon.
# Expects target/debug/dpsd (scripts/test.sh builds it first).
set -euo pipefail
cd "$(dirname "$0")/.."

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml
# The compose file's Prometheus config, next to the rules it mounts.
cp deploy/compose/prometheus.yml deploy/prometheus/alerts.yml "$tmp/"
promtool check config "$tmp/prometheus.yml"

# systemd-analyze verify wants ExecStart's binary to exist: point it at the one just built.
sed "s|/usr/local/bin/dpsd|$PWD/target/debug/dpsd|" deploy/systemd/dpsd.service >"$tmp/dpsd.service"
systemd-analyze verify "$tmp/dpsd.service"

python3 - <<'PY'
import json, sys, yaml

def fail(why):
    sys.exit(f"deploy check: {why}")

dash = json.load(open("deploy/grafana/dpsd.json"))
variables = {v["name"]: v for v in dash["templating"]["list"]}
if variables.get("datasource", {}).get("type") != "datasource":
    fail("grafana: no datasource variable")
for panel in dash["panels"]:
    if panel["type"] == "row":
        continue
    for target in [panel] + panel["targets"]:
        if target["datasource"] != {"type": "prometheus", "uid": "${datasource}"}:
            fail(f"grafana: panel {panel['title']!r} does not use the datasource variable")
    if not all(t["expr"] for t in panel["targets"]):
        fail(f"grafana: panel {panel['title']!r} has an empty query")

compose = yaml.safe_load(open("deploy/compose/compose.yaml"))
if set(compose["services"]) != {"dpsd", "rabbitmq", "prometheus"}:
    fail("compose: services are not dpsd, rabbitmq, prometheus")
known = {"build", "image", "restart", "depends_on", "ports", "volumes", "ulimits",
         "stop_grace_period", "command"}
for name, service in compose["services"].items():
    if set(service) - known:
        fail(f"compose: {name} has unexpected keys {set(service) - known}")
for name, service in compose["services"].items():
    for volume in service.get("volumes", []):
        source = volume.split(":")[0]
        if not source.startswith(".") and source not in compose["volumes"]:
            fail(f"compose: {name} mounts undeclared volume {source}")

docs = []
for f in ["namespace", "statefulset", "services"]:
    docs += [d for d in yaml.safe_load_all(open(f"deploy/kubernetes/{f}.yaml")) if d]
for d in docs:
    if not (d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name")):
        fail(f"kubernetes: a manifest lacks apiVersion, kind or metadata.name: {d}")
sts = next(d for d in docs if d["kind"] == "StatefulSet")
container = sts["spec"]["template"]["spec"]["containers"][0]
ports = {p["name"] for p in container["ports"]}
for probe in ["livenessProbe", "readinessProbe", "startupProbe"]:
    if container[probe]["httpGet"]["port"] not in ports:
        fail(f"kubernetes: {probe} names an unknown port")
for svc in (d for d in docs if d["kind"] == "Service"):
    for p in svc["spec"]["ports"]:
        if p["targetPort"] not in ports:
            fail(f"kubernetes: service {svc['metadata']['name']} targets unknown port {p['targetPort']}")
print("deploy check: grafana, compose and kubernetes files are consistent")
PY

if command -v kubectl >/dev/null; then
  kubectl kustomize deploy/kubernetes >/dev/null
fi
echo "deploy check: ok"
