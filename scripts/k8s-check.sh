#!/usr/bin/env bash
# Renders every kustomize overlay under k8s/overlays/ WITHOUT kubectl/kustomize, writes
# .local/k8s/<overlay>.yaml, checks the deployment rules of docs/runbook.md ("Deploying
# on Kubernetes") and validates the result against the Kubernetes schemas with
# `kubernetes-validate --strict`. Exits non-zero on any problem.
#
#   scripts/k8s-check.sh                  # all overlays
#   K8S_VERSION=1.31.0 scripts/k8s-check.sh
#   K8S_DIR=/tmp/k8s-copy scripts/k8s-check.sh   # check another tree (e.g. a broken copy)
#
# The renderer (Python, below) implements the subset of kustomize this repository uses and
# refuses anything else (so it never silently renders differently from kustomize):
#   resources (files, multi-document YAML, directories with a kustomization.yaml),
#   namespace, labels (includeSelectors: false; includeTemplates), images (newName,
#   newTag, digest), patches (strategic merge from `path:` or inline `patch:`, and
#   JSON 6902 add/remove/replace/test, with `target:` kind/name/namespace/group/version/
#   labelSelector). With kubectl at hand, `kubectl kustomize k8s/overlays/<env>` must give
#   the same objects.
#
# Needs python3 only: kubernetes-validate and PyYAML are installed into .local/venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

K8S_DIR="${K8S_DIR:-k8s}"
OUT_DIR="${K8S_OUT_DIR:-.local/k8s}"
K8S_VERSION="${K8S_VERSION:-1.30.0}"
VENV="${K8S_VENV:-.local/venv}"
KV_VERSION="1.37.0"

# --- tools ------------------------------------------------------------------------------
if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$KV_VERSION" \
    || ! "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
    echo "installing kubernetes-validate $KV_VERSION into $VENV" >&2
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's python3 needs python3-venv for `-m venv`.
        rm -rf "$VENV"
        (apt-get install -y python3-venv >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get install -y python3-venv >/dev/null; })
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION" pyyaml
fi
PY="$VENV/bin/python"
KV="$VENV/bin/kubernetes-validate"

# --- the validator must reject an invalid manifest (guards against a check that passes
# everything, e.g. a missing schema version) -----------------------------------------------
mkdir -p "$OUT_DIR"
cat >"$OUT_DIR/.invalid-sample.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: invalid-sample}
spec:
  selector: {matchLabels: {app: x}}
  template:
    metadata: {labels: {app: x}}
    spec:
      containers: [{name: x, image: x, notAField: true}]
EOF
if "$KV" --strict --quiet -k "$K8S_VERSION" "$OUT_DIR/.invalid-sample.yaml" >/dev/null 2>&1; then
    echo "k8s-check: kubernetes-validate accepted a manifest with an unknown field; refusing to trust it" >&2
    exit 1
fi
rm -f "$OUT_DIR/.invalid-sample.yaml"

