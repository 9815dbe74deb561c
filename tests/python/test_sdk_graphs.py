"""Registration, graph upsert (valid and invalid), trigger, store and
secrets, driven through the official SDK."""

import asyncio
import time

import pytest
from pydantic import BaseModel

from exospherehost import (BaseNode, CronTrigger, GraphNodeModel, RetryPolicyModel,
                           RetryStrategyEnum, StoreConfigModel)

from exo_helpers import Api, Calls, namespace, running, state_manager, wait_run

CALLS = Calls()


class Greet(BaseNode):
    class Inputs(BaseModel):
        name: str

    class Outputs(BaseModel):
        text: str

    async def execute(self):
        CALLS.record("Greet", self.inputs)
        return self.Outputs(text=f"hello {self.inputs.name}")


class Shout(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self):
        CALLS.record("Shout", self.inputs)
        return self.Outputs(text=self.inputs.text.upper())


class UseKey(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str
        key_length: str

    class Secrets(BaseModel):
        api_key: str
        region: str

    async def execute(self):
        CALLS.record("UseKey", self.inputs, self.secrets)
        return self.Outputs(text=f"{self.inputs.text} @{self.secrets.region}",
                            key_length=str(len(self.secrets.api_key)))


NODES = [Greet, Shout, UseKey]


def chain(ns: str) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(node_name="Greet", namespace=ns, identifier="greet",
                       inputs={"name": "${{ store.who }}"}, next_nodes=["shout"]),
        GraphNodeModel(node_name="Shout", namespace=ns, identifier="shout",
                       inputs={"text": "${{ greet.outputs.text }}${{ store.punct }}"},
                       next_nodes=["secret"]),
        GraphNodeModel(node_name="UseKey", namespace=ns, identifier="secret",
                       inputs={"text": "[${{ shout.outputs.text }}] by ${{ store.who }}"}),
    ]


STORE = StoreConfigModel(required_keys=["who"], default_values={"punct": "!"})
SECRETS = {"api_key": "k-0123456789", "region": "eu-west"}


def test_register_and_upsert():
    asyncio.run(register_and_upsert())


async def register_and_upsert():
    ns = namespace("reg")
    api = Api(ns)
    sm = state_manager(ns)
    async with running(ns, NODES, name="reg-runtime"):
        # Registration: schemas and secret names as the SDK sent them.
        listed = await api.get(api.p("/nodes/"))
        assert listed["namespace"] == ns and listed["count"] == 3, listed
        by_name = {n["name"]: n for n in listed["nodes"]}
        assert set(by_name) == {"Greet", "Shout", "UseKey"}
        for cls in NODES:
            n = by_name[cls.__name__]
            assert n["inputs_schema"] == cls.Inputs.model_json_schema()
            assert n["outputs_schema"] == cls.Outputs.model_json_schema()
            assert n["runtime_name"] == "reg-runtime"
            assert n["runtime_namespace"] == ns
            assert n["namespace"] == ns
            assert len(n["_id"]) == 24
        assert by_name["UseKey"]["secrets"] == ["api_key", "region"]
        assert by_name["Greet"]["secrets"] == []
        namespaces = await api.get("/v0/namespaces")
        assert ns in namespaces["namespaces"]
        assert namespaces["count"] == len(namespaces["namespaces"])

        # A valid graph: upsert_graph polls GET until VALID and returns it.
        retry = RetryPolicyModel(max_retries=5, strategy=RetryStrategyEnum.LINEAR,
                                 backoff_factor=150, max_delay=1000)
        g = await sm.upsert_graph("chain", chain(ns), SECRETS, retry_policy=retry,
                                  store_config=STORE, polling_interval=0.2)
        assert g["validation_status"] == "VALID", g
        assert g["validation_errors"] == []
        assert g["secrets"] == {"api_key": True, "region": True}
        assert [n["identifier"] for n in g["nodes"]] == ["greet", "shout", "secret"]
        # Deviation (docs/compatibility.md): the stored policy, not defaults.
        assert g["retry_policy"] == {"max_retries": 5, "strategy": "LINEAR",
                                     "backoff_factor": 150, "exponent": 2, "max_delay": 1000}
        assert g["store_config"] == {"required_keys": ["who"], "default_values": {"punct": "!"}}
        again = await sm.get_graph("chain")
        assert again["validation_status"] == "VALID"
        assert again["nodes"] == g["nodes"]

        # Two roots: a structural error, 400 at once.
        two_roots = [
            GraphNodeModel(node_name="Greet", namespace=ns, identifier="a", inputs={"name": "x"}),
            GraphNodeModel(node_name="Greet", namespace=ns, identifier="b", inputs={"name": "y"}),
        ]
        with pytest.raises(Exception) as e:
            await sm.upsert_graph("chain", two_roots, {}, polling_interval=0.2)
        assert "Failed to upsert graph: 400" in str(e.value)
        assert ("There should be exactly one root node in the graph but found 2 nodes "
                "with zero in-degree") in str(e.value)
        # The failed upsert left the stored graph alone.
        assert (await sm.get_graph("chain"))["validation_status"] == "VALID"

        # An unregistered node and a missing secret: INVALID after validation.
        bad = [
            GraphNodeModel(node_name="Missing", namespace=ns, identifier="m",
                           inputs={"x": "y"}, next_nodes=["k"]),
            GraphNodeModel(node_name="UseKey", namespace=ns, identifier="k",
                           inputs={"text": "t"}),
        ]
        with pytest.raises(Exception) as e:
            await sm.upsert_graph("broken", bad, {"api_key": "only"}, polling_interval=0.2)
        msg = str(e.value)
        assert msg.startswith("Graph validation failed: INVALID and errors: "), msg
        assert f"Node Missing in namespace {ns} does not exist." in msg
        assert "Secret region is required but not present in the graph template" in msg
        broken = await sm.get_graph("broken")
        assert broken["validation_status"] == "INVALID"
        # Triggering an invalid graph is refused.
        with pytest.raises(Exception) as e:
            await sm.trigger("broken")
        assert "Failed to trigger state: 400" in str(e.value)
        assert "Graph template is not valid" in str(e.value)

        # Field-level problems are 422 with pydantic-shaped items.
        with pytest.raises(Exception) as e:
            await sm.upsert_graph("cron", chain(ns), SECRETS, store_config=STORE,
                                  triggers=[CronTrigger(expression="not a cron")],
                                  polling_interval=0.2)
        assert "Failed to upsert graph: 422" in str(e.value)
        assert "Invalid cron expression" in str(e.value)

        # Fixing the graph makes it VALID again (the same name).
        fixed = await sm.upsert_graph("broken", chain(ns), SECRETS, store_config=STORE,
                                      triggers=[CronTrigger(expression="0 9 * * 1-5")],
                                      polling_interval=0.2)
        assert fixed["validation_status"] == "VALID"
        assert fixed["triggers"] == [{"type": "CRON", "value": {"expression": "0 9 * * 1-5"}}]

        # Graph listing: whole documents, with the stored policy.
        graphs = await api.get(api.p("/graphs/"))
        names = {t["name"]: t for t in graphs["templates"]}
        assert set(names) == {"chain", "broken"} and graphs["count"] == 2
        assert names["chain"]["retry_policy"]["backoff_factor"] == 150
        assert names["broken"]["validation_status"] == "VALID"

        with pytest.raises(Exception) as e:
            await sm.get_graph("nope")
        assert "Failed to get graph: 404" in str(e.value)
        assert f"Graph template nope not found in namespace {ns}" in str(e.value)


