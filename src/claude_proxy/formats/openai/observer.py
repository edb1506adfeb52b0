"""Watch a Chat Completions response on the side: model, id, finish reason, usage, errors.

The relay forwards upstream bytes untouched; this observer reads a copy (formats/body_copy.py:
inflated, framed, bounded), as the Anthropic one does.

A stream is `data: {chat.completion.chunk}` events, then `data: [DONE]`. Every chunk repeats
the id and model, and carries `"finish_reason":null` (and `"usage":null` when the client
asked for usage) until the one that says something. So only the first chunk, the chunks
whose finish_reason or usage is not null, error events and [DONE] are JSON-decoded: a few
`find()` calls per chunk of content deltas, whatever their number.

Usage comes only in the last chunk, and only when the request said
`stream_options: {"include_usage": true}`; without it a stream reports no usage at all
and the observer's usage stays empty (None, not 0).

How OpenAI's usage maps onto Anthropic's (which the price table and the limits read):
OpenAI's `prompt_tokens` counts the whole prompt, cached part included, and
`prompt_tokens_details.cached_tokens` says how much of it was read from the cache;
Anthropic's `input_tokens` counts only the uncached part, beside `cache_read_input_tokens`.
So input_tokens = prompt_tokens - cached_tokens and cache_read_input_tokens = cached_tokens,
else cached prompt tokens would be billed twice (once at the input rate, once at the read
rate). Anthropic's docs for this endpoint say `prompt_tokens_details` is "always empty" and
that prompt caching is not supported through it: then cached_tokens is 0, nothing is
subtracted, and the whole prompt is billed at the input rate, as the API bills it. Cache
writes have no field in this shape, so cache_creation_input_tokens stays None.
"""

from __future__ import annotations

from typing import Any

import orjson

from claude_proxy.formats.body_copy import BodyCopy

# Keys whose value matters only when it is not null (every chunk carries them as null),
# with their compact null spelling: when a chunk has as many of those as of the key, none
# is worth a closer look (two C-speed counts, no Python loop, for a content delta).
_VALUED_KEYS = ((b'"finish_reason"', b'"finish_reason":null'), (b'"usage"', b'"usage":null'))
# Markers of events that always matter. Inside a JSON string a quote is escaped, so a
# model's text can hold `\"error\"` but never `"error"`: content does not match that one.
# (An Anthropic-style `event: error` carries `"error"` in its data too.)
_ALWAYS = (b'"error"', b"[DONE]")
_SPACE = b" \t\r\n"


class ChatObserver(BodyCopy):
    """Accumulates what the record needs from a streamed or plain Chat Completions response."""

    __slots__ = (
        "_headed",
        "done",
    )

    def __init__(self, content_encoding: str | None = None) -> None:
        super().__init__(content_encoding)
        self._headed = False  # a chunk's id and model have been read
        self.done = False

    @property
    def stream_complete(self) -> bool:
        """True once the stream ended the way this endpoint ends one: `data: [DONE]`, or an
        error event."""
        return self.done or self.error_type is not None

    # --- SSE -------------------------------------------------------------------------

    def _event_starts(self, data: bytes, last: int) -> list[int]:
        """Where the events worth decoding begin, in order, among the complete ones
        (`data[:last]`): the first one until a chunk's id was read, and those holding a
        non-null finish_reason or usage, an error or [DONE]."""
        starts: set[int] = set()
        if not self._headed:
            starts.add(0)
        for key, null in _VALUED_KEYS:
            if data.count(key, 0, last) == data.count(null, 0, last):
                continue
            at = data.find(key, 0, last)
            while at >= 0:
                i = _skip_space(data, at + len(key), last)
                if data[i : i + 1] == b":":
                    i = _skip_space(data, i + 1, last)
                    if data[i : i + 4] != b"null":
                        starts.add(_event_start(data, at))
                at = data.find(key, at + len(key), last)
        for marker in _ALWAYS:
            at = data.find(marker, 0, last)
            while at >= 0:
                starts.add(_event_start(data, at))
                at = data.find(marker, at + len(marker), last)
        return sorted(starts) if starts else []

    def _event(self, block: bytes) -> None:
        name = b""
        data = b""
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                part = line[5:]
                if part[:1] == b" ":
                    part = part[1:]
                data = part if not data else data + b"\n" + part
            elif line.startswith(b"event:"):
                name = line[6:].strip()
        if not data:
            return
        if data.strip() == b"[DONE]":
            self.done = True
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            if name == b"error":  # an error event, however it is worded
                self.error_type = "api_error"
            return
        if name == b"error" or _is_error(obj):
            self._error(obj)
            return
        self._completion(obj)

    # --- plain JSON ------------------------------------------------------------------

    def finish_json(self) -> None:
        obj = self._json_object()
        if obj is None:
            return
        if _is_error(obj):
            self._error(obj)
        else:
            self._completion(obj)

    # --- shared ----------------------------------------------------------------------

    def _completion(self, obj: dict[str, Any]) -> None:
        """A chat.completion or a chat.completion.chunk: the same fields matter in both."""
        self._headed = True
        model = obj.get("model")
        if isinstance(model, str) and model and self.model is None:
            self.model = model
        mid = obj.get("id")
        if isinstance(mid, str) and mid and self.message_id is None:
            self.message_id = mid
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                # The endpoint returns exactly one choice (n must be 1): index 0.
                if isinstance(choice, dict) and choice.get("index", 0) == 0:
                    reason = choice.get("finish_reason")
                    if isinstance(reason, str) and reason:
                        self.stop_reason = reason
                    break
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self._usage(usage)

    def _usage(self, usage: dict[str, Any]) -> None:
        prompt = _count(usage.get("prompt_tokens"))
        completion = _count(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
        u = self.usage
        if prompt is not None:
            # prompt_tokens includes the cached part (see the module's docstring); cached
            # can never be more than the prompt, so input_tokens is never negative.
            read = min(cached or 0, prompt)
            u.input_tokens = prompt - read
            u.cache_read_input_tokens = read
        elif cached is not None:
            u.cache_read_input_tokens = cached
        if completion is not None:
            u.output_tokens = completion


def _is_error(obj: dict[str, Any]) -> bool:
    return obj.get("type") == "error" or bool(obj.get("error"))


def _count(value: Any) -> int | None:
    """A token count as the API reports one: a non-negative int; anything else is None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _skip_space(data: bytes, i: int, end: int) -> int:
    while i < end and data[i] in _SPACE:
        i += 1
    return i


def _event_start(data: bytes, at: int) -> int:
    before = data.rfind(b"\n\n", 0, at)
    return 0 if before < 0 else before + 2
