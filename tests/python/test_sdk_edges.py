"""Edges of the SDK contract: schema defaults, extra template inputs,
a node whose outputs its successor cannot use, unicode errors."""

import asyncio

from pydantic import BaseModel, Field

from exospherehost import BaseNode, GraphNodeModel, RetryPolicyModel

from exo_helpers import Api, Calls, namespace, running, state_manager, wait_run

CALLS = Calls()


class WithDefault(BaseNode):
    class Inputs(BaseModel):
        text: str = Field(description="what to say")
        mode: str = "quiet"

    class Outputs(BaseModel):
        said: str

    async def execute(self):
        CALLS.record("WithDefault", self.inputs)
        return self.Outputs(said=f"{self.inputs.mode}:{self.inputs.text}")


class Silent(BaseNode):
    """Executes with no outputs at all."""

    class Inputs(BaseModel):
        said: str

    class Outputs(BaseModel):
        said: str

    async def execute(self):
        CALLS.record("Silent", self.inputs)
        return None


class Raiser(BaseNode):
    class Inputs(BaseModel):
        said: str

    async def execute(self):
        CALLS.record("Raiser", self.inputs)
        raise ValueError(f"ünïcødé «{self.inputs.said}» ✗")


NODES = [WithDefault, Silent, Raiser]


def test_edges():
    asyncio.run(edges())


async def edges():
    ns = namespace("edges")
    api = Api(ns)
    sm = state_manager(ns)
    async with running(ns, NODES) as rt:
        # A schema default does not make the input optional in the template;
        # extra template inputs reach the root but are dropped for children.
        await sm.upsert_graph("defaults", [
            GraphNodeModel(node_name="WithDefault", namespace=ns, identifier="a",
                           inputs={"text": "x", "mode": "loud", "extra": "root keeps it"},
                           next_nodes=["b"]),
            GraphNodeModel(node_name="WithDefault", namespace=ns, identifier="b",
                           inputs={"text": "${{ a.outputs.said }}", "mode": "calm",
                                   "extra": "dropped"}),
        ], {}, polling_interval=0.2)
        run_id = (await sm.trigger("defaults"))["run_id"]
        run = await wait_run(api, run_id, rt)
        assert run["status"] == "SUCCESS", run
        [a] = await api.states("defaults", run_id, "a")
        [b] = await api.states("defaults", run_id, "b")
        assert a["inputs"] == {"text": "x", "mode": "loud", "extra": "root keeps it"}
        assert b["inputs"] == {"text": "loud:x", "mode": "calm"}
        assert b["outputs"] == {"said": "calm:loud:x"}

        # A template that omits an input with a schema default is INVALID.
        try:
            await sm.upsert_graph("nodefault", [
                GraphNodeModel(node_name="WithDefault", namespace=ns, identifier="a",
                               inputs={"text": "x"}),
            ], {}, polling_interval=0.2)
            raise AssertionError("upsert should have failed")
        except Exception as e:  # noqa: BLE001 - the SDK raises plain Exception
            assert (f"Input mode in node WithDefault in namespace {ns} is not present in "
                    "the graph template") in str(e), e

        # The successor reads an output the node never produced: the node
        # ends NEXT_CREATED_ERROR, no successor, the run FAILED.
        await sm.upsert_graph("silent", [
            GraphNodeModel(node_name="WithDefault", namespace=ns, identifier="a",
                           inputs={"text": "x", "mode": "m"}, next_nodes=["s"]),
            GraphNodeModel(node_name="Silent", namespace=ns, identifier="s",
                           inputs={"said": "${{ a.outputs.said }}"}, next_nodes=["after"]),
            GraphNodeModel(node_name="Silent", namespace=ns, identifier="after",
                           inputs={"said": "${{ s.outputs.said }}"}),
        ], {}, polling_interval=0.2)
        run_id = (await sm.trigger("silent"))["run_id"]
        run = await wait_run(api, run_id, rt)
        assert run["status"] == "FAILED", run
        assert (run["total_count"], run["success_count"], run["errored_count"]) == (2, 1, 1)
        [s] = await api.states("silent", run_id, "s")
        assert s["status"] == "NEXT_CREATED_ERROR"
        assert s["outputs"] == {}
        assert "said" in (s["error"] or ""), s
        st = await api.structure(run_id)
        assert st["execution_summary"]["NEXT_CREATED_ERROR"] == 1
        assert "after" not in {n["identifier"] for n in st["nodes"]}

        # An exception's text is stored verbatim, unicode included.
        await sm.upsert_graph("raise", [
            GraphNodeModel(node_name="WithDefault", namespace=ns, identifier="a",
                           inputs={"text": "ø", "mode": "m"}, next_nodes=["r"]),
            GraphNodeModel(node_name="Raiser", namespace=ns, identifier="r",
                           inputs={"said": "${{ a.outputs.said }}"}),
        ], {}, retry_policy=RetryPolicyModel(max_retries=0), polling_interval=0.2)
        run_id = (await sm.trigger("raise"))["run_id"]
        run = await wait_run(api, run_id, rt)
        assert run["status"] == "FAILED"
        [r] = await api.states("raise", run_id, "r")
        assert r["status"] == "ERRORED"
        assert r["error"] == "ünïcødé «m:ø» ✗"
