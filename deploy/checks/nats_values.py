"""Every key path of our NATS Helm values exists in the chart's values (below merge/patch and
free-form maps excepted). Run by deploy/check-k8s.sh: nats_values.py OURS.yaml CHART.yaml
"""
import sys, yaml
ours = yaml.safe_load(open(sys.argv[1])) or {}
chart = yaml.safe_load(open(sys.argv[2]))
errors = []
def walk(o, c, path):
    for k, v in o.items():
        p = path + [str(k)]
        if not isinstance(c, dict) or k not in c:
            errors.append(f"{'.'.join(p)}: not a value of the chart")
            continue
        cv = c[k]
        if k in ("merge", "patch"):
            if type(v) is not type(cv):
                errors.append(f"{'.'.join(p)}: must be a {type(cv).__name__}")
            continue  # nats.conf / Kubernetes YAML, free-form
        if isinstance(cv, dict):
            if not isinstance(v, dict):
                errors.append(f"{'.'.join(p)}: the chart has a map here")
            elif cv:  # a map the chart leaves empty is free-form
                walk(v, cv, p)
        elif isinstance(cv, list) and not isinstance(v, list):
            errors.append(f"{'.'.join(p)}: the chart has a list here")
        elif isinstance(cv, bool) and not isinstance(v, bool):
            errors.append(f"{'.'.join(p)}: the chart has a boolean here")
walk(ours, chart, [])
for e in errors:
    print("  FAIL " + e)
sys.exit(1 if errors else 0)
