"""Helpers for the scenarios that drive the official `exospherehost` SDK
against a running exo stack.

Environment (set by tests/tests/e2e/python_sdk.rs, or by hand):

* ``EXOSPHERE_STATE_MANAGER_URI``: the API's base URL (read by the SDK too);
* ``EXOSPHERE_API_KEY``: the API key (read by the SDK too);
* ``EXO_TEST_NAMESPACE``: a namespace prefix for this run; every test adds
  its own suffix, so tests never see each other's nodes or states.

The SDK is used unchanged. Outcomes are read back through the HTTP API:
``GET /v0/namespace/{ns}/run/{run_id}`` (our extension: status and
counters), ``GET /v0/namespace/{ns}/states/run/{run_id}/graph`` and
``GET /v0/namespace/{ns}/graph/{g}/run/{r}/node/{id}`` (upstream's).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import uuid
from collections import defaultdict
from typing import Any, AsyncIterator, Iterable

import aiohttp
from exospherehost import Runtime, StateManager

URI = os.environ.get("EXOSPHERE_STATE_MANAGER_URI", "http://127.0.0.1:8000").rstrip("/")
KEY = os.environ.get("EXOSPHERE_API_KEY", "")
NAMESPACE_PREFIX = os.environ.get("EXO_TEST_NAMESPACE", "pysdk")

#: Poll interval of the SDK runtime, seconds (the SDK sleeps this long
#: between two `POST /states/enqueue` calls).
POLL = 0.05
#: Longest wait for one run.
RUN_TIMEOUT = float(os.environ.get("EXO_TEST_RUN_TIMEOUT", "60"))


def namespace(suffix: str) -> str:
    """A namespace unique to one test (a NATS subject token)."""
    ns = f"{NAMESPACE_PREFIX}-{suffix}"
    ns = re.sub(r"[^A-Za-z0-9_-]", "-", ns)[:64]
    return ns


# ---------------------------------------------------------------- recording

class Calls:
    """What the nodes did: per node name, the list of (monotonic time,
    inputs, secrets) of every execution. Nodes are instantiated afresh for
    every state, so they record here (a module-level object)."""

    def __init__(self) -> None:
        self.by_node: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def record(self, node: str, inputs: Any, secrets: Any = None) -> int:
        entry = {
            "t": time.monotonic(),
            "inputs": inputs.model_dump() if hasattr(inputs, "model_dump") else inputs,
            "secrets": secrets.model_dump() if hasattr(secrets, "model_dump") else secrets,
        }
        self.by_node[node].append(entry)
        return len(self.by_node[node])

    def count(self, node: str) -> int:
        return len(self.by_node[node])

    def times(self, node: str) -> list[float]:
        return [c["t"] for c in self.by_node[node]]

    def inputs(self, node: str) -> list[dict[str, Any]]:
        return [c["inputs"] for c in self.by_node[node]]


# ---------------------------------------------------------------- HTTP

class Api:
    """The API, read with the key (aiohttp: the runtime runs in the same
    event loop, so nothing here may block)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns

    async def request(self, method: str, path: str, body: Any = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any]:
        h = {"x-api-key": KEY}
        if headers:
            h.update(headers)
        async with aiohttp.ClientSession() as s:
            async with s.request(method, f"{URI}{path}", json=body, headers=h,
                                 allow_redirects=False) as r:
                try:
                    data = await r.json(content_type=None)
                except Exception:  # noqa: BLE001 - a non-JSON body is reported as text
                    data = await r.text()
                return r.status, data

    async def get(self, path: str) -> Any:
        status, body = await self.request("GET", path)
        assert status == 200, f"GET {path}: {status} {body}"
        return body

    def p(self, rest: str) -> str:
        return f"/v0/namespace/{self.ns}{rest}"

    async def run(self, run_id: str) -> dict[str, Any]:
        return await self.get(self.p(f"/run/{run_id}"))

    async def structure(self, run_id: str) -> dict[str, Any]:
        return await self.get(self.p(f"/states/run/{run_id}/graph"))

    async def node(self, graph: str, run_id: str, state_id: str) -> dict[str, Any]:
        return await self.get(self.p(f"/graph/{graph}/run/{run_id}/node/{state_id}"))

    async def states(self, graph: str, run_id: str, identifier: str | None = None
                     ) -> list[dict[str, Any]]:
        """Node run details of every state of a run (optionally of one
        identifier), in creation order."""
        g = await self.structure(run_id)
        out = []
        for n in g["nodes"]:
            if identifier is None or n["identifier"] == identifier:
                out.append(await self.node(graph, run_id, n["id"]))
        out.sort(key=lambda d: (d["created_at"], d["id"]))
        return out


# ---------------------------------------------------------------- runtime

@contextlib.asynccontextmanager
async def running(ns: str, nodes: Iterable[type], name: str = "pysdk-runtime",
                  workers: int = 4, batch_size: int = 8,
                  key: str | None = None) -> AsyncIterator[asyncio.Task]:
    """Starts an SDK `Runtime` in this event loop (`Runtime.start()` returns
    a task when a loop is running), waits until its nodes are registered,
    yields the task and cancels it at the end. `key`: the runtime's API key
    (default: `EXOSPHERE_API_KEY`, as the SDK reads it)."""
    runtime = Runtime(namespace=ns, name=name, nodes=list(nodes), workers=workers,
                      batch_size=batch_size, poll_interval=POLL,  # type: ignore[arg-type]
                      key=key)
    task = runtime.start()
    assert isinstance(task, asyncio.Task), "Runtime.start() inside a loop returns a task"
    api = Api(ns)
    want = {n.__name__ for n in nodes}
    deadline = time.monotonic() + 20
    while True:
        if task.done():
            task.result()  # raises the registration error
            raise AssertionError("runtime stopped during registration")
        listed = await api.get(api.p("/nodes/"))
        if want <= {n["name"] for n in listed["nodes"]}:
            break
        assert time.monotonic() < deadline, f"nodes never registered: {listed}"
        await asyncio.sleep(0.05)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def state_manager(ns: str) -> StateManager:
    return StateManager(namespace=ns)


async def wait_run(api: Api, run_id: str, runtime: asyncio.Task | None = None,
                   timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
    """Polls `GET /run/{run_id}` until SUCCESS or FAILED. Fails at once if
    the SDK runtime task died (the SDK lets some errors escape its workers)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if runtime is not None and runtime.done():
            exc = runtime.exception() if not runtime.cancelled() else None
            raise AssertionError(f"the SDK runtime stopped: {exc!r}")
        status, last = await api.request("GET", api.p(f"/run/{run_id}"))
        if status == 200 and last["status"] in ("SUCCESS", "FAILED"):
            return last
        await asyncio.sleep(0.05)
    g = await api.structure(run_id)
    summary = [(n["identifier"], n["status"], n["error"]) for n in g["nodes"]]
    raise AssertionError(f"run {run_id} did not finish in {timeout}s: {last}; states {summary}")


def new_uuid() -> str:
    return str(uuid.uuid4())
