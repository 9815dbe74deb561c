"""Splits a rendered kustomization into built-in kinds (for kubernetes-validate) and checks
the rest (CRD schemas, KEDA scaler parameters, termination grace). Run by deploy/check-k8s.sh:
  k8s_manifests.py RENDERED.yaml BUILTIN_OUT.yaml SCHEMAS_DIR
"""
import json, pathlib, re, sys
import jsonschema, yaml

rendered, builtin_out, schemas = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
docs = [d for d in yaml.safe_load_all(open(rendered)) if d is not None]
errors = []

def strict(s):
    """The CRD's structural schema as JSON Schema (draft 4), closed where Kubernetes prunes."""
    if not isinstance(s, dict):
        return s
    s = dict(s)
    if s.get("x-kubernetes-int-or-string") and "anyOf" not in s:
        s.pop("type", None)
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.get("nullable") and isinstance(s.get("type"), str):
        s["type"] = [s["type"], "null"]
    if "properties" in s:
        s["properties"] = {k: strict(v) for k, v in s["properties"].items()}
    for k in ("items", "additionalProperties", "not"):
        if isinstance(s.get(k), dict):
            s[k] = strict(s[k])
    for k in ("anyOf", "allOf", "oneOf"):
        if k in s:
            s[k] = [strict(x) for x in s[k]]
    if ("properties" in s and "additionalProperties" not in s
            and not s.get("x-kubernetes-preserve-unknown-fields")):
        s["additionalProperties"] = False
    return s

crds = {}
for f in sorted((schemas / "crds").glob("*.json")):
    c = json.load(open(f))
    crds[(c["apiVersion"], c["kind"])] = (f.name, c.get("served", False),
                                         jsonschema.Draft4Validator(strict(c["schema"])))
keda = {s["type"]: s["parameters"] for s in json.load(open(schemas / "keda-scalers.json"))["scalers"]}

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

def ident(d):
    md = d.get("metadata") or {}
    return f"{d.get('kind')}/{md.get('name')}"

def check_metadata(d, err):
    md = d.get("metadata")
    if not isinstance(md, dict):
        return err("metadata: missing")
    name = md.get("name")
    if not isinstance(name, str) or len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        err(f"metadata/name: {name!r} is not a DNS-1123 subdomain")
    ns = md.get("namespace")
    if ns is not None and (not isinstance(ns, str) or len(ns) > 63 or not DNS_LABEL.match(ns)):
        err(f"metadata/namespace: {ns!r} is not a DNS-1123 label")
    for m in ("labels", "annotations"):
        v = md.get(m, {})
        if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
            err(f"metadata/{m}: must map strings to strings")
    known = {"name", "namespace", "labels", "annotations", "generateName", "finalizers",
             "ownerReferences"}
    for k in md:
        if k not in known:
            err(f"metadata/{k}: unknown field")

def check_triggers(d, err):
    spec = d.get("spec") or {}
    ref = spec.get("scaleTargetRef") or {}
    kind = ref.get("kind", "Deployment")
    if not any(x.get("kind") == kind and (x.get("metadata") or {}).get("name") == ref.get("name")
               for x in docs):
        err(f"spec/scaleTargetRef: no {kind} {ref.get('name')!r} in the same kustomization")
    for i, t in enumerate(spec.get("triggers") or []):
        where = f"spec/triggers/{i} ({t.get('type')})"
        params = keda.get(t.get("type"))
        if params is None:
            err(f"{where}: no parameter schema for this scaler type in "
                "deploy/schemas/keda-scalers.json (add it in deploy/schemas/vendor.py)")
            continue
        md = t.get("metadata") or {}
        allowed = {p["name"]: p for p in params if p.get("metadataVariableReadable")}
        allowed.update({p["name"] + "FromEnv": p for p in params if p.get("envVariableReadable")})
        for k, v in md.items():
            p = allowed.get(k)
            if p is None:
                err(f"{where}: metadata/{k}: not a parameter of this scaler "
                    f"(known: {', '.join(sorted(allowed))})")
            elif p.get("deprecated"):
                err(f"{where}: metadata/{k}: deprecated: {p['deprecated']}")
            elif p.get("allowedValue") and not k.endswith("FromEnv") and v not in p["allowedValue"]:
                err(f"{where}: metadata/{k}: {v!r} not one of {p['allowedValue']}")
        for p in params:
            if p.get("optional") or "default" in p or p.get("deprecated"):
                continue
            if p["name"] in md or p["name"] + "FromEnv" in md:
                continue
            if "authenticationRef" in t and p.get("triggerAuthenticationVariableReadable"):
                continue
            err(f"{where}: metadata/{p['name']}: required")

