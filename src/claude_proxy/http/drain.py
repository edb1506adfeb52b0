"""Graceful drain: the shutdown timeline shared by the server (signals) and the app.

On SIGTERM:
1. at once: /health answers 503 and every response says `connection: close`, so the
   load balancer stops sending new requests here;
2. for `pre_stop` seconds: requests are still accepted and served;
3. then the listener closes; requests in flight go on until the deadline, `pre_stop +
   window` after the signal (the pre-stop takes no time from a stream: it runs meanwhile);
4. what is still running then is ended: a stream gets an SSE `error` event, never a
   silent cut;
5. the log writer flushes, and the process exits 0, within ECS's stopTimeout.

Behind an ALB on ECS, SIGTERM comes in one of two orders (docs/reliability.md):
- after the deregistration (a deployment, a scale-in): ECS took the task out of the target
  group and waited until its requests were done or the deregistration delay was over, so
  nothing new arrives and little or nothing is left; the pre-stop only waits;
- with the task still routed to (a Fargate Spot interruption: ECS starts the
  deregistration and sends SIGTERM at once, about two minutes before the kill): the load
  balancer may still send new requests for a few seconds. The pre-stop is for this case: a
  closed port then would be a 502 for a client, and the window is all the streams get.

SIGINT (Ctrl-C) skips the pre-stop delay: nobody's load balancer is waiting.
"""

from __future__ import annotations

import asyncio
import time


class Drain:
    def __init__(self, *, pre_stop: float, window: float) -> None:
        self.pre_stop = pre_stop
        self.window = window
        self.draining = False
        self.started = 0.0  # monotonic
        self._loop: asyncio.AbstractEventLoop | None = None
        self._begun: asyncio.Event | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called in the app's lifespan, on the loop that will serve."""
        self._loop = loop
        self._begun = asyncio.Event()
        if self.draining:
            self._begun.set()

    def begin(self, *, skip_pre_stop: bool = False) -> bool:
        """Start draining (from a signal handler); False if it had already started."""
        if self.draining:
            return False
        if skip_pre_stop:
            self.pre_stop = 0.0
        self.started = time.monotonic()
        self.draining = True
        if self._loop is not None and self._begun is not None:
            self._loop.call_soon_threadsafe(self._begun.set)
        return True

    async def wait_begun(self) -> None:
        assert self._begun is not None, "attach() first"
        await self._begun.wait()

    @property
    def stop_accepting_at(self) -> float:
        return self.started + self.pre_stop

    @property
    def deadline(self) -> float:
        return self.started + self.pre_stop + self.window

    def should_stop_accepting(self) -> bool:
        return self.draining and time.monotonic() >= self.stop_accepting_at
