"""Watch a response on the side: model, message id, stop reason, usage, errors.

The relay forwards upstream bytes untouched; this observer reads a copy.
For SSE it splits events at blank lines and JSON-decodes only the few events
that carry something we record (message_start, message_delta, error), so the
per-event cost stays around a microsecond. Hand-written on purpose: it runs for
every chunk of every stream.

Usage follows the API's cumulative semantics: message_start carries the input
and cache counts plus a placeholder output count; each message_delta carries
cumulative totals and overwrites whatever fields it has (non-null).
"""

from __future__ import annotations

from typing import Any

import orjson

from claude_proxy.formats.body_copy import BodyCopy

_PARSED_EVENTS = (b"message_start", b"message_delta", b"error")
# Byte strings whose presence means a chunk may hold an event worth parsing.
_MARKERS = (b"message_", b"error")


class ResponseObserver(BodyCopy):
    """Accumulates what the record needs from a streamed or plain JSON response."""

    __slots__ = ("message_stop",)

    def __init__(self, content_encoding: str | None = None) -> None:
        super().__init__(content_encoding)
        self.message_stop = False

    @property
    def stream_complete(self) -> bool:
        """True once the stream ended the way the API ends one: message_stop or an error event."""
        return self.message_stop or self.error_type is not None

    # --- SSE -------------------------------------------------------------------------

    def _event_starts(self, data: bytes, last: int) -> list[int]:
        # Most events are content deltas and pings, which carry nothing we record. Only the
        # events around a marker are cut out and parsed, in order, so a chunk of many
        # coalesced deltas costs a few find() calls.
        starts: set[int] = set()  # where each event holding a marker begins
        for marker in _MARKERS:
            at = data.find(marker, 0, last)
            while at >= 0:
                before = data.rfind(b"\n\n", 0, at)
                starts.add(0 if before < 0 else before + 2)
                at = data.find(marker, data.find(b"\n\n", at, last + 2), last)
        return sorted(starts)

    def _event(self, block: bytes) -> None:
        name = b""
        data = b""
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip()
            elif line.startswith(b"data:"):
                part = line[5:]
                if part[:1] == b" ":
                    part = part[1:]
                data = part if not data else data + b"\n" + part
        if not name:
            return
        if name == b"message_stop":
            self.message_stop = True
            return
        if name not in _PARSED_EVENTS:
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(obj, dict):
            return
        if name == b"message_start":
            msg = obj.get("message")
            if isinstance(msg, dict):
                self._message(msg)
        elif name == b"message_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason") is not None:
                self.stop_reason = delta["stop_reason"]
            usage = obj.get("usage")
            if isinstance(usage, dict):
                self.usage.merge(usage)
        else:
            self._error(obj)

    # --- plain JSON ------------------------------------------------------------------

    def finish_json(self) -> None:
        obj = self._json_object()
        if obj is None:
            return
        if obj.get("type") == "message":
            self._message(obj)
        elif obj.get("type") == "error":
            self._error(obj)

    # --- shared ----------------------------------------------------------------------

    def _message(self, msg: dict[str, Any]) -> None:
        self.model = msg.get("model") or self.model
        self.message_id = msg.get("id") or self.message_id
        if msg.get("stop_reason") is not None:
            self.stop_reason = msg["stop_reason"]
        usage = msg.get("usage")
        if isinstance(usage, dict):
            self.usage.merge(usage)
