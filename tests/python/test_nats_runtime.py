"""The reference Python runtime (runtimes/python, nats-py), written from the
protocol documents only, drives the running system: a chain, a fan-out with
a unite, a crash redelivery and a cancellation. `EXO_NATS_URL` names the
NATS server (set by tests/tests/e2e/python_sdk.rs)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from exo_helpers import KEY, URI, Api, namespace, wait_run

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "runtimes" / "python"))

from exo_nats_runtime import Prune, Runtime  # noqa: E402

NATS_URL = os.environ.get("EXO_NATS_URL", "nats://127.0.0.1:4222")


async def upsert(api: Api, graph: str, nodes: list[dict]) -> None:
    status, body = await api.request("PUT", api.p(f"/graph/{graph}"),
                                      {"secrets": {}, "nodes": nodes})
    assert status == 201, body
    got = await api.get(api.p(f"/graph/{graph}"))
    assert got["validation_status"] == "VALID", got


async def trigger(api: Api, graph: str, **body) -> str:
    status, out = await api.request("POST", api.p(f"/graph/{graph}/trigger"),
                                    {"inputs": {}, **body})
    assert status == 200, out
    return out["run_id"]


@contextlib.asynccontextmanager
async def serving(rt: Runtime):
    rt.register_over_http(URI, KEY)
    stop = asyncio.Event()
    task = asyncio.create_task(rt.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def node(name: str, ident: str, ns: str, inputs: dict, nxt: list[str], **extra) -> dict:
    return {"node_name": name, "identifier": ident, "namespace": ns, "inputs": inputs,
            "next_nodes": nxt, **extra}


def test_chain_fan_out_and_unite():
    async def main():
        ns = namespace("nats-flows")
        api = Api(ns)
        rt = Runtime(ns, "py-nats", nats_url=NATS_URL)

        @rt.node("Append", inputs=["text"], outputs=["text"])
        async def append(inputs, ctx):
            return {"text": inputs["text"] + "+" + ctx.identifier}

        @rt.node("Split", inputs=["text"], outputs=["text"])
        async def split(inputs, ctx):
            return [{"text": f"{inputs['text']}#{i}"} for i in range(20)]

        @rt.node("Picky", inputs=["text"], outputs=["text"])
        async def picky(inputs, ctx):
            if inputs["text"].endswith("#3"):
                return Prune({"why": inputs["text"]})
            return {"text": inputs["text"].upper()}

        @rt.node("Merge", inputs=["text"], outputs=["text"])
        async def merge(inputs, ctx):
            return {"text": "merged " + inputs["text"]}

        async with serving(rt):
            await upsert(api, "chain", [
                node("Append", "a", ns, {"text": "x"}, ["b"]),
                node("Append", "b", ns, {"text": "${{ a.outputs.text }}"}, ["c"]),
                node("Append", "c", ns, {"text": "${{ b.outputs.text }}"}, []),
            ])
            run = await wait_run(api, await trigger(api, "chain"))
            assert run["status"] == "SUCCESS", run
            assert run["success_count"] == 3, run
            c = await api.states("chain", run["run_id"], "c")
            assert c[0]["outputs"] == {"text": "x+a+b+c"}, c

            await upsert(api, "fan", [
                node("Append", "start", ns, {"text": "s"}, ["split"]),
                node("Split", "split", ns, {"text": "${{ start.outputs.text }}"}, ["work"]),
                node("Picky", "work", ns, {"text": "${{ split.outputs.text }}"}, ["merge"]),
                node("Merge", "merge", ns, {"text": "${{ start.outputs.text }}"}, [],
                     unites={"identifier": "start", "strategy": "ALL_DONE"}),
            ])
            run = await wait_run(api, await trigger(api, "fan"))
            assert run["status"] == "SUCCESS", run
            merges = await api.states("fan", run["run_id"], "merge")
            assert len(merges) == 1, merges
            assert merges[0]["outputs"] == {"text": "merged s+start"}, merges
            work = await api.states("fan", run["run_id"], "work")
            assert sorted(w["status"] for w in work) == ["PRUNED"] + ["SUCCESS"] * 19, work

    asyncio.run(main())


def test_secrets_over_nats():
    async def main():
        ns = namespace("nats-secrets")
        api = Api(ns)
        rt = Runtime(ns, "py-nats", nats_url=NATS_URL, api_key=KEY)

        @rt.node("Reveal", inputs=["text"], outputs=["text"])
        async def reveal(inputs, ctx):
            return {"text": inputs["text"] + ":" + (await ctx.secrets())["token"]}

        async with serving(rt):
            status, body = await api.request("PUT", api.p("/graph/g"), {
                "secrets": {"token": "s3cret"},
                "nodes": [node("Reveal", "r", ns, {"text": "x"}, [])]})
            assert status == 201, body
            run = await wait_run(api, await trigger(api, "g"))
            assert run["status"] == "SUCCESS", run
            r = await api.states("g", run["run_id"], "r")
            assert r[0]["outputs"] == {"text": "x:s3cret"}, r

    asyncio.run(main())


CHILD = """
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from exo_nats_runtime import Runtime
rt = Runtime(sys.argv[2], "py-nats-doomed", nats_url=sys.argv[3], ack_wait=2)

