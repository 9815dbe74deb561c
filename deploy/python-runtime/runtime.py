"""Example Python runtime for exo, on the official Exosphere SDK (`exospherehost`).

Serves two nodes in namespace `py` (runtime `py-runtime`): Hello and Shout. The SDK
polls the api (`POST /v0/namespace/py/states/enqueue`) and reports results over HTTP.

Environment:
  EXOSPHERE_STATE_MANAGER_URI   the api's base URL (read by the SDK)
  EXOSPHERE_API_KEY             the API key (read by the SDK)
  EXO_RUNTIME_NAMESPACE         namespace (default `py`)
  EXO_SHUTDOWN_GRACE_SECS       drain bound after SIGTERM, seconds (default 20)

On SIGTERM the runtime stops taking states, lets its workers finish the ones it holds
(at most EXO_SHUTDOWN_GRACE_SECS), then exits 0. Anything still unfinished is handed
out again by the api when its lease expires. The stop uses two private members of the
SDK's Runtime (`_enqueue_call`, `_state_queue`) of the pinned version
(deploy/install-python-sdk.sh): recheck them when the pin moves.
"""

import asyncio
import logging
import os
import signal

from pydantic import BaseModel

from exospherehost import BaseNode, Runtime

NAMESPACE = os.environ.get("EXO_RUNTIME_NAMESPACE", "py")
GRACE = float(os.environ.get("EXO_SHUTDOWN_GRACE_SECS", "20"))

log = logging.getLogger("py-runtime")


class Hello(BaseNode):
    class Inputs(BaseModel):
        name: str

    class Outputs(BaseModel):
        text: str

    async def execute(self):
        return self.Outputs(text=f"hello {self.inputs.name}")


class Shout(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self):
        return self.Outputs(text=self.inputs.text.upper())


class DrainingRuntime(Runtime):
    """A Runtime that can stop polling: once `stopping` is set, every poll is empty."""

    stopping = False
    _poll = None

    async def _enqueue_call(self):
        if self.stopping:
            return {"states": []}
        # Kept (and shielded) so that a stop can wait for a poll in flight: the states
        # it leases must reach the queue and be run, not be dropped with the request.
        self._poll = asyncio.ensure_future(super()._enqueue_call())
        return await asyncio.shield(self._poll)


async def main() -> int:
    runtime = DrainingRuntime(namespace=NAMESPACE, name="py-runtime", nodes=[Hello, Shout])
    task = runtime.start()  # inside a running loop: a task
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:  # registration failed or the SDK stopped: exit non-zero
        waiter.cancel()
        task.result()
        return 1
    log.info("SIGTERM: no new states; draining for up to %.0f s", GRACE)
    runtime.stopping = True
    if runtime._poll is not None and not runtime._poll.done():
        await asyncio.wait({runtime._poll}, timeout=GRACE)
        for _ in range(10):  # the poller puts what it leased on the queue
            await asyncio.sleep(0)
    try:
        await asyncio.wait_for(runtime._state_queue.join(), timeout=GRACE)
    except asyncio.TimeoutError:
        log.warning("drain timed out; unfinished states return when their lease expires")
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    log.info("stopped")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    raise SystemExit(asyncio.run(main()))
