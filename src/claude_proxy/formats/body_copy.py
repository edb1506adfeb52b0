"""What every wire format's observer does alike: read the copy of a response body.

The relay forwards upstream bytes untouched; an observer reads a copy. This base inflates
gzip/deflate bodies, frames SSE text into whole events (tolerating CRLF framing), collects
a plain JSON body to parse once at its end, and never holds more than `MAX_EVENT_BYTES` of
one unfinished event or body: past it, observation stops (`gave_up`), forwarding does not.
It also holds what every format finds (the fields of gateway/wire_format.ResponseObserver)
and reads an error envelope; what the events mean is each format's (formats/anthropic,
formats/openai).
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from claude_proxy.store.records import Usage

MAX_EVENT_BYTES = 4 * 1024 * 1024
_ENCODINGS = (None, "", "identity", "gzip", "x-gzip", "deflate")
_MAX_ERROR_MESSAGE_CHARS = 1000


class BodyCopy:
    __slots__ = (
        "_buf",
        "_decoder",
        "_json",
        "error_message",
        "error_type",
        "gave_up",
        "message_id",
        "model",
        "stop_reason",
        "usage",
    )

    def __init__(self, content_encoding: str | None) -> None:
        self.model: str | None = None
        self.message_id: str | None = None
        self.stop_reason: str | None = None
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.usage = Usage()
        self._buf = b""
        self._json = bytearray()
        self._decoder: Any = None
        if content_encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif content_encoding == "deflate":
            self._decoder = zlib.decompressobj()
        self.gave_up = content_encoding not in _ENCODINGS

    def _plain(self, chunk: bytes) -> bytes:
        if self._decoder is None:
            return chunk
        try:
            out: bytes = self._decoder.decompress(chunk)
        except zlib.error:
            self.gave_up = True
            return b""
        return out

    def _sse_text(self, chunk: bytes) -> bytes:
        """What is held of the stream plus this chunk, plain, with LF framing."""
        data = self._buf + self._plain(chunk) if self._buf else self._plain(chunk)
        if b"\r" in data:
            # Tolerate CRLF/CR framing without splitting a CRLF pair across chunks.
            hold = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if hold:
                data = data[:-1] + b"\r"
        return data

    def feed_sse(self, chunk: bytes) -> None:
        """Read a chunk of an SSE stream: the whole events worth a look are handed to
        `_event`, in order; an unfinished one is held for the next chunk."""
        if self.gave_up:
            return
        data = self._sse_text(chunk)
        last = data.rfind(b"\n\n")
        if last < 0:
            self._hold(data)
            return
        for start in self._event_starts(data, last):
            self._event(data[start : data.find(b"\n\n", start)])
        self._hold(data[last + 2 :])

    def _event_starts(self, data: bytes, last: int) -> list[int]:
        """Where the events worth decoding begin, in order, among the whole ones
        (`data[:last]`). Most events carry nothing a row keeps: finding the few that do
        with `find()` spares decoding the rest."""
        raise NotImplementedError

    def _event(self, block: bytes) -> None:
        """One whole event (its lines, without the blank line that ends it)."""
        raise NotImplementedError

    def _hold(self, rest: bytes) -> None:
        """Keep the unfinished event for the next chunk, within the bound."""
        if len(rest) > MAX_EVENT_BYTES:
            self.gave_up = True
            rest = b""
        self._buf = rest

    def feed_json(self, chunk: bytes) -> None:
        """Collect a copy of a JSON body (capped); `finish_json` parses it once at the end."""
        if self.gave_up:
            return
        self._json += self._plain(chunk)
        if len(self._json) > MAX_EVENT_BYTES:
            self.gave_up = True
            self._json = bytearray()

    def _json_object(self) -> dict[str, Any] | None:
        """The collected JSON body, parsed once; None unless it is an object."""
        if self.gave_up or not self._json:
            return None
        try:
            obj = orjson.loads(self._json)
        except orjson.JSONDecodeError:
            return None
        finally:
            self._json = bytearray()
        return obj if isinstance(obj, dict) else None

    def _error(self, obj: dict[str, Any]) -> None:
        """An error envelope: Anthropic's `{"type": "error", "error": {"type", "message"}}`
        or OpenAI's `{"error": {"type", "message", "code", "param"}}`."""
        err = obj.get("error")
        if isinstance(err, dict):
            kind = err.get("type") or err.get("code")
            self.error_type = str(kind) if kind else "api_error"
            self.error_message = str(err.get("message") or "")[:_MAX_ERROR_MESSAGE_CHARS]
        else:
            self.error_type = "api_error"
            if isinstance(err, str):
                self.error_message = err[:_MAX_ERROR_MESSAGE_CHARS]
