"""The debug journal: the last ~1000 requests and what became of each one.

The proxy's tests read it through `/_emulator/requests` and long-poll `/_emulator/wait` to prove,
for example, that a client disconnect closed the upstream request. On the hot path recording is
one small slotted object appended to a bounded deque; headers stay raw bytes until someone asks.

States: "open" (response not finished), "completed" (response fully handed to the socket),
"client_closed" (the client went away while the response was still being produced), "aborted"
(the emulator cut the connection on purpose: reset, close-before-headers, truncated body).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

OPEN = "open"
COMPLETED = "completed"
CLIENT_CLOSED = "client_closed"
ABORTED = "aborted"
STATES = (OPEN, COMPLETED, CLIENT_CLOSED, ABORTED)


class Entry:
    __slots__ = (
        "_journal",
        "body_len",
        "headers",
        "method",
        "path",
        "query",
        "request_id",
        "state",
        "status",
    )

    def __init__(
        self,
        journal: Journal,
        request_id: str,
        method: bytes,
        path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body_len: int,
    ) -> None:
        self._journal = journal
        self.request_id = request_id
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body_len = body_len
        self.state = OPEN
        self.status: int | None = None

    def settle(self, state: str) -> None:
        """Move from "open" to a final state (later calls are ignored) and wake waiters."""
        if self.state != OPEN:
            return
        self.state = state
        if self._journal._waiters:
            self._journal._wake(self)

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "method": self.method.decode("latin-1"),
            "path": self.path.decode("latin-1"),
            "query": self.query.decode("latin-1"),
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.headers],
            "body_len": self.body_len,
            "state": self.state,
            "status": self.status,
        }


class Journal:
    __slots__ = ("_entries", "_waiters")

    def __init__(self, maxlen: int = 1000) -> None:
        self._entries: deque[Entry] = deque(maxlen=maxlen)
        self._waiters: dict[str, list[tuple[str, asyncio.Future[Entry]]]] = {}

    def add(
        self,
        request_id: str,
        method: bytes,
        path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body_len: int,
    ) -> Entry:
        entry = Entry(self, request_id, method, path, query, headers, body_len)
        self._entries.append(entry)
        if self._waiters:
            self._wake(entry)
        return entry

    def entries(self) -> list[Entry]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def find(self, request_id: str) -> Entry | None:
        for entry in reversed(self._entries):
            if entry.request_id == request_id:
                return entry
        return None

    def _wake(self, entry: Entry) -> None:
        waiters = self._waiters.get(entry.request_id)
        if not waiters:
            return
        for state, fut in waiters:
            if (entry.state == state or entry.state != OPEN) and not fut.done():
                fut.set_result(entry)

    async def wait(self, request_id: str, state: str, timeout: float) -> Entry | None:
        """The entry once it is in `state` (or in another final state); None on timeout."""
        entry = self.find(request_id)
        if entry is not None and (entry.state == state or entry.state != OPEN):
            return entry
        fut: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        item = (state, fut)
        self._waiters.setdefault(request_id, []).append(item)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(request_id)
            if waiters is not None:
                waiters.remove(item)
                if not waiters:
                    del self._waiters[request_id]
