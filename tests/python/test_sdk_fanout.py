"""Fan-out (a node returning a list) and fan-in (`unites`), driven through
the official SDK."""

import asyncio
import os
from collections import Counter

from pydantic import BaseModel

from exospherehost import BaseNode, GraphNodeModel, UnitesModel, UnitesStrategyEnum

from exo_helpers import Api, Calls, namespace, running, state_manager, wait_run

CALLS = Calls()
#: Fan-out width of the main scenario (EXO_TEST_FAN_WIDTH to stress it by hand).
WIDTH = int(os.environ.get("EXO_TEST_FAN_WIDTH", "30"))


class Start(BaseNode):
    class Inputs(BaseModel):
        seed: str

    class Outputs(BaseModel):
        seed: str

    async def execute(self):
        CALLS.record("Start", self.inputs)
        return self.Outputs(seed=f"<{self.inputs.seed}>")


class Split(BaseNode):
    class Inputs(BaseModel):
        seed: str
        count: str

    class Outputs(BaseModel):
        item: str

    async def execute(self):
        CALLS.record("Split", self.inputs)
        return [self.Outputs(item=f"{self.inputs.seed}#{i}") for i in range(int(self.inputs.count))]


class Work(BaseNode):
    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        result: str

    async def execute(self):
        CALLS.record("Work", self.inputs)
        await asyncio.sleep(0.01)
        return self.Outputs(result=self.inputs.item.upper())


class Merge(BaseNode):
    class Inputs(BaseModel):
        seed: str
        label: str

    class Outputs(BaseModel):
        summary: str

    async def execute(self):
        CALLS.record("Merge", self.inputs)
        return self.Outputs(summary=f"{self.inputs.label} {self.inputs.seed}")


class Nothing(BaseNode):
    """Returns None: executed with no outputs, so no fan-out and an empty
    outputs object."""

    class Inputs(BaseModel):
        seed: str

    async def execute(self):
        CALLS.record("Nothing", self.inputs)
        return None


NODES = [Start, Split, Work, Merge, Nothing]


def graph(ns: str, width: int) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(node_name="Start", namespace=ns, identifier="start",
                       inputs={"seed": "s"}, next_nodes=["split"]),
        GraphNodeModel(node_name="Split", namespace=ns, identifier="split",
                       inputs={"seed": "${{ start.outputs.seed }}", "count": str(width)},
                       next_nodes=["work"]),
        GraphNodeModel(node_name="Work", namespace=ns, identifier="work",
                       inputs={"item": "${{ split.outputs.item }}"}, next_nodes=["merge"]),
        GraphNodeModel(node_name="Merge", namespace=ns, identifier="merge",
                       inputs={"seed": "${{ start.outputs.seed }}", "label": "merged"},
                       next_nodes=["after"],
                       unites=UnitesModel(identifier="start")),
        GraphNodeModel(node_name="Nothing", namespace=ns, identifier="after",
                       inputs={"seed": "${{ merge.outputs.summary }}"}),
    ]


def test_fan_out_and_unite():
    asyncio.run(fan_out_and_unite())