def test_trigger_store_and_secrets():
    asyncio.run(trigger_store_and_secrets())


async def trigger_store_and_secrets():
    ns = namespace("run")
    api = Api(ns)
    sm = state_manager(ns)
    async with running(ns, NODES) as rt:
        await sm.upsert_graph("chain", chain(ns), SECRETS, store_config=STORE,
                              polling_interval=0.2)

        # A required store key that the root reads is missing: the root's
        # inputs cannot be resolved (checked before the required keys).
        with pytest.raises(Exception) as e:
            await sm.trigger("chain", store={"other": "x"})
        assert str(e.value) == ('Failed to trigger state: 400 {"detail":"Invalid input: '
                                'Dependent who not found in store for root node greet"}')

        before = len(CALLS.inputs("UseKey"))
        resp = await sm.trigger("chain", store={"who": "ada"})
        assert resp["status"] == "CREATED"
        run_id = resp["run_id"]
        run = await wait_run(api, run_id, rt)
        assert run["status"] == "SUCCESS", run
        assert (run["total_count"], run["success_count"], run["pending_count"],
                run["errored_count"], run["retried_count"]) == (3, 3, 0, 0, 0)
        assert run["graph_name"] == "chain"

        # Store values and default values were substituted.
        greet = await api.states("chain", run_id, "greet")
        shout = await api.states("chain", run_id, "shout")
        secret = await api.states("chain", run_id, "secret")
        assert [s["inputs"] for s in greet] == [{"name": "ada"}]
        assert [s["outputs"] for s in greet] == [{"text": "hello ada"}]
        assert [s["inputs"] for s in shout] == [{"text": "hello ada!"}]
        assert [s["inputs"] for s in secret] == [{"text": "[HELLO ADA!] by ada"}]
        # The secrets reached the node (and only through the secrets endpoint).
        assert secret[0]["outputs"] == {"text": "[HELLO ADA!] by ada @eu-west",
                                        "key_length": str(len(SECRETS["api_key"]))}
        assert CALLS.by_node["UseKey"][before]["secrets"] == SECRETS
        assert all(s["status"] == "SUCCESS" for s in greet + shout + secret)
        # Lineage: the direct parent last.
        assert list(secret[0]["parents"]) == ["greet", "shout"]
        assert secret[0]["parents"]["shout"] == shout[0]["id"]

        # Root inputs given at trigger override the template's, and
        # start_delay (ms) holds the root back.
        t0 = time.monotonic()
        n_greet = CALLS.count("Greet")
        resp = await sm.trigger("chain", inputs={"name": "bob"}, store={"who": "eve"},
                                start_delay=800)
        run = await wait_run(api, resp["run_id"], rt)
        assert run["status"] == "SUCCESS"
        assert CALLS.inputs("Greet")[n_greet:] == [{"name": "bob"}]
        assert CALLS.times("Greet")[n_greet] - t0 >= 0.75
        secret = await api.states("chain", resp["run_id"], "secret")
        assert secret[0]["inputs"] == {"text": "[HELLO BOB!] by eve"}

        # Both runs are listed, newest first; the refused trigger wrote none.
        runs = await api.get(api.p("/runs/1/10"))
        assert runs["total"] == 2 and runs["page"] == 1 and runs["size"] == 10
        assert [r["run_id"] for r in runs["runs"]] == [resp["run_id"], run_id]
        assert all(r["status"] == "SUCCESS" and r["total_count"] == 3 for r in runs["runs"])
