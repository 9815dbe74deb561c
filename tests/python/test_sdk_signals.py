"""`PruneSignal` and `ReQueueAfterSignal`, raised by SDK nodes."""

import asyncio
from collections import Counter
from datetime import timedelta

from pydantic import BaseModel

from exospherehost import (BaseNode, GraphNodeModel, PruneSignal, ReQueueAfterSignal,
                           UnitesModel, UnitesStrategyEnum)

from exo_helpers import Api, Calls, namespace, running, state_manager, wait_run

CALLS = Calls()
REQUEUE_DELAY = timedelta(milliseconds=700)


class Begin(BaseNode):
    class Inputs(BaseModel):
        count: str

    class Outputs(BaseModel):
        count: str

    async def execute(self):
        CALLS.record("Begin", self.inputs)
        return self.Outputs(count=self.inputs.count)


class Source(BaseNode):
    class Inputs(BaseModel):
        count: str

    class Outputs(BaseModel):
        n: str

    async def execute(self):
        CALLS.record("Source", self.inputs)
        return [self.Outputs(n=str(i)) for i in range(int(self.inputs.count))]


class OddPruner(BaseNode):
    class Inputs(BaseModel):
        n: str

    class Outputs(BaseModel):
        n: str

    async def execute(self):
        CALLS.record("OddPruner", self.inputs)
        if int(self.inputs.n) % 2:
            raise PruneSignal({"reason": f"odd {self.inputs.n}", "n": int(self.inputs.n)})
        return self.Outputs(n=self.inputs.n)


class Keep(BaseNode):
    class Inputs(BaseModel):
        n: str

    class Outputs(BaseModel):
        kept: str

    async def execute(self):
        CALLS.record("Keep", self.inputs)
        return self.Outputs(kept=self.inputs.n)


class Gather(BaseNode):
    class Inputs(BaseModel):
        label: str

    class Outputs(BaseModel):
        label: str

    async def execute(self):
        CALLS.record("Gather", self.inputs)
        return self.Outputs(label=self.inputs.label)


class Poller(BaseNode):
    """Asks to be run again later on its first execution for a key."""

    class Inputs(BaseModel):
        key: str

    class Outputs(BaseModel):
        executions: str

    async def execute(self):
        n = CALLS.record(f"Poller:{self.inputs.key}", self.inputs)
        if n < 3:
            raise ReQueueAfterSignal(REQUEUE_DELAY)
        return self.Outputs(executions=str(n))


class Report(BaseNode):
    class Inputs(BaseModel):
        executions: str

    class Outputs(BaseModel):
        report: str

    async def execute(self):
        CALLS.record("Report", self.inputs)
        return self.Outputs(report=f"after {self.inputs.executions}")


NODES = [Begin, Source, OddPruner, Keep, Gather, Poller, Report]


def prune_graph(ns: str, strategy: UnitesStrategyEnum) -> list[GraphNodeModel]:
    # The unite targets `begin`, the ancestor of the fan-out: uniting on
    # `source` itself would form one group per fan-out sibling (spec 5.6).
    return [
        GraphNodeModel(node_name="Begin", namespace=ns, identifier="begin",
                       inputs={"count": "5"}, next_nodes=["source"]),
        GraphNodeModel(node_name="Source", namespace=ns, identifier="source",
                       inputs={"count": "${{ begin.outputs.count }}"}, next_nodes=["filter"]),
        GraphNodeModel(node_name="OddPruner", namespace=ns, identifier="filter",
                       inputs={"n": "${{ source.outputs.n }}"}, next_nodes=["keep"]),
        GraphNodeModel(node_name="Keep", namespace=ns, identifier="keep",
                       inputs={"n": "${{ filter.outputs.n }}"}, next_nodes=["gather"]),
        GraphNodeModel(node_name="Gather", namespace=ns, identifier="gather",
                       inputs={"label": strategy.value}, unites=UnitesModel(
                           identifier="begin", strategy=strategy)),
    ]


def test_prune_ends_the_branch():
    asyncio.run(prune_ends_the_branch())