# --- render + rules -----------------------------------------------------------------------
rm -f "$OUT_DIR"/*.yaml
status=0
"$PY" - "$K8S_DIR" "$OUT_DIR" <<'PY' || status=1
import copy
import os
import re
import sys

import yaml

k8s_dir, out_dir = sys.argv[1], sys.argv[2]


class RenderError(Exception):
    pass


CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass", "RuntimeClass",
    "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
}
WORKLOAD_TEMPLATE = {  # kind -> path of the pod template
    "Deployment": ["spec", "template"], "StatefulSet": ["spec", "template"],
    "DaemonSet": ["spec", "template"], "ReplicaSet": ["spec", "template"],
    "Job": ["spec", "template"], "CronJob": ["spec", "jobTemplate", "spec", "template"],
}
SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}


def load_docs(path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "metadata" not in d:
            raise RenderError(f"{path}: not a Kubernetes object: {str(d)[:80]}")
    return docs


def get_in(obj, path):
    for p in path:
        if not isinstance(obj, dict) or p not in obj:
            return None
        obj = obj[p]
    return obj


def ident(o):
    return (o["kind"], o["metadata"].get("name"))


# --- strategic merge patch (the common cases of k8s' own merge keys) -----------------------
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "env": "name", "volumes": "name", "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}


def list_merge_key(field, items):
    if field in MERGE_KEYS:
        return MERGE_KEYS[field]
    if field == "ports" and items and all(isinstance(i, dict) for i in items):
        if all("containerPort" in i for i in items):
            return "containerPort"
        if all("port" in i for i in items):
            return "port"
    return None


def smp(target, patch, where="patch"):
    if not isinstance(target, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    out = dict(target)
    for k, v in patch.items():
        if k.startswith("$"):
            raise RenderError(f"{where}: directive {k} is not supported")
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict):
            if v.get("$patch") == "delete":
                out.pop(k, None)
            else:
                out[k] = smp(out.get(k, {}), v, f"{where}.{k}")
        elif isinstance(v, list) and isinstance(out.get(k), list):
            key = list_merge_key(k, v + out[k])
            if key is None:
                out[k] = copy.deepcopy(v)
                continue
            merged = [copy.deepcopy(i) for i in out[k]]
            for item in v:
                if not isinstance(item, dict) or key not in item:
                    raise RenderError(f"{where}.{k}: list item without merge key {key!r}")
                idx = next((i for i, m in enumerate(merged) if m.get(key) == item[key]), None)
                if item.get("$patch") == "delete":
                    if idx is not None:
                        merged.pop(idx)
                elif idx is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[idx] = smp(merged[idx], item, f"{where}.{k}[{item[key]}]")
            out[k] = merged
        else:
            out[k] = copy.deepcopy(v)
    return out


# --- JSON 6902 ------------------------------------------------------------------------------
def pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise RenderError(f"JSON pointer must start with '/': {path}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def walk(doc, parts, path):
    for p in parts:
        if isinstance(doc, list):
            try:
                doc = doc[int(p)]
            except (ValueError, IndexError):
                raise RenderError(f"json patch: no element {p!r} in {path}")
        elif isinstance(doc, dict) and p in doc:
            doc = doc[p]
        else:
            raise RenderError(f"json patch: {path} does not exist")
    return doc


def json6902(doc, ops, where):
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path")
        parts = pointer(path)
        if not parts:
            raise RenderError(f"{where}: patching the whole document is not supported")
        parent = walk(doc, parts[:-1], path)
        last = parts[-1]
        if kind == "add":
            if isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
            else:
                parent[last] = copy.deepcopy(op["value"])
        elif kind in ("replace", "remove", "test"):
            if isinstance(parent, list):
                i = int(last)
                if i >= len(parent):
                    raise RenderError(f"{where}: {path} does not exist")
            elif last not in parent:
                raise RenderError(f"{where}: {path} does not exist")
            else:
                i = last
            if kind == "replace":
                parent[i] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[i]
            elif parent[i] != op["value"]:
                raise RenderError(f"{where}: test failed at {path}")
        else:
            raise RenderError(f"{where}: op {kind!r} is not supported")
    return doc


def matches(obj, target):
    api = obj.get("apiVersion", "")
    group, _, version = api.rpartition("/")
    checks = {
        "kind": obj["kind"], "name": obj["metadata"].get("name", ""),
        "namespace": obj["metadata"].get("namespace", ""), "group": group, "version": version,
    }
    for key, value in target.items():
        if key in checks:
            if not re.fullmatch(str(value), checks[key]):
                return False
        elif key == "labelSelector":
            labels = obj["metadata"].get("labels") or {}
            for term in str(value).split(","):
                k, sep, v = term.strip().partition("=")
                if not sep or k.endswith("!"):
                    raise RenderError(f"labelSelector {value!r}: only k=v terms are supported")
                if labels.get(k.strip()) != v.strip().lstrip("="):
                    return False
        else:
            raise RenderError(f"patch target field {key!r} is not supported")
    return True


def apply_patches(objs, patches, base_dir):
    for n, p in enumerate(patches or []):
        where = f"{base_dir}: patches[{n}]"
        unknown = set(p) - {"path", "patch", "target"}
        if unknown:
            raise RenderError(f"{where}: {sorted(unknown)} not supported")
        if "path" in p:
            with open(os.path.join(base_dir, p["path"])) as f:
                text = f.read()
            where += f" ({p['path']})"
        else:
            text = p["patch"]
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
        target = p.get("target")
        if docs and isinstance(docs[0], list):
            if len(docs) != 1 or not target:
                raise RenderError(f"{where}: a JSON 6902 patch needs exactly one op list and a target")
            hits = [i for i, o in enumerate(objs) if matches(o, target)]
            if not hits:
                raise RenderError(f"{where}: target {target} matches nothing")
            for i in hits:
                objs[i] = json6902(objs[i], docs[0], where)
            continue
        for d in docs:
            if target:
                hits = [i for i, o in enumerate(objs) if matches(o, target)]
            else:
                hits = [i for i, o in enumerate(objs)
                        if ident(o) == ident(d)
                        and d["metadata"].get("namespace") in (None, o["metadata"].get("namespace"))]
            if not hits:
                raise RenderError(f"{where}: {ident(d)} matches no resource")
            if target:  # the patch applies to every target, whatever name it carries
                d = copy.deepcopy(d)
                d.get("metadata", {}).pop("name", None)
            for i in hits:
                objs[i] = smp(objs[i], d, where)
    return objs


def set_image(container, images):
    image = container.get("image", "")
    name, digest = image, None
    if "@" in name:
        name, digest = name.split("@", 1)
    tag = None
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    for im in images:
        if im["name"] != name:
            continue
        unknown = set(im) - {"name", "newName", "newTag", "digest"}
        if unknown:
            raise RenderError(f"images: {sorted(unknown)} not supported")
        name = im.get("newName", name)
        if "newTag" in im:
            tag, digest = str(im["newTag"]), None
        if "digest" in im:
            tag, digest = None, im["digest"]
        container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
        return


def render(kdir):
    kfile = os.path.join(kdir, "kustomization.yaml")
    if not os.path.exists(kfile):
        raise RenderError(f"{kdir}: no kustomization.yaml")
    with open(kfile) as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - SUPPORTED_KEYS
    if unknown:
        raise RenderError(f"{kfile}: {sorted(unknown)} not supported by this renderer "
                          "(extend scripts/k8s-check.sh or keep the overlays simple)")
    objs = []
    for r in k.get("resources", []):
        path = os.path.join(kdir, r)
        if "://" in r or r.startswith("github.com/"):
            raise RenderError(f"{kfile}: remote resource {r} not supported")
        objs += render(path) if os.path.isdir(path) else load_docs(path)
    seen = set()
    for o in objs:
        key = (ident(o), o["metadata"].get("namespace"))
        if key in seen:
            raise RenderError(f"{kfile}: duplicate resource {key}")
        seen.add(key)
    objs = apply_patches(objs, k.get("patches"), kdir)
    ns = k.get("namespace")
    if ns:
        for o in objs:
            if o["kind"] == "Namespace":
                o["metadata"]["name"] = ns
            elif o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = ns
    for spec in k.get("labels", []) or []:
        if spec.get("includeSelectors"):
            raise RenderError(f"{kfile}: labels with includeSelectors are not supported")
        unknown = set(spec) - {"pairs", "includeSelectors", "includeTemplates"}
        if unknown:
            raise RenderError(f"{kfile}: labels {sorted(unknown)} not supported")
        pairs = {str(a): str(b) for a, b in spec["pairs"].items()}
        for o in objs:
            o["metadata"].setdefault("labels", {}).update(pairs)
            tpl = get_in(o, WORKLOAD_TEMPLATE.get(o["kind"], ["-"]))
            if spec.get("includeTemplates") and tpl is not None:
                tpl.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    images = k.get("images") or []
    for o in objs:
        tpl = get_in(o, WORKLOAD_TEMPLATE.get(o["kind"], ["-"]))
        pod = tpl.get("spec") if tpl else (o.get("spec") if o["kind"] == "Pod" else None)
        for c in (pod or {}).get("initContainers", []) + (pod or {}).get("containers", []):
            set_image(c, images)
    return objs


# kustomize's "legacy" output order (kinds first/last), then kind and name.
ORDER_FIRST = ["Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition",
               "ServiceAccount", "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding",
               "ClusterRoleBinding", "ConfigMap", "Secret", "Endpoints", "Service",
               "LimitRange", "PriorityClass", "PersistentVolume", "PersistentVolumeClaim",
               "Deployment", "StatefulSet", "CronJob", "PodDisruptionBudget"]
ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


def order(o):
    kind = o["kind"]
    rank = (ORDER_FIRST.index(kind) if kind in ORDER_FIRST
            else 1000 + ORDER_LAST.index(kind) if kind in ORDER_LAST else 500)
    return (rank, kind, o["metadata"].get("namespace") or "", o["metadata"].get("name"))


# --- the deployment rules this repository promises (docs/runbook.md) ------------------------
def env_of(container, configmaps):
    env = {}
    for ef in container.get("envFrom", []):
        ref = ef.get("configMapRef")
        if ref and ref["name"] in configmaps:
            env.update(configmaps[ref["name"]].get("data") or {})
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", e.get("valueFrom"))
    return env


SECRET_NAME = re.compile(r"SECRET|_TOKEN$|PASSWORD|PRIVATE_KEY|DATABASE__URL|REDIS__URL")


def rules(objs):
    problems = []
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    configmaps = {o["metadata"]["name"]: o for o in by_kind.get("ConfigMap", [])}
    hpa_targets = {get_in(h, ["spec", "scaleTargetRef", "name"]) for h in by_kind.get("HorizontalPodAutoscaler", [])}
    for s in by_kind.get("Secret", []):
        if s.get("data") or s.get("stringData"):
            problems.append(f"Secret {s['metadata']['name']} carries values: secrets are referenced, never committed")
    for cm in configmaps.values():
        for k, v in (cm.get("data") or {}).items():
            if k == "PARLEY__AUTH__DEV_TOKENS" and str(v).lower() != "false":
                problems.append(f"ConfigMap {cm['metadata']['name']}: dev tokens must be off")
            if SECRET_NAME.search(k):
                problems.append(f"ConfigMap {cm['metadata']['name']}: {k} must come from a Secret")
    if not any(n["spec"].get("podSelector") in ({}, None) and "Ingress" in n["spec"].get("policyTypes", [])
               and not n["spec"].get("ingress") for n in by_kind.get("NetworkPolicy", [])):
        problems.append("no default-deny ingress NetworkPolicy")
    for d in by_kind.get("Deployment", []):
        name = d["metadata"]["name"]
        spec, pod = d["spec"], d["spec"]["template"]["spec"]
        labels = d["spec"]["template"]["metadata"].get("labels", {})
        ru = get_in(spec, ["strategy", "rollingUpdate"]) or {}
        if get_in(spec, ["strategy", "type"]) != "RollingUpdate" or ru.get("maxSurge") != 1 or ru.get("maxUnavailable") != 0:
            problems.append(f"Deployment {name}: strategy must be RollingUpdate maxSurge 1, maxUnavailable 0")
        if name not in hpa_targets:
            problems.append(f"Deployment {name}: no HorizontalPodAutoscaler")
        elif "replicas" in spec:
            problems.append(f"Deployment {name}: sets replicas although an HPA owns it")

        def selects(sel):
            return bool(sel) and all(labels.get(k) == v for k, v in sel.items())

        if not any(selects(get_in(p, ["spec", "selector", "matchLabels"])) for p in by_kind.get("PodDisruptionBudget", [])):
            problems.append(f"Deployment {name}: no PodDisruptionBudget")
        if not any(selects(get_in(s, ["spec", "selector"])) for s in by_kind.get("Service", [])):
            problems.append(f"Deployment {name}: no Service")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        for c in pod.get("initContainers", []) + pod["containers"]:
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(kind) or {}):
                        problems.append(f"Deployment {name}/{c['name']}: no resources.{kind}.{r}")
            for e in c.get("env", []):
                if "value" in e and SECRET_NAME.search(e["name"]):
                    problems.append(f"Deployment {name}/{c['name']}: {e['name']} must come from a Secret")
        for c in pod["containers"]:
            cn = f"Deployment {name}/{c['name']}"
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    problems.append(f"{cn}: no {probe}")
            cmd = get_in(c, ["lifecycle", "preStop", "exec", "command"]) or []
            sleep = get_in(c, ["lifecycle", "preStop", "sleep", "seconds"])
            if sleep is None and len(cmd) == 2 and cmd[0] == "sleep":
                sleep = int(cmd[1])
            if sleep is None:
                problems.append(f"{cn}: no preStop sleep")
                sleep = 0
            env = env_of(c, configmaps)
            delay = max(int(env.get("PARLEY__HTTP__DRAIN_DELAY_MS", 0) or 0),
                        int(env.get("PARLEY__GRPC__DRAIN_DELAY_MS", 0) or 0)) / 1000
            timeout = int(env.get("PARLEY__HTTP__DRAIN_TIMEOUT_MS", 0) or 0) / 1000
            if delay <= 0:
                problems.append(f"{cn}: no drain delay (PARLEY__HTTP__/GRPC__DRAIN_DELAY_MS): readiness would not fail before the drain")
            if grace <= sleep + delay + timeout:
                problems.append(f"{cn}: terminationGracePeriodSeconds {grace} <= preStop {sleep}s + drain {delay + timeout:g}s")
            if name == "gateway" and str(env.get("PARLEY__AUTH__DEV_TOKENS", "")).lower() != "false":
                problems.append(f"{cn}: PARLEY__AUTH__DEV_TOKENS must be \"false\" (dev tokens off)")
            image = c.get("image", "")
            if not re.search(r"(:[^/]+|@sha256:[0-9a-f]+)$", image) or image.endswith(":latest"):
                problems.append(f"{cn}: image {image!r} needs a pinned tag or digest")
    return problems


overlays_dir = os.path.join(k8s_dir, "overlays")
overlays = sorted(d for d in os.listdir(overlays_dir)
                  if os.path.exists(os.path.join(overlays_dir, d, "kustomization.yaml")))
if not overlays:
    sys.exit(f"k8s-check: no overlays under {overlays_dir}")
failed = False
for ov in overlays:
    try:
        objs = sorted(render(os.path.join(overlays_dir, ov)), key=order)
    except (RenderError, OSError, yaml.YAMLError, KeyError, TypeError) as e:
        print(f"k8s-check: {ov}: cannot render: {e}", file=sys.stderr)
        failed = True
        continue
    path = os.path.join(out_dir, f"{ov}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump_all(objs, f, sort_keys=True, default_flow_style=False)
    problems = rules(objs)
    for p in problems:
        print(f"k8s-check: {ov}: {p}", file=sys.stderr)
    failed |= bool(problems)
    print(f"rendered {ov}: {len(objs)} objects -> {path}" + (f" ({len(problems)} rule violations)" if problems else ""))
sys.exit(1 if failed else 0)
PY

# --- schemas (of whatever rendered, even after rule violations) ---------------------------
for f in "$OUT_DIR"/*.yaml; do
    [ -e "$f" ] || continue
    if "$KV" --strict --quiet -k "$K8S_VERSION" "$f"; then
        echo "valid against Kubernetes $K8S_VERSION (strict): $f"
    else
        status=1
    fi
done
if [ "$status" -ne 0 ]; then
    echo "k8s-check: FAILED" >&2
fi
exit "$status"
