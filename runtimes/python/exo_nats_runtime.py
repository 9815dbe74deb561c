"""A reference runtime for the exo orchestrator in Python, on nats-py.

Written from docs/runtime-protocol.md and docs/asyncapi.json only, to show
that the NATS protocol is usable without the Rust SDK. Small on purpose:

    rt = Runtime("my-namespace", "my-runtime", nats_url="nats://127.0.0.1:4222")

    @rt.node("Upper", inputs=["text"], outputs=["text"])
    async def upper(inputs, ctx):
        return {"text": inputs["text"].upper()}     # or a list (fan-out),
                                                     # Prune(data), Requeue(ms),
                                                     # or raise (errored)
    await rt.register_over_http("http://127.0.0.1:8000", api_key)
    await rt.run()

What it does, per the protocol:
* binds (creating or updating) the durable pull consumer `dsp-<ns>-<node>` of
  stream EXO_DISPATCH with its own `ack_wait`, waiting for the services to
  have created the stream;
* fetches dispatches, reads large ones from the EXO_PAYLOADS object store
  (header `Exo-Payload-Ref`), runs the node, sends a progress ack every
  `ack_wait / 3` while it runs;
* publishes the result on `exo.v1.<ns>.result.<kind>` with
  `Nats-Msg-Id: res:<kind>:<state_id>:<attempt>` and `Exo-Protocol: 1`, waits
  for the JetStream ack, then acks the dispatch (naks it if the publish fails);
* reports `errored` without running a dispatch delivered more than
  `max_deliveries` times (a node that crashes its runtime cannot loop);
* gives nodes their graph's secrets (`await ctx.secrets()`) over the
  `exo.v1.<ns>.secrets.get` request subject, with the API key;
* listens on `exo.v1.<ns>.event.run.cancelled`: executions of that run are
  cancelled and their dispatches acked with no result (the states are
  CANCELLED already), later dispatches of that run are dropped the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import nats
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

log = logging.getLogger("exo_nats_runtime")

PROTOCOL = "1"
STREAM = "EXO_DISPATCH"


@dataclass
class Prune:
    """End this branch (the state becomes PRUNED) with free-form data."""

    data: dict = field(default_factory=dict)


@dataclass
class Requeue:
    """Run this state again after `delay_ms` milliseconds."""

    delay_ms: int


@dataclass
class Context:
    """What a node knows about the execution."""

    state_id: str
    run_id: str
    graph_name: str
    identifier: str
    attempt: int
    delivered: int
    _secrets: Callable[[str], Awaitable[dict]] | None = None

    async def secrets(self) -> dict:
        """The secrets of this state's graph, asked over NATS
        (`exo.v1.<ns>.secrets.get`, needs the runtime's `api_key`)."""
        if self._secrets is None:
            raise RuntimeError("no api_key was given to the Runtime")
        return await self._secrets(self.state_id)


Handler = Callable[[dict, Context], Awaitable[Any]]


@dataclass
class _Node:
    name: str
    inputs: list[str]
    outputs: list[str]
    handler: Handler


def consumer_name(namespace: str, node: str) -> str:
    """`dsp-<ns>-<node>`, or `dsp-` + 24 hex digits of SHA-256 when too long."""
    name = f"dsp-{namespace}-{node}"
    if len(name) <= 32:
        return name
    digest = hashlib.sha256(f"{namespace}\n{node}".encode()).hexdigest()
    return "dsp-" + digest[:24]


def _schema(title: str, fields: list[str]) -> dict:
    return {
        "title": title,
        "type": "object",
        "properties": {f: {"title": f, "type": "string"} for f in fields},
        "required": list(fields),
    }


class Runtime:
    """Serves nodes of one namespace over NATS."""

    def __init__(self, namespace: str, name: str, *, nats_url: str, api_key: str | None = None,
                 ack_wait: float = 30.0, max_deliveries: int = 10, concurrency: int = 16):
        self.namespace = namespace
        self.api_key = api_key
        self.name = name
        self.nats_url = nats_url
        self.ack_wait = ack_wait
        self.max_deliveries = max_deliveries
        self.concurrency = concurrency
        self.nodes: dict[str, _Node] = {}
        self._running: dict[str, set[asyncio.Task]] = {}
        self._cancelled: set[str] = set()

    def node(self, name: str, *, inputs: list[str], outputs: list[str]):
        """Decorator registering `handler(inputs, ctx)` as node `name`."""

        def wrap(handler: Handler) -> Handler:
            self.nodes[name] = _Node(name, inputs, outputs, handler)
            return handler

        return wrap

    def register_over_http(self, api_url: str, api_key: str) -> None:
        """Registers the nodes with the api (`PUT /v0/namespace/<ns>/nodes/`)."""
        body = {
            "runtime_name": self.name,
            "nodes": [
                {"name": n.name, "inputs_schema": _schema(n.name + "Inputs", n.inputs),
                 "outputs_schema": _schema(n.name + "Outputs", n.outputs), "secrets": []}
                for n in self.nodes.values()
            ],
        }
        req = urllib.request.Request(
            f"{api_url}/v0/namespace/{self.namespace}/nodes/", method="PUT",
            data=json.dumps(body).encode(),
            headers={"x-api-key": api_key, "content-type": "application/json"})
        with urllib.request.urlopen(req) as resp:
            resp.read()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serves until `stop` is set (forever without one)."""
        stop = stop or asyncio.Event()
        nc = await nats.connect(self.nats_url)
        js = nc.jetstream()
        await nc.subscribe(f"exo.v1.{self.namespace}.event.run.cancelled", cb=self._on_cancel)
        limit = asyncio.Semaphore(self.concurrency)
        loops = [asyncio.create_task(self._serve(nc, js, node, limit, stop))
                 for node in self.nodes.values()]
        log.info("serving %s in namespace %s", sorted(self.nodes), self.namespace)
        await stop.wait()
        for t in loops:
            t.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await nc.drain()

    async def _bind(self, js, node: _Node):
        durable = consumer_name(self.namespace, node.name)
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=f"exo.v1.{self.namespace}.dispatch.{node.name}",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=10_000,
        )
        try:
            info = await js.consumer_info(STREAM, durable)
            if abs((info.config.ack_wait or 0) - self.ack_wait) > 1e-3:
                # The consumer is shared; a NATS runtime sets its ack_wait.
                await js.add_consumer(STREAM, config)  # updates the existing durable
        except NotFoundError:
            await js.add_consumer(STREAM, config)
        return await js.pull_subscribe_bind(durable, stream=STREAM)

    async def _serve(self, nc, js, node: _Node, limit: asyncio.Semaphore, stop: asyncio.Event):
        wait = 0.1
        while True:
            try:
                sub = await self._bind(js, node)
                break
            except Exception as e:  # the services create the streams: wait for them
                log.warning("cannot bind %s yet (%s); retrying", node.name, e)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 5.0)
        while not stop.is_set():
            await limit.acquire()
            try:
                msgs = await sub.fetch(1, timeout=1.0)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                limit.release()
                continue
            for msg in msgs:
                asyncio.create_task(self._handle(nc, js, node, msg, limit))

    async def _payload(self, js, msg) -> bytes:
        ref = (msg.headers or {}).get("Exo-Payload-Ref")
        if not ref:
            return msg.data
        store = await js.object_store("EXO_PAYLOADS")
        return (await store.get(ref)).data

    async def _handle(self, nc, js, node: _Node, msg, limit: asyncio.Semaphore) -> None:
        try:
            try:
                dispatch = json.loads(await self._payload(js, msg))
            except (ValueError, NotFoundError) as e:
                log.error("malformed dispatch on %s: %s; terminating it", msg.subject, e)
                await msg.term()
                return
            if dispatch["run_id"] in self._cancelled:
                await msg.ack()
                return
            ctx = Context(dispatch["state_id"], dispatch["run_id"], dispatch["graph_name"],
                          dispatch["identifier"], dispatch["attempt"], msg.metadata.num_delivered,
                          (lambda sid: self._secrets_of(nc, sid)) if self.api_key else None)
            heartbeat = asyncio.create_task(self._heartbeat(msg))
            try:
                if ctx.delivered > self.max_deliveries:
                    kind, body = "errored", {"error": f"dispatch delivered {ctx.delivered} times without a result"}
                else:
                    task = asyncio.create_task(node.handler(dispatch["inputs"], ctx))
                    self._running.setdefault(ctx.run_id, set()).add(task)
                    try:
                        kind, body = self._report(await task)
                    except asyncio.CancelledError:
                        if ctx.run_id in self._cancelled:
                            await msg.ack()  # the state is CANCELLED already
                            return
                        raise
                    except Exception as e:  # the node failed: errored
                        kind, body = "errored", {"error": str(e) or type(e).__name__}
                    finally:
                        self._running.get(ctx.run_id, set()).discard(task)
            finally:
                heartbeat.cancel()
            result = {"state_id": ctx.state_id, "attempt": ctx.attempt, **body}
            headers = {"Nats-Msg-Id": f"res:{kind}:{ctx.state_id}:{ctx.attempt}",
                       "Exo-Protocol": PROTOCOL}
            try:
                await js.publish(f"exo.v1.{self.namespace}.result.{kind}",
                                 json.dumps(result).encode(), headers=headers)
            except Exception as e:
                log.warning("could not publish the %s result of %s: %s", kind, ctx.state_id, e)
                await msg.nak()
                return
            await msg.ack()
        finally:
            limit.release()

    @staticmethod
    def _report(out: Any) -> tuple[str, dict]:
        if isinstance(out, Prune):
            return "pruned", {"data": out.data}
        if isinstance(out, Requeue):
            return "requeue", {"delay_ms": int(out.delay_ms)}
        if out is None:
            return "executed", {"outputs": []}
        return "executed", {"outputs": out if isinstance(out, list) else [out]}

    async def _secrets_of(self, nc, state_id: str) -> dict:
        reply = await nc.request(f"exo.v1.{self.namespace}.secrets.get",
                                 json.dumps({"state_id": state_id}).encode(),
                                 timeout=5, headers={"Exo-Api-Key": self.api_key})
        body = json.loads(reply.data)
        if body.get("status") != 200:
            raise RuntimeError(f"secrets: {body.get('status')} {body.get('detail')}")
        return body["secrets"]

    async def _heartbeat(self, msg) -> None:
        while True:
            await asyncio.sleep(self.ack_wait / 3)
            await msg.in_progress()

    async def _on_cancel(self, msg) -> None:
        try:
            run_id = json.loads(msg.data)["run_id"]
        except (ValueError, KeyError):
            return
        self._cancelled.add(run_id)
        for task in self._running.pop(run_id, set()):
            task.cancel()
        log.info("run %s cancelled", run_id)
