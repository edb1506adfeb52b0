"""BodyBudget: a bound on the request-body bytes one process holds in memory at once.

A request body is held whole until it has been forwarded (a retry sends it again), so
twenty clients trickling 32 MiB bodies would otherwise hold 640 MB for as long as they
like. Each body reserves its size before the relay reads it (the Content-Length, or
chunk by chunk when there is none) and gives it back when the request ends. Past the
bound a body waits, first come first served, for at most `wait_seconds`, then is
refused with `529 overloaded_error`: never an unbounded wait.

The common case (the bound is far away, nobody waits) is one comparison and one
addition, with no future and no task step.
"""

from __future__ import annotations

import asyncio
from collections import deque


class BodyBudget:
    """`try_reserve` on the request path; `reserve` to wait when it says no; `release`."""

    def __init__(self, *, limit: int, wait_seconds: float) -> None:
        self.limit = limit
        self.wait_seconds = wait_seconds
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def try_reserve(self, n: int) -> bool:
        """Take `n` bytes if they fit now and nobody is queued ahead (`_fits`, inlined:
        this runs on every request)."""
        used = self.used
        if not self._waiters and (used + n <= self.limit or used == 0):
            self.used = used + n
            return True
        return False

    async def reserve(self, n: int) -> bool:
        """Take `n` bytes, waiting in line for up to `wait_seconds`; False if they never fit."""
        if self.try_reserve(n):
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, self.wait_seconds)
        except TimeoutError:
            pass  # unless granted just as the wait ran out: then the bytes are ours
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted, but the request is gone (client left)
            raise
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
                self._grant()  # whoever queued behind this one may fit now
        return fut.done() and not fut.cancelled()

    def release(self, n: int) -> None:
        self.used -= n
        if self._waiters:
            self._grant()

    def stats(self) -> dict[str, int]:
        return {"limit": self.limit, "used": self.used, "waiting": len(self._waiters)}

    def _fits(self, n: int) -> bool:
        # A body larger than the whole bound may still go, alone.
        return self.used + n <= self.limit or self.used == 0

    def _grant(self) -> None:
        """Hand bytes to the waiters at the head of the line while they fit."""
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if not self._fits(n):
                return
            self._waiters.popleft()
            self.used += n
            fut.set_result(None)
