"""HTTP leases against the SDK's local queue: the SDK takes up to
`batch_size` states per poll and holds up to twice that many before its
workers run them, so with slow nodes a state can wait far longer than the
lease before it starts. A runtime that keeps polling or reporting is alive:
none of its states may be handed out a second time (run twice)."""

import asyncio
import os

from pydantic import BaseModel

from exospherehost import BaseNode, GraphNodeModel

from exo_helpers import Api, Calls, namespace, running, state_manager, wait_run

CALLS = Calls()
#: Seconds one Slow state takes; the stack's lease is EXO_TEST_LEASE_SECS.
SLOW = float(os.environ.get("EXO_TEST_SLOW_SECS", "1.5"))
WIDTH = 10


class Split(BaseNode):
    class Inputs(BaseModel):
        count: str

    class Outputs(BaseModel):
        item: str

    async def execute(self):
        CALLS.record("Split", self.inputs)
        return [self.Outputs(item=str(i)) for i in range(int(self.inputs.count))]


class Slow(BaseNode):
    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        item: str

    async def execute(self):
        CALLS.record("Slow", self.inputs)
        await asyncio.sleep(SLOW)
        return self.Outputs(item=self.inputs.item)


def test_slow_nodes_behind_a_full_local_queue_run_once():
    asyncio.run(slow_nodes_run_once())


async def slow_nodes_run_once():
    ns = namespace("lease")
    api = Api(ns)
    sm = state_manager(ns)
    # One worker, batches of 8: the tenth Slow state starts ~15 s after it
    # was handed out, several leases later.
    async with running(ns, [Split, Slow], workers=1, batch_size=8) as rt:
        nodes = [
            GraphNodeModel(node_name="Split", namespace=ns, identifier="split",
                           inputs={"count": str(WIDTH)}, next_nodes=["slow"]),
            GraphNodeModel(node_name="Slow", namespace=ns, identifier="slow",
                           inputs={"item": "${{ split.outputs.item }}"}),
        ]
        await sm.upsert_graph("lease", nodes, {}, polling_interval=0.2)
        run_id = (await sm.trigger("lease"))["run_id"]
        run = await wait_run(api, run_id, rt, timeout=120)
        assert run["status"] == "SUCCESS", run
        items = sorted(i["item"] for i in CALLS.inputs("Slow"))
        assert items == sorted(str(i) for i in range(WIDTH)), f"each state ran once: {items}"
