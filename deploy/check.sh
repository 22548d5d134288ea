#!/usr/bin/env bash
# Checks the observability configuration of the compose suite (run by `make compose-check`
# after `docker-compose config -q`), without a Docker engine or a running Prometheus:
#   - deploy/prometheus: promtool check config (+ the rules it loads), promtool test rules
#     (alerts.test.yml: synthetic series that must / must not fire each alert); the shape of
#     prometheus-kubernetes.yml (Debian's promtool lacks Kubernetes service discovery);
#   - every alert has severity and a runbook annotation whose anchor is a heading of
#     docs/runbook.md;
#   - deploy/grafana: provisioning YAML parses, the dashboard is valid JSON with unique
#     panel ids, and every panel query is valid PromQL (checked by promtool);
# promtool comes from Debian's `prometheus` package (installed when missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

apt_install() {
    apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y --no-install-recommends "$@" >/dev/null; }
}
command -v promtool >/dev/null 2>&1 || apt_install prometheus

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Prometheus: config (resolves rule_files), rules, rule unit tests.
promtool check config deploy/prometheus/prometheus.yml
promtool test rules deploy/prometheus/alerts.test.yml

# A Python that has PyYAML (Debian's python3 does once docker-compose is installed).
PY=""
for p in .local/venv/bin/python python3 /usr/bin/python3; do
    if "$p" -c 'import yaml' >/dev/null 2>&1; then PY="$p"; break; fi
done
[ -n "$PY" ] || { apt_install python3-yaml; PY=/usr/bin/python3; }

"$PY" - "$tmp/dashboard-rules.json" <<'PY'
import glob
import json
import re
import sys

import yaml

problems = []

# Alerts: severity + runbook anchor that exists in docs/runbook.md.
def slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"<[^>]+>", "", s)
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")

runbook = open("docs/runbook.md").read()
anchors = {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", runbook, re.M)}
anchors |= set(re.findall(r'<a (?:id|name)="([^"]+)"', runbook))
rules = yaml.safe_load(open("deploy/prometheus/alerts.yml"))
alerts = 0
for group in rules["groups"]:
    for r in group["rules"]:
        if "alert" not in r:
            continue
        alerts += 1
        name = r["alert"]
        if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            problems.append(f"alert {name}: severity label missing or unknown")
        if "for" not in r:
            problems.append(f"alert {name}: no `for:`")
        rb = r.get("annotations", {}).get("runbook", "")
        path, _, anchor = rb.partition("#")
        if path != "docs/runbook.md" or anchor not in anchors:
            problems.append(f"alert {name}: runbook {rb!r} is not a heading of docs/runbook.md")

# The in-cluster scrape config: Debian's promtool is built without Kubernetes service
# discovery, so only its shape is checked here.
kcfg = yaml.safe_load(open("deploy/prometheus/prometheus-kubernetes.yml"))
if not all("kubernetes_sd_configs" in j and "job_name" in j for j in kcfg.get("scrape_configs", [])):
    problems.append("deploy/prometheus/prometheus-kubernetes.yml: every scrape config needs job_name and kubernetes_sd_configs")

# Grafana provisioning + dashboards.
for f in glob.glob("deploy/grafana/provisioning/**/*.yml", recursive=True):
    doc = yaml.safe_load(open(f))
    if not isinstance(doc, dict) or doc.get("apiVersion") != 1:
        problems.append(f"{f}: not a Grafana provisioning file (apiVersion: 1)")
ds = yaml.safe_load(open("deploy/grafana/provisioning/datasources/datasources.yml"))
ds_uids = {d["uid"] for d in ds["datasources"]}
recording = []
dashboards = glob.glob("deploy/grafana/dashboards/*.json")
if not dashboards:
    problems.append("no dashboard in deploy/grafana/dashboards")
for f in dashboards:
    try:
        dash = json.load(open(f))
    except ValueError as e:
        problems.append(f"{f}: invalid JSON: {e}")
        continue
    ids = [p["id"] for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        problems.append(f"{f}: duplicate panel ids")
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    for p in dash["panels"]:
        uid = (p.get("datasource") or {}).get("uid")
        if uid and uid.strip("${}") not in variables and uid not in ds_uids:
            problems.append(f"{f}: panel {p['title']!r} uses unknown datasource {uid!r}")
        for t in p.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "5m").replace("$__interval", "1m")
            expr = re.sub(r"\$\{?(\w+)\}?", ".*", expr)
            recording.append({"record": f"dashboard:panel{p['id']}:{t['refId']}", "expr": expr})
json.dump({"groups": [{"name": "dashboard-queries", "rules": recording}]}, open(sys.argv[1], "w"))

for p in problems:
    print(f"deploy/check: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"{alerts} alerts with severity and runbook sections; {len(dashboards)} dashboard(s), {len(recording)} panel queries")
PY

# The dashboard's queries, as recording rules: promtool parses every expression.
promtool check rules "$tmp/dashboard-rules.json" >/dev/null
echo "deploy/prometheus and deploy/grafana are valid"