async def prune_ends_the_branch():
    ns = namespace("prune")
    api = Api(ns)
    sm = state_manager(ns)
    async with running(ns, NODES, workers=6, batch_size=16) as rt:
        # ALL_DONE: the unite runs once after the kept branches, the pruned
        # ones count as done.
        await sm.upsert_graph("done", prune_graph(ns, UnitesStrategyEnum.ALL_DONE), {},
                              polling_interval=0.2)
        run_id = (await sm.trigger("done"))["run_id"]
        run = await wait_run(api, run_id, rt)
        # begin 1 + source 5 + filter 5 (2 pruned) + keep 3 + gather 1
        assert run["status"] == "SUCCESS", run
        assert (run["total_count"], run["success_count"], run["errored_count"]) == (15, 15, 0)
        st = await api.structure(run_id)
        assert st["execution_summary"]["PRUNED"] == 2
        assert st["execution_summary"]["SUCCESS"] == 13
        per = Counter((n["identifier"], n["status"]) for n in st["nodes"])
        assert per == {("begin", "SUCCESS"): 1, ("source", "SUCCESS"): 5, ("filter", "SUCCESS"): 3,
                       ("filter", "PRUNED"): 2, ("keep", "SUCCESS"): 3,
                       ("gather", "SUCCESS"): 1}
        # No child hangs off a pruned state: keep's parents are kept filters.
        filters = {s["id"]: s for s in await api.states("done", run_id, "filter")}
        pruned = {i for i, s in filters.items() if s["status"] == "PRUNED"}
        assert sorted(filters[i]["inputs"]["n"] for i in pruned) == ["1", "3"]
        assert all(filters[i]["outputs"] == {} for i in pruned)
        keeps = await api.states("done", run_id, "keep")
        assert sorted(k["outputs"]["kept"] for k in keeps) == ["0", "2", "4"]
        assert not {k["parents"]["filter"] for k in keeps} & pruned
        assert CALLS.inputs("Gather") == [{"label": "ALL_DONE"}]

        # ALL_SUCCESS: a pruned branch means the unite never runs; the run
        # ends FAILED instead of hanging (docs/compatibility.md).
        await sm.upsert_graph("strict", prune_graph(ns, UnitesStrategyEnum.ALL_SUCCESS), {},
                              polling_interval=0.2)
        run_id = (await sm.trigger("strict"))["run_id"]
        run = await wait_run(api, run_id, rt)
        assert run["status"] == "FAILED", run
        assert (run["total_count"], run["success_count"], run["errored_count"],
                run["pending_count"]) == (14, 14, 0, 0)
        st = await api.structure(run_id)
        assert "gather" not in {n["identifier"] for n in st["nodes"]}
        assert CALLS.count("Gather") == 1


def test_requeue_after_runs_the_node_again_later():
    asyncio.run(requeue_after())


async def requeue_after():
    ns = namespace("requeue")
    api = Api(ns)
    sm = state_manager(ns)
    async with running(ns, NODES) as rt:
        await sm.upsert_graph("poll", [
            GraphNodeModel(node_name="Poller", namespace=ns, identifier="poll",
                           inputs={"key": "k"}, next_nodes=["report"]),
            GraphNodeModel(node_name="Report", namespace=ns, identifier="report",
                           inputs={"executions": "${{ poll.outputs.executions }}"}),
        ], {}, polling_interval=0.2)
        run_id = (await sm.trigger("poll", inputs={"key": "r1"}))["run_id"]
        run = await wait_run(api, run_id, rt)
        assert run["status"] == "SUCCESS", run
        # The same state ran three times (re-queued twice); no new state.
        assert (run["total_count"], run["success_count"], run["retried_count"]) == (2, 2, 0)
        times = CALLS.times("Poller:r1")
        assert len(times) == 3
        delay = REQUEUE_DELAY.total_seconds()
        for a, b in zip(times, times[1:]):
            assert b - a >= delay - 0.05, f"re-run after {b - a:.3f}s, wanted {delay}s"
            assert b - a < delay + 10
        [poll] = await api.states("poll", run_id, "poll")
        assert poll["status"] == "SUCCESS"
        assert poll["outputs"] == {"executions": "3"}
        [report] = await api.states("poll", run_id, "report")
        assert report["inputs"] == {"executions": "3"}
        assert report["outputs"] == {"report": "after 3"}
