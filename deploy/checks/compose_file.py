"""deploy/compose.yaml against the Compose Specification schema. Run by deploy/check-k8s.sh:
  compose_file.py COMPOSE.yaml SCHEMA.json
"""
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
