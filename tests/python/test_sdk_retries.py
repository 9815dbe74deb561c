"""Nodes that raise: the graph's retry policy, exhausted retries, and the
dashboard's manual retry, with an SDK runtime doing the work."""

import asyncio
from collections import Counter

from pydantic import BaseModel

from exospherehost import BaseNode, GraphNodeModel, RetryPolicyModel, RetryStrategyEnum

from exo_helpers import Api, Calls, namespace, new_uuid, running, state_manager, wait_run

CALLS = Calls()
#: Keys for which `Flaky` succeeds from now on.
HEALED: set[str] = set()


class Flaky(BaseNode):
    """Fails the first `fail` executions for a key (all of them when
    `fail` is "always", unless the key was healed), then succeeds."""

    class Inputs(BaseModel):
        key: str
        fail: str

    class Outputs(BaseModel):
        value: str

    async def execute(self):
        n = CALLS.record(f"Flaky:{self.inputs.key}", self.inputs)
        if self.inputs.key not in HEALED and (self.inputs.fail == "always"
                                              or n <= int(self.inputs.fail)):
            raise RuntimeError(f"boom {self.inputs.key} #{n}")
        return self.Outputs(value=f"{self.inputs.key} ok after {n}")


class Next(BaseNode):
    class Inputs(BaseModel):
        value: str

    class Outputs(BaseModel):
        value: str

    async def execute(self):
        CALLS.record("Next", self.inputs)
        return self.Outputs(value=self.inputs.value + "!")


NODES = [Flaky, Next]


def graph(ns: str, fail: str) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(node_name="Flaky", namespace=ns, identifier="flaky",
                       inputs={"key": "k", "fail": fail}, next_nodes=["next"]),
        GraphNodeModel(node_name="Next", namespace=ns, identifier="next",
                       inputs={"value": "${{ flaky.outputs.value }}"}),
    ]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def test_errored_node_is_retried_per_policy():
    asyncio.run(retried_per_policy())


async def retried_per_policy():
    ns = namespace("retry")
    api = Api(ns)
    sm = state_manager(ns)
    async with running(ns, NODES) as rt:
        # Always failing, max_retries=2, FIXED 300 ms: 3 executions, then ERRORED.
        policy = RetryPolicyModel(max_retries=2, strategy=RetryStrategyEnum.FIXED,
                                  backoff_factor=300)
        await sm.upsert_graph("always", graph(ns, "always"), {}, retry_policy=policy,
                              polling_interval=0.2)
        run_id = (await sm.trigger("always", inputs={"key": "a1"}))["run_id"]
        run = await wait_run(api, run_id, rt)
        assert run["status"] == "FAILED", run
        assert (run["total_count"], run["errored_count"], run["retried_count"],
                run["success_count"], run["pending_count"]) == (3, 1, 2, 0, 0)
        times = CALLS.times("Flaky:a1")
        assert len(times) == 3
        assert all(g >= 0.3 - 0.05 for g in gaps(times)), gaps(times)
        states = await api.states("always", run_id, "flaky")
        assert [s["status"] for s in states] == ["RETRY_CREATED", "RETRY_CREATED", "ERRORED"]
        assert [s["error"] for s in states] == [f"boom a1 #{i}" for i in (1, 2, 3)]
        assert all(s["inputs"] == {"key": "a1", "fail": "always"} for s in states)
        st = await api.structure(run_id)
        assert "next" not in {n["identifier"] for n in st["nodes"]}
        assert st["execution_summary"]["ERRORED"] == 1
        assert st["execution_summary"]["RETRY_CREATED"] == 2

        # Failing twice, max_retries=3, EXPONENTIAL 150 ms x2: succeeds on the
        # third execution after waiting 150 ms then 300 ms.
        policy = RetryPolicyModel(max_retries=3, strategy=RetryStrategyEnum.EXPONENTIAL,
                                  backoff_factor=150, exponent=2)
        await sm.upsert_graph("twice", graph(ns, "2"), {}, retry_policy=policy,
                              polling_interval=0.2)
        n_next = CALLS.count("Next")
        run_id = (await sm.trigger("twice", inputs={"key": "t1"}))["run_id"]
        run = await wait_run(api, run_id, rt)
        assert run["status"] == "SUCCESS", run
        assert (run["total_count"], run["retried_count"], run["success_count"],
                run["errored_count"]) == (4, 2, 2, 0)
        g = gaps(CALLS.times("Flaky:t1"))
        assert len(g) == 2 and g[0] >= 0.15 - 0.05 and g[1] >= 0.3 - 0.05, g
        assert CALLS.inputs("Next")[n_next:] == [{"value": "t1 ok after 3"}]
        states = await api.states("twice", run_id, "flaky")
        assert [s["status"] for s in states] == ["RETRY_CREATED", "RETRY_CREATED", "SUCCESS"]
        [nxt] = await api.states("twice", run_id, "next")
        assert nxt["outputs"] == {"value": "t1 ok after 3!"}
        # The successor hangs off the attempt that succeeded.
        assert nxt["parents"] == {"flaky": states[2]["id"]}

        # max_retries=0: one execution, ERRORED at once.
        await sm.upsert_graph("once", graph(ns, "always"), {},
                              retry_policy=RetryPolicyModel(max_retries=0),
                              polling_interval=0.2)
        run_id = (await sm.trigger("once", inputs={"key": "o1"}))["run_id"]
        run = await wait_run(api, run_id, rt)
        assert run["status"] == "FAILED"
        assert (run["total_count"], run["errored_count"], run["retried_count"]) == (1, 1, 0)
        assert CALLS.count("Flaky:o1") == 1


