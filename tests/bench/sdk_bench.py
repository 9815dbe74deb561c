#!/usr/bin/env python3
"""The Python SDK path, measured with the official, unmodified SDK.

Drives any Exosphere-compatible state manager (ours, or upstream's for side
by side figures) with an SDK `Runtime(batch_size, workers, poll_interval)`
running in this process:

* `chain`: a chain of `--chain-len` no-op nodes; ms per step, from the
  trigger answering to the last node starting, over `--runs` runs (after
  one warm-up run);
* `fanout`: start -> split (`--width` outputs) -> work -> merge (unites
  start); states per second from the trigger to the unite starting.

The SDK itself sets a ceiling: it asks for at most `batch_size` states per
`enqueue` call and sleeps `poll_interval` after each, so it executes at most
`batch_size / (poll_interval + L)` states per second (L: the `enqueue`
latency, which is also measured here, p50/p99, from the SDK's own calls).

    EXOSPHERE_STATE_MANAGER_URI=http://127.0.0.1:8000 EXOSPHERE_API_KEY=... \\
      .tools/pysdk/bin/python tests/bench/sdk_bench.py --poll 0.05

Prints one JSON object per workload.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid

import aiohttp
from pydantic import BaseModel

from exospherehost import BaseNode, GraphNodeModel, Runtime, StateManager, UnitesModel

#: Futures completed by `Mark` when a run reaches its last node, by tag.
WAITING: dict[str, asyncio.Future] = {}
#: Latencies (s) of the SDK's own `enqueue` calls.
ENQUEUE: list[float] = []


class Noop(BaseNode):
    class Inputs(BaseModel):
        x: str

    class Outputs(BaseModel):
        x: str

    async def execute(self):
        return self.Outputs(x=self.inputs.x)


class Split(BaseNode):
    class Inputs(BaseModel):
        x: str
        n: str

    class Outputs(BaseModel):
        x: str

    async def execute(self):
        return [self.Outputs(x=f"{self.inputs.x}.{i}") for i in range(int(self.inputs.n))]


class Mark(BaseNode):
    class Inputs(BaseModel):
        tag: str

    class Outputs(BaseModel):
        tag: str

    async def execute(self):
        fut = WAITING.get(self.inputs.tag)
        if fut is not None and not fut.done():
            fut.set_result(time.perf_counter())
        return self.Outputs(tag=self.inputs.tag)


def chain_graph(ns: str, n: int) -> list[GraphNodeModel]:
    nodes = []
    for i in range(n - 1):
        x = "start" if i == 0 else f"${{{{ s{i - 1}.outputs.x }}}}"
        nodes.append(GraphNodeModel(node_name="Noop", namespace=ns, identifier=f"s{i}",
                                    inputs={"x": x}, next_nodes=[f"s{i + 1}"]))
    nodes.append(GraphNodeModel(node_name="Mark", namespace=ns, identifier=f"s{n - 1}",
                                inputs={"tag": f"${{{{ s{n - 2}.outputs.x }}}}"}))
    return nodes


def fanout_graph(ns: str, width: int) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(node_name="Noop", namespace=ns, identifier="start",
                       inputs={"x": "start"}, next_nodes=["split"]),
        GraphNodeModel(node_name="Split", namespace=ns, identifier="split",
                       inputs={"x": "${{ start.outputs.x }}", "n": str(width)},
                       next_nodes=["work"]),
        GraphNodeModel(node_name="Noop", namespace=ns, identifier="work",
                       inputs={"x": "${{ split.outputs.x }}"}, next_nodes=["merge"]),
        GraphNodeModel(node_name="Mark", namespace=ns, identifier="merge",
                       inputs={"tag": "${{ start.outputs.x }}"},
                       unites=UnitesModel(identifier="start")),
    ]


def time_enqueue_calls() -> None:
    """Wraps the SDK's `enqueue` HTTP call to record its latency."""
    original = Runtime._enqueue_call

    async def timed(self):
        t = time.perf_counter()
        try:
            return await original(self)
        finally:
            ENQUEUE.append(time.perf_counter() - t)

    Runtime._enqueue_call = timed  # type: ignore[method-assign]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def wait_registered(uri: str, key: str, ns: str, names: set[str]) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(400):
            async with s.get(f"{uri}/v0/namespace/{ns}/nodes/", headers={"x-api-key": key}) as r:
                if r.status == 200 and names <= {n["name"] for n in (await r.json())["nodes"]}:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError("nodes never registered")


async def run_once(sm: StateManager, graph: str, inputs: dict[str, str] | None,
                   tag: str, timeout: float) -> float:
    """Triggers `graph` and returns seconds until `Mark` saw `tag`."""
    fut = asyncio.get_running_loop().create_future()
    WAITING[tag] = fut
    t0 = time.perf_counter()
    await sm.trigger(graph, inputs=inputs)
    t1 = await asyncio.wait_for(fut, timeout)
    return t1 - t0


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="chain,fanout")
    ap.add_argument("--poll", type=float, default=1.0, help="SDK poll_interval, seconds")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--chain-len", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--label", default=os.environ.get("EXO_BENCH_LABEL", ""))
    args = ap.parse_args()
    uri = os.environ["EXOSPHERE_STATE_MANAGER_URI"]
    key = os.environ["EXOSPHERE_API_KEY"]
    ns = f"sdkb{uuid.uuid4().hex[:8]}"
    time_enqueue_calls()
    sm = StateManager(ns)
    runtime = Runtime(namespace=ns, name="sdk-bench", nodes=[Noop, Split, Mark],
                      batch_size=args.batch, workers=args.workers,
                      poll_interval=args.poll)  # type: ignore[arg-type]
    task = runtime.start()
    await wait_registered(uri, key, ns, {"Noop", "Split", "Mark"})
    settings = {"batch_size": args.batch, "workers": args.workers, "poll_interval_s": args.poll}
    try:
        for workload in args.workload.split(","):
            if workload == "chain":
                await sm.upsert_graph("chain", chain_graph(ns, args.chain_len), {}, polling_interval=0.1)
                steps = []
                for i in range(args.runs + 1):
                    tag = f"c{i}"
                    took = await run_once(sm, "chain", {"x": tag}, tag, 600)
                    if i > 0:
                        steps.append(took / args.chain_len * 1000)
                ENQUEUE.clear()
                out = {"workload": "chain", "steps": args.chain_len, "ms_per_step_p50": statistics.median(steps),
                       "ms_per_step_runs": [round(s, 1) for s in steps]}
            elif workload == "fanout":
                await sm.upsert_graph("fan", fanout_graph(ns, args.width), {}, polling_interval=0.1)
                ENQUEUE.clear()
                tag = "f0"
                took = await run_once(sm, "fan", {"x": tag}, tag, 1800)
                states = 1 + 1 + args.width + args.width + 1
                ceiling = args.batch / (args.poll + (pct(ENQUEUE, 50) if ENQUEUE else 0))
                out = {"workload": "fanout", "width": args.width, "states": states, "seconds": round(took, 2),
                       "states_per_s": round(states / took, 1), "sdk_ceiling_states_per_s": round(ceiling, 1),
                       "enqueue_ms_p50": round(pct(ENQUEUE, 50) * 1000, 2),
                       "enqueue_ms_p99": round(pct(ENQUEUE, 99) * 1000, 2), "enqueue_calls": len(ENQUEUE)}
            else:
                raise SystemExit(f"unknown workload {workload}")
            out.update({"label": args.label, "sdk": settings})
            print(json.dumps(out), flush=True)
    finally:
        task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
