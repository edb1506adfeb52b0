"""The client connection's transport: a response head leaves with its body, in one write,
and is never held past the event loop's current turn."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from claude_proxy.client_protocol import _HeadWithBody

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"


class Recording:
    """A real socket transport that also remembers each write(2)-bound call."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.transport, name)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[_HeadWithBody, Recording, socket.socket]]:
    loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    rec = Recording(transport)
    yield _HeadWithBody(rec, loop), rec, peer  # type: ignore[arg-type]
    transport.abort()
    peer.close()


async def read(peer: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    peer.setblocking(False)
    got = b""
    while len(got) < n:
        got += await asyncio.wait_for(loop.sock_recv(peer, n - len(got)), 5)
    return got


async def test_head_and_body_leave_in_one_write(pair: tuple) -> None:
    w, rec, peer = pair
    w.write(HEAD)
    w.write(b"hello")
    assert rec.writes == [HEAD + b"hello"]
    assert await read(peer, len(HEAD) + 5) == HEAD + b"hello"


async def test_a_head_alone_goes_out_when_the_loop_turns(pair: tuple) -> None:
    w, rec, peer = pair
    w.write(HEAD)
    assert rec.writes == []  # held for this turn only
    assert await read(peer, len(HEAD)) == HEAD  # nobody wrote again: it still arrived
    assert rec.writes == [HEAD]
    w.write(b"hello")  # a later body chunk goes straight through
    assert rec.writes == [HEAD, b"hello"]


async def test_close_sends_a_held_head_first(pair: tuple) -> None:
    w, rec, peer = pair
    w.write(HEAD)
    w.close()
    assert await read(peer, len(HEAD)) == HEAD
    assert rec.writes == [HEAD]


async def test_abort_drops_a_held_head(pair: tuple) -> None:
    w, rec, _ = pair
    w.write(HEAD)
    w.abort()
    await asyncio.sleep(0)  # one loop turn: the flush that would have run
    assert rec.writes == []