builtin = []
for d in docs:
    key = (d.get("apiVersion"), d.get("kind"))
    err = lambda m, d=d: errors.append(f"{ident(d)}: {m}")
    if key not in crds:
        builtin.append(d)
        continue
    fname, served, validator = crds[key]
    if not served:
        err(f"{key[0]} is not served (deploy/schemas/crds/{fname})")
    for e in sorted(validator.iter_errors(d), key=lambda e: list(e.absolute_path)):
        err(f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}")
    check_metadata(d, err)
    if key[1] == "ScaledObject":
        check_triggers(d, err)
    print(f"  {ident(d)}: valid against deploy/schemas/crds/{fname}"
          + (" and deploy/schemas/keda-scalers.json" if key[1] == "ScaledObject" else ""))

# terminationGracePeriodSeconds >= drain + preStop sleep + margin, per workload.
MARGIN = 5
configmaps = {(x.get("metadata") or {}).get("name"): x.get("data") or {}
              for x in docs if x.get("kind") == "ConfigMap"}

def drain_of(pod_md, c):
    ann = (pod_md.get("annotations") or {}).get("exo/drain-seconds")
    if ann is not None:
        return int(ann), "annotation exo/drain-seconds"
    value, src = 20, "default"
    for ef in c.get("envFrom") or []:
        ref = ef.get("configMapRef")
        if not ref:
            continue
        data = configmaps.get(ref.get("name"))
        if data is None:
            print(f"  note: ConfigMap {ref.get('name')} is not rendered here; not read")
            continue
        for k, v in data.items():
            if ef.get("prefix", "") + k == "EXO_SHUTDOWN_GRACE_SECS":
                value, src = int(v), f"ConfigMap {ref['name']}"
    for e in c.get("env") or []:
        if e.get("name") != "EXO_SHUTDOWN_GRACE_SECS":
            continue
        if "value" in e:
            value, src = int(e["value"]), "env"
        else:
            ref = (e.get("valueFrom") or {}).get("configMapKeyRef") or {}
            data = configmaps.get(ref.get("name"), {})
            if ref.get("key") in data:
                value, src = int(data[ref["key"]]), f"ConfigMap {ref['name']}"
    return value, src

def prestop_of(c):
    pre = ((c.get("lifecycle") or {}).get("preStop")) or {}
    if "sleep" in pre:
        return int(pre["sleep"].get("seconds", 0))
    cmd = " ".join((pre.get("exec") or {}).get("command") or [])
    m = re.search(r"(?:^|[\s;&])sleep\s+(\d+)", cmd)
    return int(m.group(1)) if m else 0

for d in docs:
    if d.get("kind") not in ("Deployment", "StatefulSet"):
        continue
    tmpl = (d.get("spec") or {}).get("template") or {}
    pod = tmpl.get("spec") or {}
    grace = pod.get("terminationGracePeriodSeconds", 30)
    worst = None
    for c in pod.get("containers") or []:
        drain, src = drain_of(tmpl.get("metadata") or {}, c)
        pre = prestop_of(c)
        need = drain + pre + MARGIN
        if worst is None or need > worst[0]:
            worst = (need, c.get("name"), drain, src, pre)
    if worst is None:
        continue
    need, cname, drain, src, pre = worst
    line = (f"terminationGracePeriodSeconds {grace} vs drain {drain} s ({src}) + preStop "
            f"{pre} s + {MARGIN} s = {need} s (container {cname})")
    if grace < need:
        errors.append(f"{ident(d)}: {line}: too short")
    else:
        print(f"  {ident(d)}: {line}: ok")

yaml.safe_dump_all(builtin, open(builtin_out, "w"), sort_keys=False)
for e in errors:
    print(f"  FAIL {e}")
sys.exit(1 if errors else 0)