def test_manual_retry_of_an_errored_state():
    asyncio.run(manual_retry())


async def manual_retry():
    ns = namespace("manual")
    api = Api(ns)
    sm = state_manager(ns)
    async with running(ns, NODES) as rt:
        await sm.upsert_graph("g", graph(ns, "always"), {},
                              retry_policy=RetryPolicyModel(max_retries=0),
                              polling_interval=0.2)
        run_id = (await sm.trigger("g", inputs={"key": "m1"}))["run_id"]
        run = await wait_run(api, run_id, rt)
        assert run["status"] == "FAILED"
        [errored] = await api.states("g", run_id, "flaky")
        assert errored["status"] == "ERRORED" and errored["error"] == "boom m1 #1"

        # The dashboard's retry: a fresh UUID as fanout_id.
        HEALED.add("m1")
        fanout = new_uuid()
        status, body = await api.request(
            "POST", api.p(f"/state/{errored['id']}/manual-retry"), {"fanout_id": fanout})
        assert status == 200, body
        assert body["status"] == "CREATED" and len(body["id"]) == 24
        assert body["id"] != errored["id"]
        run = await wait_run(api, run_id, rt)
        assert run["status"] == "SUCCESS", run
        assert (run["total_count"], run["retried_count"], run["success_count"],
                run["errored_count"]) == (3, 1, 2, 0)
        assert CALLS.count("Flaky:m1") == 2
        copy = await api.node("g", run_id, body["id"])
        assert copy["status"] == "SUCCESS" and copy["outputs"] == {"value": "m1 ok after 2"}
        original = await api.node("g", run_id, errored["id"])
        assert original["status"] == "RETRY_CREATED"
        st = await api.structure(run_id)
        assert Counter(n["status"] for n in st["nodes"]) == {"RETRY_CREATED": 1, "SUCCESS": 2}

        # The same fanout_id again: 409.
        status, body = await api.request(
            "POST", api.p(f"/state/{errored['id']}/manual-retry"), {"fanout_id": fanout})
        assert (status, body) == (409, {"detail": "Duplicate retry state detected"})
