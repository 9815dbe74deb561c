#!/usr/bin/env python3
"""Re-vendors the third-party schemas that deploy/check-k8s.sh validates against, from
local git mirrors of the upstream repositories (default /work/.mirror/<owner>+<name>/repo;
MIRROR=<dir> to change), at the mirror's HEAD:

  crds/<group>_<version>_<Kind>.json   spec.versions[].schema.openAPIV3Schema of a CRD
  keda-scalers.json                    KEDA's generated scaler parameter schema (subset)
  nats-chart-values.yaml               the NATS Helm chart's values.yaml

Each output records its source repository, path and commit. Needs PyYAML:
  .tools/k8s/bin/python deploy/schemas/vendor.py
"""
import json
import os
import pathlib
import subprocess

import yaml

HERE = pathlib.Path(__file__).resolve().parent
MIRROR = pathlib.Path(os.environ.get("MIRROR", "/work/.mirror"))

CRDS = [
    ("kedacore/keda", "config/crd/bases/keda.sh_scaledobjects.yaml"),
    ("mongodb/mongodb-kubernetes-operator",
     "config/crd/bases/mongodbcommunity.mongodb.com_mongodbcommunity.yaml"),
]
# KEDA scaler types used by k8s/**; add a type here when a ScaledObject starts using it.
SCALERS = ("kedacore/keda", "schema/generated/scalers-schema.json", ["nats-jetstream", "prometheus"])
NATS_VALUES = ("nats-io/k8s", "helm/charts/nats/values.yaml")


def git(repo, *args):
    gitdir = MIRROR / repo.replace("/", "+") / "repo"
    return subprocess.check_output(["git", "-C", str(gitdir), *args], text=True)


def source(repo, path):
    return {"repository": f"https://github.com/{repo}", "path": path,
            "commit": git(repo, "log", "-1", "--format=%H").strip()}


def show(repo, path):
    return git(repo, "show", f"HEAD:{path}")


def main():
    for repo, path in CRDS:
        crd = yaml.safe_load(show(repo, path))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            out = HERE / "crds" / f"{group}_{v['name']}_{kind}.json"
            doc = {"source": source(repo, path), "apiVersion": f"{group}/{v['name']}",
                   "kind": kind, "served": v.get("served", False),
                   "schema": v["schema"]["openAPIV3Schema"]}
            out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
            print("wrote", out.relative_to(HERE.parent.parent))

    repo, path, types = SCALERS
    full = json.loads(show(repo, path))
    doc = {"source": source(repo, path), "kedaVersion": full["kedaVersion"],
           "scalers": [s for s in full["scalers"] if s["type"] in types]}
    missing = set(types) - {s["type"] for s in doc["scalers"]}
    assert not missing, f"scaler types not in {path}: {missing}"
    out = HERE / "keda-scalers.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print("wrote", out.relative_to(HERE.parent.parent))

    repo, path = NATS_VALUES
    src = source(repo, path)
    chart = yaml.safe_load(show(repo, str(pathlib.PurePosixPath(path).parent / "Chart.yaml")))
    header = (f"# Vendored from {src['repository']} {src['path']} (chart {chart['name']} "
              f"{chart['version']})\n# at commit {src['commit']} by deploy/schemas/vendor.py; "
              "do not edit.\n# deploy/check-k8s.sh checks k8s/nats/values.yaml against its keys.\n")
    out = HERE / "nats-chart-values.yaml"
    out.write_text(header + show(repo, path))
    print("wrote", out.relative_to(HERE.parent.parent))


if __name__ == "__main__":
    main()
