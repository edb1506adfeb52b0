"""A minimal asyncio HTTP/1.1 SSE client that timestamps the first byte and every event.

It is a bare `asyncio.Protocol` rather than aiohttp: the client shares a core with the emulator,
so every µs it spends per event is a µs the emulator does not get. It speaks just enough HTTP/1.1
(status line, content-length or chunked bodies) and counts an event at each blank line.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

BODY = (
    '{"model":"claude-sonnet-4-6","max_tokens":%d,"stream":true,'
    '"messages":[{"role":"user","content":"Hello"}]}'
)

TEXT_BYTES = 12  # per text delta: the emulator's default, about what the real API sends


def request_bytes(host: str, port: int, key: str, fault: str, max_tokens: int) -> bytes:
    """The raw POST; `fault` goes into x-emulator-fault, which the proxy forwards unchanged.

    `max_tokens` must cover the asked-for text (about 4 bytes a token), or the emulator, like
    the API, stops early with stop_reason "max_tokens".
    """
    body = (BODY % max_tokens).encode()
    head = (
        f"POST /v1/messages HTTP/1.1\r\nhost: {host}:{port}\r\n"
        f"content-type: application/json\r\naccept: text/event-stream\r\n"
        f"anthropic-version: 2023-06-01\r\nx-api-key: {key}\r\n"
        f"x-emulator-fault: {fault}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Stream:
    """What one stream saw. Times are time.monotonic() seconds; `start` is just before connect."""

    start: float = 0.0
    first_byte: float | None = None
    events: list[float] = field(default_factory=list)
    status: int | None = None
    saw_stop: bool = False
    error_events: int = 0
    ended: bool = False
    failure: str | None = None


class _SSEProtocol(asyncio.Protocol):
    """Parses one response: headers, then a chunked or sized body split into SSE events."""

    def __init__(self, req: bytes, st: Stream, loop: asyncio.AbstractEventLoop) -> None:
        self.req, self.st, self.loop = req, st, loop
        self.done: asyncio.Future[None] = loop.create_future()
        self.raw = bytearray()
        self.headers_done = False
        self.chunked = False
        self.remaining = -1  # body bytes left: chunk bytes (chunked) or content-length; -1 = EOF
        self.in_chunk_trailer = False
        self.text = b""  # de-chunked body not yet ending in a blank line
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.req)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()  # not loop.time(): uvloop's has 1 ms resolution
        if self.done.done():
            return  # the last-chunk's CRLF, or bytes after the body: nothing to count
        st = self.st
        if st.first_byte is None:
            st.first_byte = now
        if not self.headers_done:
            self.raw += data
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.raw[:end]).decode("latin-1").lower().split("\r\n")
            st.status = int(head[0].split()[1])
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name == "transfer-encoding" and "chunked" in value:
                    self.chunked = True
                elif name == "content-length":
                    self.remaining = int(value)
            data = bytes(self.raw[end + 4 :])
            self.raw = bytearray()
            self.headers_done = True
        if self.chunked:
            self._dechunk(data, now)
        else:
            if self.remaining >= 0:
                data = data[: self.remaining]
                self.remaining -= len(data)
            self._body(data, now)
            if self.remaining == 0:
                self._finish(ended=True)

    def _dechunk(self, data: bytes, now: float) -> None:
        raw = self.raw
        raw += data
        pos = 0
        n = len(raw)
        while pos < n:
            if self.remaining > 0:
                take = min(self.remaining, n - pos)
                self._body(bytes(raw[pos : pos + take]), now)
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.in_chunk_trailer = True
                continue
            if self.in_chunk_trailer:
                if n - pos < 2:
                    break
                pos += 2  # the CRLF after the chunk data
                self.in_chunk_trailer = False
                continue
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(bytes(raw[pos:eol]).split(b";")[0], 16)
            pos = eol + 2
            if size == 0:
                self._finish(ended=True)
                break
            self.remaining = size
        del raw[:pos]

    def _body(self, data: bytes, now: float) -> None:
        text = self.text + data if self.text else data
        if b"\n\n" not in text:
            self.text = text
            return
        *events, self.text = text.split(b"\n\n")
        st = self.st
        for ev in events:
            st.events.append(now)
            if ev.startswith(b"event: message_stop"):
                st.saw_stop = True
            elif ev.startswith(b"event: error"):
                st.error_events += 1

    def _finish(self, *, ended: bool) -> None:
        if ended:
            self.st.ended = True
        if not self.done.done():
            self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if exc is not None:
                self.st.failure = f"connection lost: {exc!r}"
            elif self.remaining == -1 and not self.chunked and self.headers_done:
                self.st.ended = True  # close-delimited body
            else:
                self.st.failure = "connection closed before the body ended"
            self.done.set_result(None)


async def one_stream(
    host: str, port: int, req: bytes, st: Stream, deadline: float, delay: float = 0.0
) -> None:
    """Run one stream, starting after `delay`; a stream still open at `deadline` counts as cut."""
    loop = asyncio.get_running_loop()
    if delay > 0:
        await asyncio.sleep(delay)
    st.start = time.monotonic()
    proto = _SSEProtocol(req, st, loop)
    try:
        await asyncio.wait_for(
            loop.create_connection(lambda: proto, host, port),
            timeout=max(0.1, deadline - loop.time()),
        )
        await asyncio.wait_for(proto.done, timeout=max(0.1, deadline - loop.time()))
    except TimeoutError:
        st.failure = "timed out (bench deadline)"
    except OSError as exc:
        st.failure = f"connect: {exc!r}"
    finally:
        if proto.transport is not None:
            proto.transport.close()


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of `values` (already sorted or not)."""
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 3)


