"""The official SDK with a scoped API key (ours): a `runtime` key for one
namespace serves that namespace's nodes unchanged (register, take work,
read secrets, report results), cannot start runs there, and opens nothing
in another namespace."""

import asyncio

import pytest
from pydantic import BaseModel

from exospherehost import BaseNode, GraphNodeModel, Runtime, StateManager

from exo_helpers import POLL, Api, Calls, namespace, running, state_manager, wait_run

CALLS = Calls()
SECRETS = {"token": "scoped-tok-42"}


class Reveal(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    class Secrets(BaseModel):
        token: str

    async def execute(self):
        CALLS.record("Reveal", self.inputs, self.secrets)
        return self.Outputs(text=f"{self.inputs.text}:{len(self.secrets.token)}")


def test_a_runtime_key_serves_its_namespace_and_nothing_else():
    asyncio.run(scoped())


async def scoped():
    ns, other = namespace("scoped"), namespace("scoped-other")
    api = Api(ns)
    status, created = await api.request(
        "POST", "/v0/keys", {"name": "py runtime", "namespaces": [ns], "scope": "runtime"})
    assert status == 201, created
    key = created["key"]
    sm = state_manager(ns)  # the configured key: admin everywhere
    async with running(ns, [Reveal], key=key) as rt:
        node = GraphNodeModel(node_name="Reveal", namespace=ns, identifier="r",
                              inputs={"text": "x"}, next_nodes=[])
        await sm.upsert_graph("g", [node], SECRETS, polling_interval=0.2)
        resp = await sm.trigger("g")
        run = await wait_run(api, resp["run_id"], rt)
        assert run["status"] == "SUCCESS", run
        assert CALLS.by_node["Reveal"][0]["secrets"] == SECRETS
        # The runtime key cannot start runs, even in its namespace.
        with pytest.raises(Exception) as e:
            await StateManager(namespace=ns, key=key).trigger("g")
        assert "403" in str(e.value) and "runtime key" in str(e.value), str(e.value)
    # In another namespace the key opens nothing: registration is refused.
    stranger = Runtime(namespace=other, name="stranger", nodes=[Reveal], key=key,
                       poll_interval=POLL)  # type: ignore[arg-type]
    task = stranger.start()
    with pytest.raises(Exception) as e:
        await asyncio.wait_for(task, timeout=20)
    assert f"cannot access namespace '{other}'" in str(e.value), repr(e.value)
