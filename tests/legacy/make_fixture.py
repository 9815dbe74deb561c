"""Writes tests/legacy/upstream-mid-run.json: a database as upstream Exosphere
leaves it half-way through a run, written by upstream's own state manager.

Run against upstream's state manager (see ../shared/design/upstream-here.md and
docs/compatibility.md "An existing Exosphere database"):

    python tests/legacy/make_fixture.py --api http://127.0.0.1:18000 \
        --mongo 'mongodb://127.0.0.1:27990/?directConnection=true' --key bench-key

The script plays an HTTP runtime: it registers four nodes, upserts the graph
root -> split (fans out to 4) -> work -> merge (unites root, ALL_SUCCESS),
triggers one run, executes root and split, takes two of the four work states
and reports one of them. Then it dumps every collection (documents in
canonical extended JSON, and index specifications). The run is left with
one work state SUCCESS, one QUEUED (handed to a runtime that has not
reported yet), two CREATED and no merge state.
"""

import argparse
import json
import time
import urllib.request

from bson import json_util
from pymongo import MongoClient

NS = "legacy"
GRAPH = "fan"


def call(api, key, method, path, body=None):
    req = urllib.request.Request(
        api + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"x-api-key": key, "content-type": "application/json"},
    )
    with urllib.request.urlopen(req) as resp:
        return json.loads(resp.read() or b"null")


def schema(title, fields):
    return {
        "title": title,
        "type": "object",
        "properties": {f: {"title": f, "type": "string"} for f in fields},
        "required": list(fields),
    }


def take(api, key, node, n):
    for _ in range(100):
        got = call(api, key, "POST", f"/v0/namespace/{NS}/states/enqueue",
                   {"nodes": [node], "batch_size": n})["states"]
        if got:
            return got
        time.sleep(0.1)
    raise SystemExit(f"no {node} state was handed out")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--api", required=True)
    p.add_argument("--mongo", required=True)
    p.add_argument("--db", default="exosphere-state-manager")
    p.add_argument("--key", required=True)
    p.add_argument("--out", default="tests/legacy/upstream-mid-run.json")
    a = p.parse_args()
    nodes = [
        ("Root", [], ["seed"]),
        ("Split", ["seed"], ["item"]),
        ("Work", ["item"], ["done"]),
        ("Merge", ["seed"], ["total"]),
    ]
    call(a.api, a.key, "PUT", f"/v0/namespace/{NS}/nodes/", {
        "runtime_name": "legacy-rt",
        "nodes": [{"name": n, "inputs_schema": schema(n + "Inputs", i),
                   "outputs_schema": schema(n + "Outputs", o), "secrets": []}
                  for n, i, o in nodes],
    })
    call(a.api, a.key, "PUT", f"/v0/namespace/{NS}/graph/{GRAPH}", {
        "secrets": {},
        "nodes": [
            {"node_name": "Root", "namespace": NS, "identifier": "root",
             "inputs": {}, "next_nodes": ["split"]},
            {"node_name": "Split", "namespace": NS, "identifier": "split",
             "inputs": {"seed": "${{ root.outputs.seed }}"}, "next_nodes": ["work"]},
            {"node_name": "Work", "namespace": NS, "identifier": "work",
             "inputs": {"item": "${{ split.outputs.item }}"}, "next_nodes": ["merge"]},
            {"node_name": "Merge", "namespace": NS, "identifier": "merge",
             "inputs": {"seed": "${{ root.outputs.seed }}"}, "next_nodes": None,
             "unites": {"identifier": "root", "strategy": "ALL_SUCCESS"}},
        ],
    })
    for _ in range(100):
        g = call(a.api, a.key, "GET", f"/v0/namespace/{NS}/graph/{GRAPH}")
        if g["validation_status"] == "VALID":
            break
        if g["validation_status"] == "INVALID":
            raise SystemExit(f"graph invalid: {g['validation_errors']}")
        time.sleep(0.1)
    run = call(a.api, a.key, "POST", f"/v0/namespace/{NS}/graph/{GRAPH}/trigger",
               {"inputs": {}, "store": {}})["run_id"]
    [root] = take(a.api, a.key, "Root", 1)
    call(a.api, a.key, "POST", f"/v0/namespace/{NS}/state/{root['state_id']}/executed",
         {"outputs": [{"seed": "s"}]})
    [split] = take(a.api, a.key, "Split", 1)
    call(a.api, a.key, "POST", f"/v0/namespace/{NS}/state/{split['state_id']}/executed",
         {"outputs": [{"item": x} for x in "abcd"]})
    work = []
    while len(work) < 2:
        work += take(a.api, a.key, "Work", 2 - len(work))
    done = work[0]
    call(a.api, a.key, "POST", f"/v0/namespace/{NS}/state/{done['state_id']}/executed",
         {"outputs": [{"done": done["inputs"]["item"]}]})
    db = MongoClient(a.mongo)[a.db]
    # Wait for upstream's background task to mark the reported state SUCCESS.
    for _ in range(100):
        statuses = sorted(s["status"] for s in db["State"].find({"run_id": run}))
        if statuses == ["CREATED", "CREATED", "QUEUED", "SUCCESS", "SUCCESS",
                        "SUCCESS", "SUCCESS", "SUCCESS", "SUCCESS"]:
            break
        time.sleep(0.1)
    else:
        raise SystemExit(f"unexpected statuses {statuses}")
    out = {"run_id": run, "queued_state": work[1]["state_id"], "collections": {}}
    for name in sorted(db.list_collection_names()):
        c = db[name]
        out["collections"][name] = {
            "documents": [json.loads(json_util.dumps(d, json_options=json_util.CANONICAL_JSON_OPTIONS))
                          for d in c.find().sort("_id", 1)],
            "indexes": [json.loads(json_util.dumps(dict(i), json_options=json_util.CANONICAL_JSON_OPTIONS))
                        for i in c.list_indexes() if i["name"] != "_id_"],
        }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {a.out}: run {run}, collections {sorted(out['collections'])}")


if __name__ == "__main__":
    main()