async def _wait_all(
    tasks: list[asyncio.Task[None]],
    until: float,
    sample: Callable[[], None] | None,
    every: float,
) -> None:
    """Wait for `tasks` until loop time `until` (then cancel the rest), calling `sample`
    every `every` seconds meanwhile."""
    loop = asyncio.get_running_loop()
    all_done = asyncio.gather(*tasks)
    while not all_done.done() and loop.time() < until:
        if sample is not None:
            sample()
        await asyncio.wait([all_done], timeout=every)
    if not all_done.done():
        all_done.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await all_done


async def run_streams(
    url: str,
    key: str,
    *,
    n: int,
    events: int,
    event_ms: int,
    ramp_s: float,
    timeout_s: float,
    sample: Callable[[], None] | None = None,
) -> Round:
    """Open `n` streams (starts spread evenly over `ramp_s`) and return what each one saw.

    `sample` is called every 100 ms while the streams run (the caller records proxy RSS there).
    """
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    fault = f"events={events} event-ms={event_ms} text-bytes={TEXT_BYTES}"
    req = request_bytes(host, port, key, fault, max_tokens=events * TEXT_BYTES // 4 + 64)
    streams = [Stream() for _ in range(n)]
    # The client is the instrument: a full collection of its growing timestamp lists (35 ms
    # with 1,000 streams) would read as a stall of whichever server it measures.
    gc.collect()
    gc.disable()
    try:
        t0 = time.monotonic()
        deadline = loop.time() + timeout_s
        tasks = [
            asyncio.ensure_future(one_stream(host, port, req, st, deadline, ramp_s * i / n))
            for i, st in enumerate(streams)
        ]
        await _wait_all(tasks, deadline + 5, sample, 0.1)
    finally:
        gc.enable()
    return Round(streams, t0)


@dataclass
class Round:
    """One stream run: every stream, and when the run started."""

    streams: list[Stream]
    t0: float

    @property
    def events(self) -> int:
        return sum(len(s.events) for s in self.streams)

    @property
    def wall(self) -> float:
        """From the first start to the last event received."""
        last = max((s.events[-1] for s in self.streams if s.events), default=self.t0)
        return last - self.t0


def summarise(rounds: list[Round]) -> dict[str, Any]:
    """Percentiles pooled over the streams of all rounds, plus everything that went wrong.

    events/s is the mean of the rounds' rates.
    """
    streams = [s for r in rounds for s in r.streams]
    ttfb = [s.first_byte - s.start for s in streams if s.first_byte is not None]
    first_ev = [s.events[0] - s.start for s in streams if s.events]
    gaps: list[float] = []
    for s in streams:
        ev = s.events
        gaps.extend(ev[i] - ev[i - 1] for i in range(1, len(ev)))
    rates = [r.events / r.wall for r in rounds if r.wall > 0]
    failures: dict[str, int] = {}
    for s in streams:
        if s.failure:
            kind = s.failure.split(":")[0]
            failures[kind] = failures.get(kind, 0) + 1
    ok = sum(
        1 for s in streams if s.status == 200 and s.saw_stop and s.ended and not s.error_events
    )
    return {
        "streams": len(streams),
        "ok": ok,
        "non_200": sum(1 for s in streams if s.status is not None and s.status != 200),
        "no_response": sum(1 for s in streams if s.status is None),
        "cut": sum(1 for s in streams if s.status == 200 and not (s.saw_stop and s.ended)),
        "error_events": sum(s.error_events for s in streams),
        "failures": failures,
        "rounds": len(rounds),
        "events": sum(r.events for r in rounds),
        "wall_s": [round(r.wall, 3) for r in rounds],
        "events_per_s": round(sum(rates) / len(rates), 1) if rates else None,
        "events_per_s_rounds": [round(x, 1) for x in rates],
        "ttfb_p50_ms": ms(pct(ttfb, 50)),
        "ttfb_p99_ms": ms(pct(ttfb, 99)),
        "first_event_p50_ms": ms(pct(first_ev, 50)),
        "first_event_p99_ms": ms(pct(first_ev, 99)),
        "inter_event_p50_ms": ms(pct(gaps, 50)),
        "inter_event_p99_ms": ms(pct(gaps, 99)),
        "inter_event_max_ms": ms(max(gaps, default=None)),
    }


async def slow_readers(
    url: str,
    key: str,
    *,
    n: int,
    events: int,
    text_bytes: int,
    read_bytes: int,
    seconds: float,
    sample: Callable[[], None],
) -> dict[str, Any]:
    """`n` clients that each read `read_bytes` per second of a long stream for `seconds`.

    Their receive buffers are shrunk to 4 KB so the kernel cannot soak up the stream: whatever the
    upstream sends beyond that must be held, or not read, by the proxy.
    """
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    fault = f"events={events} text-bytes={text_bytes}"
    req = request_bytes(host, port, key, fault, max_tokens=events * text_bytes // 4 + 64)
    got = [0] * n
    errors: dict[str, int] = {}
    socks: list[socket.socket] = []

    async def reader(i: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        socks.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        end = loop.time() + seconds
        try:
            await loop.sock_connect(s, (host, port))
            await loop.sock_sendall(s, req)
            while loop.time() < end:
                data = await asyncio.wait_for(loop.sock_recv(s, read_bytes), timeout=seconds)
                if not data:
                    errors["eof"] = errors.get("eof", 0) + 1
                    return
                got[i] += len(data)
                await asyncio.sleep(1.0)
        except TimeoutError:
            errors["no data for the whole test"] = errors.get("no data for the whole test", 0) + 1
        except OSError as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

    tasks = [asyncio.ensure_future(reader(i)) for i in range(n)]
    await _wait_all(tasks, loop.time() + seconds + 5, sample, 0.25)
    for s in socks:
        s.close()
    return {
        "readers": n,
        "bytes_read_total": sum(got),
        "bytes_read_min": min(got),
        "errors": errors,
    }