@rt.node("Slow", inputs=["text"], outputs=["text"])
async def slow(inputs, ctx):
    open(sys.argv[4], "w").write(ctx.state_id)
    await asyncio.sleep(600)

asyncio.run(rt.run())
"""


def test_crashed_runtime_work_is_redelivered_within_its_ack_wait(tmp_path):
    async def main():
        ns = namespace("nats-crash")
        api = Api(ns)
        marker = tmp_path / "started"
        survivor = Runtime(ns, "py-nats-survivor", nats_url=NATS_URL, ack_wait=2)
        deliveries: list[int] = []

        @survivor.node("Slow", inputs=["text"], outputs=["text"])
        async def slow(inputs, ctx):
            deliveries.append(ctx.delivered)
            return {"text": inputs["text"] + " survived"}

        survivor.register_over_http(URI, KEY)
        await upsert(api, "g", [node("Slow", "s", ns, {"text": "x"}, [])])
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, str(ROOT / "runtimes" / "python"), ns, NATS_URL,
            str(marker))
        try:
            run_id = await trigger(api, "g")
            deadline = time.monotonic() + 30
            while not marker.exists():
                assert time.monotonic() < deadline, "the doomed runtime never started the node"
                await asyncio.sleep(0.05)
            await asyncio.sleep(3)  # it heartbeats past its 2 s ack_wait
            child.send_signal(signal.SIGKILL)
            await child.wait()
            killed = time.monotonic()
            async with serving(survivor):
                run = await wait_run(api, run_id, timeout=30)
            assert run["status"] == "SUCCESS", run
            assert time.monotonic() - killed < 20
            assert deliveries == [2], deliveries
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()

    asyncio.run(main())


def test_cancellation_stops_the_execution():
    async def main():
        ns = namespace("nats-cancel")
        api = Api(ns)
        rt = Runtime(ns, "py-nats", nats_url=NATS_URL)
        started = asyncio.Event()
        stopped = asyncio.Event()

        @rt.node("Slow", inputs=["text"], outputs=["text"])
        async def slow(inputs, ctx):
            started.set()
            try:
                await asyncio.sleep(600)
            except asyncio.CancelledError:
                stopped.set()
                raise
            return {"text": "never"}

        async with serving(rt):
            await upsert(api, "g", [node("Slow", "s", ns, {"text": "x"}, [])])
            run_id = await trigger(api, "g")
            await asyncio.wait_for(started.wait(), 30)
            status, body = await api.request("POST", api.p(f"/run/{run_id}/cancel"), {})
            assert status == 202, body
            await asyncio.wait_for(stopped.wait(), 10)
            deadline = time.monotonic() + 20
            while (await api.run(run_id))["status"] != "CANCELLED":
                assert time.monotonic() < deadline, "the run never read CANCELLED"
                await asyncio.sleep(0.05)
            run = await api.run(run_id)
            assert run["cancelled_count"] == 1, run

    asyncio.run(main())