async def fan_out_and_unite():
    ns = namespace("fan")
    api = Api(ns)
    sm = state_manager(ns)
    async with running(ns, NODES, workers=8, batch_size=16) as rt:
        g = await sm.upsert_graph("fan", graph(ns, WIDTH), {}, polling_interval=0.2)
        assert g["nodes"][3]["unites"] == {"identifier": "start", "strategy": "ALL_SUCCESS"}
        run_id = (await sm.trigger("fan"))["run_id"]
        run = await wait_run(api, run_id, rt)

        # start 1 + split 1+5 siblings + work 6 + merge 1 + after 1
        total = 1 + WIDTH + WIDTH + 1 + 1
        assert run["status"] == "SUCCESS", run
        assert (run["total_count"], run["success_count"], run["pending_count"],
                run["errored_count"], run["retried_count"]) == (total, total, 0, 0, 0)

        # Each node ran as often as it has states; the unite node exactly once,
        # after every branch.
        assert CALLS.count("Start") == 1
        assert CALLS.count("Split") == 1
        assert CALLS.count("Work") == WIDTH
        assert CALLS.count("Merge") == 1
        assert CALLS.count("Nothing") == 1
        assert CALLS.times("Merge")[0] > max(CALLS.times("Work"))
        assert CALLS.inputs("Merge") == [{"seed": "<s>", "label": "merged"}]
        assert CALLS.inputs("Nothing") == [{"seed": "merged <s>"}]
        items = sorted(f"<s>#{i}" for i in range(WIDTH))
        assert sorted(i["item"] for i in CALLS.inputs("Work")) == items

        # The run's graph: counts per identifier and status, edges to the
        # direct parent, the unite state hanging off its target.
        st = await api.structure(run_id)
        assert st["graph_name"] == "fan"
        per_id = Counter(n["identifier"] for n in st["nodes"])
        assert per_id == {"start": 1, "split": WIDTH, "work": WIDTH, "merge": 1, "after": 1}
        assert st["node_count"] == total
        assert st["execution_summary"] == {
            "CREATED": 0, "QUEUED": 0, "EXECUTED": 0, "SUCCESS": total, "ERRORED": 0,
            "NEXT_CREATED_ERROR": 0, "PRUNED": 0, "RETRY_CREATED": 0}
        assert [r["identifier"] for r in st["root_states"]] == ["start"]
        ids = {n["id"]: n["identifier"] for n in st["nodes"]}
        edges = Counter((ids[e["source"]], ids[e["target"]]) for e in st["edges"])
        assert edges == {("start", "split"): WIDTH, ("split", "work"): WIDTH,
                         ("start", "merge"): 1, ("merge", "after"): 1}
        assert st["edge_count"] == total - 1

        # Fan-out: every split state holds one output; siblings share inputs
        # and parents.
        splits = await api.states("fan", run_id, "split")
        assert sorted(s["outputs"]["item"] for s in splits) == items
        assert len({str(s["inputs"]) for s in splits}) == 1
        assert len({str(s["parents"]) for s in splits}) == 1
        works = await api.states("fan", run_id, "work")
        assert sorted(w["outputs"]["result"] for w in works) == [i.upper() for i in items]
        for w in works:
            assert list(w["parents"]) == ["start", "split"]
        [merge] = await api.states("fan", run_id, "merge")
        assert merge["outputs"] == {"summary": "merged <s>"}
        start_id = next(i for i, name in ids.items() if name == "start")
        assert merge["parents"] == {"start": start_id}
        [after] = await api.states("fan", run_id, "after")
        assert after["outputs"] == {}

        # Upstream's integration test: the run list carries the counters.
        runs = await api.get(api.p("/runs/1/100"))
        [item] = [r for r in runs["runs"] if r["run_id"] == run_id]
        assert item["graph_name"] == "fan"
        assert (item["success_count"], item["pending_count"], item["errored_count"],
                item["retried_count"], item["total_count"], item["status"]) == (
                    total, 0, 0, 0, total, "SUCCESS")


def test_unite_all_done_over_two_runs():
    """Two concurrent runs of the same graph: each gets its own unite state."""
    asyncio.run(two_runs())


async def two_runs():
    ns = namespace("fan2")
    api = Api(ns)
    sm = state_manager(ns)
    nodes = graph(ns, 3)
    nodes[3] = GraphNodeModel(node_name="Merge", namespace=ns, identifier="merge",
                              inputs={"seed": "${{ start.outputs.seed }}", "label": "done"},
                              unites=UnitesModel(identifier="start",
                                                 strategy=UnitesStrategyEnum.ALL_DONE))
    del nodes[4]
    before = CALLS.count("Merge")
    async with running(ns, NODES, workers=8, batch_size=16) as rt:
        await sm.upsert_graph("fan", nodes, {}, polling_interval=0.2)
        a = (await sm.trigger("fan", inputs={"seed": "a"}))["run_id"]
        b = (await sm.trigger("fan", inputs={"seed": "b"}))["run_id"]
        for run_id in (a, b):
            run = await wait_run(api, run_id, rt)
            assert run["status"] == "SUCCESS", run
            assert run["total_count"] == 1 + 3 + 3 + 1
            [merge] = await api.states("fan", run_id, "merge")
            assert merge["status"] == "SUCCESS"
        assert sorted(i["seed"] for i in CALLS.inputs("Merge")[before:]) == ["<a>", "<b>"]


def test_two_runtime_replicas_share_the_work():
    """Two SDK runtimes serving the same nodes poll concurrently: every
    state is handed to exactly one of them."""
    asyncio.run(two_replicas())


async def two_replicas():
    ns = namespace("replicas")
    api = Api(ns)
    sm = state_manager(ns)
    width = 40
    before = Counter(i["item"] for i in CALLS.inputs("Work"))
    async with running(ns, NODES, name="replica-a", workers=4, batch_size=4) as a, \
            running(ns, NODES, name="replica-b", workers=4, batch_size=4) as b:
        await sm.upsert_graph("fan", graph(ns, width), {}, polling_interval=0.2)
        run_id = (await sm.trigger("fan", inputs={"seed": "r"}))["run_id"]
        run = await wait_run(api, run_id, a)
        assert not b.done(), "the second runtime stopped"
        total = 1 + width + width + 1 + 1
        assert run["status"] == "SUCCESS", run
        assert (run["total_count"], run["success_count"]) == (total, total)
    done = Counter(i["item"] for i in CALLS.inputs("Work")) - before
    assert done == Counter(f"<r>#{i}" for i in range(width)), "each item exactly once"
    merges = [i for i in CALLS.inputs("Merge") if i["seed"] == "<r>"]
    assert len(merges) == 1
    nodes = await api.get(api.p("/nodes/"))
    assert {n["runtime_name"] for n in nodes["nodes"]} <= {"replica-a", "replica-b"}
